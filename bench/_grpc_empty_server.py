"""A bare grpc.aio server with one empty unary method, for the gRPC ceiling.

Run as ``python -m bench._grpc_empty_server --host H``: it binds a free port,
prints ``PORT <n>`` on stdout, and serves ``/cascade.bench.Empty/Call`` (bytes in,
empty bytes out, no (de)serializers) until SIGTERM or its parent dies.
Deliberately independent of `serving/`: this is the plumbing-free ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import signal
import sys

import grpc

SERVICE = "cascade.bench.Empty"
METHOD = f"/{SERVICE}/Call"


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def serve(host: str, max_message_bytes: int, max_concurrent_rpcs: int | None) -> None:
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(_call)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"PORT {port}", flush=True)
    await stop.wait()
    await server.stop(grace=None)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-message-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--max-concurrent-rpcs", type=int, default=0, help="0: unlimited")
    a = p.parse_args()
    _die_with_parent()
    asyncio.run(serve(a.host, a.max_message_bytes, a.max_concurrent_rpcs or None))


if __name__ == "__main__":
    main()
