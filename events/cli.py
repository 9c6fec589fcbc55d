"""`cascade events ...`: serve event ingestion.

    cascade events [serve] [--port N] [--redis-url URL] [--bootstrap HOST:PORT] [--topic NAME]

Runs the EventService (LogEvents -> Kafka ``events`` topic, de-duplicated on
event_id in Redis). Exit codes: 0 after a clean stop; 1 configuration error
(e.g. no Kafka configured); 2 bad usage; 130 Ctrl-C.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = {"events": ("main", "events: serve EventService (LogEvents into Kafka)")}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from events.service import serve

    if args and args[0] == "serve":
        args = args[1:]
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
