"""`featurestore.online.replies.ReplyStream` on real valkey replies, delivered in pieces of every size.

The replies are the embedded server's own bytes (captured off a plain socket), fed to the stream as a
byte source that hands out at most `piece` bytes per `recv_into`: a fixed-size MGET reply must come
back as rows equal to the stored values, anything else exactly as hiredis parses it, and no reply may
make the stream wait for bytes the server never sends.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import numpy as np
import pytest
import redis as redis_py
from hiredis import Reader, pack_command

from featurestore.online.replies import ReplyStream

PIECES = [1, 5, 179, 4096, 1 << 30]


class _Pieces:
    """A socket's `recv_into` over fixed bytes, at most `piece` bytes per call (an exhausted source is an error:
    the stream asked for bytes the server would never send)."""

    def __init__(self, data: bytes, piece: int) -> None:
        self.data, self.piece, self.pos = data, piece, 0
        self.calls = 0

    def recv_into(self, buf) -> int:
        if self.pos >= len(self.data):
            raise AssertionError("waited for bytes past the last reply")
        n = min(self.piece, len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos: self.pos + n]
        self.pos += n
        self.calls += 1
        return n


def _capture(url: str, commands: list[tuple]) -> bytes:
    """The server's reply bytes to `commands`, sent in one write on a fresh plain socket."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        sock.sendall(b"".join(pack_command(c) for c in commands))
        reader, data, got = Reader(), bytearray(), 0
        while got < len(commands):
            if reader.gets() is False:
                chunk = sock.recv(1 << 16)
                assert chunk
                data += chunk
                reader.feed(chunk)
            else:
                got += 1
        return bytes(data)


def _hiredis(data: bytes, count: int) -> list:
    reader = Reader(replyError=redis_py.exceptions.ResponseError)
    reader.feed(data)
    return [reader.gets() for _ in range(count)]


def _same(a, b) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


@pytest.fixture()
def stored(redis, unique_prefix: str) -> dict[str, bytes]:
    """Keys with values of 40 bytes (regular), 41 bytes, empty, and 1 MB."""
    rng = np.random.default_rng(3)
    values = {f"{unique_prefix}:r{i}": rng.integers(0, 256, 40, dtype=np.uint8).tobytes() for i in range(300)}
    values[f"{unique_prefix}:r7"] = b"$40\r\n" * 8  # framing bytes inside a value are just data
    values[f"{unique_prefix}:odd"] = b"x" * 41
    values[f"{unique_prefix}:empty"] = b""
    for i in range(4):
        values[f"{unique_prefix}:big{i}"] = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    redis.mset(values)
    redis.set(f"{unique_prefix}:crlf", b"\r\n" * 20)
    redis.mset({f"{unique_prefix}:tiny{i}": bytes([i]) for i in range(5)})  # records shorter than 8 bytes
    return values


def _mget(keys: list[str]) -> tuple:
    return ("MGET", *keys)


@pytest.mark.parametrize("piece", PIECES)
def test_fixed_rows_of_real_replies_in_pieces(redis, stored, unique_prefix: str, piece: int) -> None:
    regular = [f"{unique_prefix}:r{i}" for i in range(300)]
    missing = regular[:5] + [f"{unique_prefix}:nope"] + regular[5:10]
    big = [f"{unique_prefix}:big{i}" for i in range(4)]
    commands = [_mget(regular), _mget(missing), _mget(regular[:2]), ("GET", regular[0]), _mget(big)]
    data = _capture(_url(redis), commands)
    want = _hiredis(data, len(commands))

    src = _Pieces(data, piece)
    stream = ReplyStream(src, bytearray(64))
    rows = stream.fixed_rows(300, 40)
    assert rows is not None and rows.shape == (300, 40)
    assert [bytes(r) for r in rows] == [stored[k] for k in regular] == want[0]
    assert stream.fixed_rows(len(missing), 40) is None  # a null: hiredis from here on
    assert _same(stream.reply(), want[1])
    assert stream.fixed_rows(2, 40) is None  # regular, but the request already went to hiredis
    assert stream.reply() == want[2]
    assert stream.reply() == want[3]
    assert stream.reply() == want[4] == [stored[k] for k in big]
    assert src.pos == len(data)


@pytest.mark.parametrize("piece", PIECES)
def test_every_irregular_reply_reads_as_hiredis_reads_it(redis, stored, unique_prefix: str, piece: int) -> None:
    """Each case is the first reply of its request; the fixed reader asked for 3 rows of 40 bytes."""
    r = [f"{unique_prefix}:r{i}" for i in range(3)]
    cases = [  # (command, whether its reply is 3 values of 40 bytes)
        (_mget(r[:2] + [f"{unique_prefix}:odd"]), False),  # the last value is one byte longer
        (_mget([f"{unique_prefix}:empty"] + r[:2]), False),  # an empty value
        (_mget(r[:2] + [f"{unique_prefix}:nope"]), False),  # a null at the very end: shorter than a regular reply
        (_mget([f"{unique_prefix}:nope"] * 3), False),  # nothing stored
        (_mget(r[:2]), False),  # fewer values than asked for
        (_mget(r + r[:1]), False),  # more values
        (_mget(r[:2] + [f"{unique_prefix}:crlf"]), True),  # a value of "\r\n"s: data, regular framing
        (("GET", r[0]), False),  # not an array
        (("MGET",), False),  # an error reply
        (("HGET", r[0], "f"), False),  # WRONGTYPE error
    ]
    for cmd, regular in cases:
        data = _capture(_url(redis), [cmd, _mget(r)])
        want = _hiredis(data, 2)
        stream = ReplyStream(_Pieces(data, piece), bytearray(64))
        rows = stream.fixed_rows(3, 40)
        assert (rows is not None) == regular, cmd
        if regular:
            assert [bytes(x) for x in rows] == want[0]
            assert [bytes(x) for x in stream.fixed_rows(3, 40)] == want[1]
        else:
            assert _same(stream.reply(), want[0]), cmd
            assert stream.reply() == want[1]


