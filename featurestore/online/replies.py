"""Replies of the lean read path, read off the socket into one buffer; fixed-size MGET replies used in place.

A view whose rows all have one size (no variable-length feature: `RowCodec.varlen` empty) gets an
MGET reply that is fully regular when every key has a row::

    *<n>\\r\\n   then n times   $<size>\\r\\n <size bytes> \\r\\n

`ReplyStream.fixed_rows` reads such a reply into the buffer, checks its framing -- the header, each
record's ``$<size>\\r\\n`` read as one masked 64-bit integer and its closing CRLF as one 16-bit integer
through strided numpy views (~2 us for 1,000 records) -- and hands back the rows as one strided
(n, size) view of the buffer, which `RowCodec.decode` reads through a structured view: no bytes object
per row, no ``b"".join``. Anything else (a missing key's null, a row of another size, an error, a
RESP3 push or null) is parsed by a `hiredis.Reader` from where that reply starts, for that reply and
every later one of the request (`reply`), so what the caller gets for it is exactly what the hiredis
path gives.

Reading never waits for bytes that will not come. Every RESP reply ends with CRLF, so received bytes
that do not cannot be a whole reply: more must come. Received bytes that do are checked against the
regular framing (headers and CRLFs so far, and what arrived of the record in progress): RESP is
prefix-free, so bytes that match the start of the regular reply and are shorter than it are not a
whole reply either; the first mismatch sends the reply to hiredis at once (a null ``$-1`` differs from
``$171`` at its second byte).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

try:
    from hiredis import ProtocolError, PushNotification, Reader
except ImportError:  # pragma: no cover - hiredis is a dependency; the store then never builds a stream
    Reader = PushNotification = None  # type: ignore[assignment,misc]

    class ProtocolError(Exception):  # type: ignore[no-redef]
        pass

MAX_FIXED_BYTES = 1 << 26  # a regular reply larger than this goes through hiredis (the buffer would grow past it)
_CRLF_U16 = np.uint16(int.from_bytes(b"\r\n", "little"))


class ReplyStream:
    """The replies to pipelined commands on one socket, in order: `fixed_rows` for the fixed-size MGETs, `reply`
    for anything (hiredis). `buf` is a receive buffer the caller keeps for the next request (it may be replaced
    by a larger one here)."""

    __slots__ = ("sock", "buf", "start", "end", "reader")

    def __init__(self, sock: Any, buf: bytearray) -> None:
        self.sock = sock
        self.buf = buf
        self.start = 0  # first unparsed byte in buf
        self.end = 0  # end of the received bytes
        self.reader: Any = None  # once a reply goes to hiredis, every later one does too

    def _recv(self) -> None:
        with memoryview(self.buf) as mv:
            n = self.sock.recv_into(mv[self.end:])
        if not n:
            raise ConnectionResetError("the server closed the connection mid-reply")
        self.end += n

    def _reserve(self, size: int) -> None:
        """Room for `size` bytes from `start` on: the unparsed bytes move to the front, or to a larger buffer."""
        if self.start + size <= len(self.buf):
            return
        pending = self.end - self.start
        if size <= len(self.buf):  # same size: allowed even while an earlier view of the buffer is alive
            self.buf[:pending] = self.buf[self.start: self.end]
        else:
            grown = bytearray(max(size, 2 * len(self.buf)))
            grown[:pending] = self.buf[self.start: self.end]
            self.buf = grown
        self.start, self.end = 0, pending

    def _to_reader(self) -> None:
        """Every reply from here on is parsed by hiredis, starting with the unparsed bytes already received."""
        self.reader = Reader(replyError=redis.exceptions.ResponseError)
        if self.end > self.start:
            self.reader.feed(self.buf, self.start, self.end - self.start)
        self.start = self.end = 0

    def reply(self) -> Any:
        """The next reply as hiredis gives it (error replies as values). A RESP3 push message raises ProtocolError
        (the caller drops the connection and redoes the read through redis-py)."""
        if self.reader is None:
            self._to_reader()
        reader, buf = self.reader, self.buf
        while True:
            got = reader.gets()
            if got is False:  # incomplete: read more
                n = self.sock.recv_into(buf)
                if not n:
                    raise ConnectionResetError("the server closed the connection mid-reply")
                reader.feed(buf, 0, n)
            elif PushNotification is not None and isinstance(got, PushNotification):
                raise ProtocolError(f"a RESP3 push message arrived between replies: {got[:1]!r}")
            else:
                return got

    def fixed_rows(self, count: int, size: int) -> np.ndarray | None:
        """The next reply as a (count, size) uint8 view of the buffer when it is `count` bulk strings of `size`
        bytes each; else None, and `reply()` gives that reply. The view is valid until the next call."""
        if self.reader is not None:
            return None
        head = b"*%d\r\n" % count
        item = b"$%d\r\n" % size
        rl = len(item) + size + 2  # one record
        total = len(head) + count * rl
        if total > MAX_FIXED_BYTES:
            self._to_reader()
            return None
        self._reserve(total)
        while self.end - self.start < total:
            # Every reply ends with CRLF: received bytes that do not cannot be a whole reply, so more must come.
            # Those that do are checked: if they still match the regular reply, it has not ended either.
            buf, end = self.buf, self.end
            if end - self.start >= 2 and buf[end - 1] == 10 and buf[end - 2] == 13 and \
                    not self._regular(head, item, size, count, end - self.start):
                self._to_reader()
                return None
            self._recv()
        if not self._regular(head, item, size, count, total):
            self._to_reader()
            return None
        recs = np.frombuffer(self.buf, np.uint8, count * rl, self.start + len(head)).reshape(count, rl)
        self.start += total
        return recs[:, len(item): len(item) + size]

    def _regular(self, head: bytes, item: bytes, size: int, count: int, avail: int) -> bool:
        """Whether the `avail` bytes from `start` on are the beginning (or all) of `count` records ``item`` +
        `size` bytes + CRLF after `head`: headers and CRLFs compared, data bytes free."""
        buf, s, hl, il = self.buf, self.start, len(head), len(item)
        if avail < hl:
            return buf[s: s + avail] == head[:avail]
        if buf[s: s + hl] != head:
            return False
        rl = il + size + 2
        complete = min(count, (avail - hl) // rl)
        if complete and not _framed(buf, s + hl, complete, item, size):
            return False
        if complete == count:
            return True
        p = s + hl + complete * rl  # the record in progress: what arrived of its framing
        part = avail - hl - complete * rl
        if buf[p: p + min(part, il)] != item[:part]:
            return False
        return part <= il + size or buf[p + il + size: p + part] == b"\r\n"[: part - il - size]


def _framed(buf: bytearray, offset: int, count: int, item: bytes, size: int) -> bool:
    """Whether the `count` records from `offset` on each start with `item` and end with CRLF after `size` bytes.

    Each record's first 8 bytes are read as one little-endian integer and masked to the header (~2 us for
    1,000 records, where comparing a (1,000, 6) byte matrix took ~9 us), each CRLF as one 16-bit integer.
    """
    il = len(item)
    rl = il + size + 2
    if il <= 8 <= rl:
        heads = np.ndarray((count,), dtype="<u8", buffer=buf, offset=offset, strides=(rl,))
        if not ((heads & np.uint64((1 << (8 * il)) - 1)) == np.uint64(int.from_bytes(item, "little"))).all():
            return False
    else:
        heads = np.ndarray((count,), dtype=f"V{il}", buffer=buf, offset=offset, strides=(rl,))
        if not (heads == np.void(item)).all():
            return False
    ends = np.ndarray((count,), dtype="<u2", buffer=buf, offset=offset + il + size, strides=(rl,))
    return bool((ends == _CRLF_U16).all())
