"""`cascade stack`: run the embedded servers in the foreground for local development."""

from __future__ import annotations

import argparse
import signal
import threading

from cascade.config import get_config
from stack.stack import Stack


def main(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="cascade stack", description=__doc__).parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Stack(get_config()) as stack:
        print(f"REDIS_URL={stack.redis_url}")
        print(f"KAFKA_BOOTSTRAP_SERVERS={stack.kafka_bootstrap}")
        print("(Ctrl-C to stop)", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0