def test_rows_stay_valid_until_the_next_call_and_the_buffer_grows(redis, stored, unique_prefix: str) -> None:
    regular = [f"{unique_prefix}:r{i}" for i in range(300)]
    big = [f"{unique_prefix}:big{i}" for i in range(4)]
    data = _capture(_url(redis), [_mget(regular[:100]), _mget(regular[100:]), _mget(big), _mget(regular[:3])])
    stream = ReplyStream(_Pieces(data, 3000), bytearray(8000))  # too small for the 2nd: compacts, then grows
    first = stream.fixed_rows(100, 40)
    copy = np.array(first)
    assert [bytes(x) for x in copy] == [stored[k] for k in regular[:100]]
    second = stream.fixed_rows(200, 40)
    assert [bytes(x) for x in second] == [stored[k] for k in regular[100:]]
    third = stream.fixed_rows(4, 1 << 20)
    assert len(stream.buf) >= 4 << 20
    assert [bytes(x) for x in third] == [stored[k] for k in big]
    assert [bytes(x) for x in stream.fixed_rows(3, 40)] == [stored[k] for k in regular[:3]]


@pytest.mark.parametrize("piece", [1, 3, 1 << 30])
def test_records_shorter_than_a_word(redis, stored, unique_prefix: str, piece: int) -> None:
    tiny = [f"{unique_prefix}:tiny{i}" for i in range(5)]
    data = _capture(_url(redis), [_mget(tiny), _mget(tiny[:2] + [f"{unique_prefix}:odd"])])
    stream = ReplyStream(_Pieces(data, piece), bytearray(64))
    assert [bytes(x) for x in stream.fixed_rows(5, 1)] == [bytes([i]) for i in range(5)]
    assert stream.fixed_rows(3, 1) is None
    assert stream.reply() == [b"\0", b"\1", b"x" * 41]


def test_a_short_irregular_reply_does_not_wait_on_a_live_socket(redis, stored, unique_prefix: str) -> None:
    """The server sent everything (3 nulls: 19 bytes where 3 regular rows are 151) and keeps the socket open."""
    data = _capture(_url(redis), [_mget([f"{unique_prefix}:nope"] * 3)])
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        a.sendall(data)
        stream = ReplyStream(b, bytearray(64))
        assert stream.fixed_rows(3, 40) is None
        assert stream.reply() == [None, None, None]
    finally:
        a.close()
        b.close()


def test_rows_arrive_from_a_real_connection_in_several_reads(redis, stored, unique_prefix: str) -> None:
    regular = [f"{unique_prefix}:r{i}" for i in range(300)]
    u = urlparse(_url(redis))
    with socket.create_connection((u.hostname, u.port), timeout=10) as sock:
        counted = _Counting(sock, 1000)
        sock.sendall(pack_command(_mget(regular)) + pack_command(_mget(regular[::-1])))
        stream = ReplyStream(counted, bytearray(1024))
        first = np.array(stream.fixed_rows(300, 40))
        second = stream.fixed_rows(300, 40)
        assert [bytes(x) for x in first] == [stored[k] for k in regular]
        assert [bytes(x) for x in second] == [stored[k] for k in regular[::-1]]
        assert counted.calls >= 2 * 300 * 47 // 1000


def test_a_push_message_goes_to_hiredis_and_is_refused() -> None:
    from hiredis import ProtocolError

    data = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nx\r\n*1\r\n$3\r\nabc\r\n"
    stream = ReplyStream(_Pieces(data, 7), bytearray(64))
    assert stream.fixed_rows(1, 3) is None
    with pytest.raises(ProtocolError, match="push"):
        stream.reply()


class _Counting:
    """A real socket whose reads take at most `limit` bytes each."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self.sock, self.limit, self.calls = sock, limit, 0

    def recv_into(self, buf) -> int:
        self.calls += 1
        with memoryview(buf) as mv:
            return self.sock.recv_into(mv[: self.limit])


def _url(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def test_the_sender_may_be_slower_than_the_reader(redis, stored, unique_prefix: str) -> None:
    """Bytes trickling in over a real socket pair (sender thread): rows as stored."""
    regular = [f"{unique_prefix}:r{i}" for i in range(50)]
    data = _capture(_url(redis), [_mget(regular)])
    a, b = socket.socketpair()
    try:
        b.settimeout(5)
        sender = threading.Thread(target=lambda: [a.sendall(data[i: i + 97]) for i in range(0, len(data), 97)])
        sender.start()
        rows = ReplyStream(b, bytearray(64)).fixed_rows(50, 40)
        sender.join()
        assert [bytes(x) for x in rows] == [stored[k] for k in regular]
    finally:
        a.close()
        b.close()
