"""Structured logging: one JSON object per line on stderr, tagged with the request id.

JSON lines are what log shippers parse without per-service regexes, and the
request id (taken from :mod:`serving.context` at emit time) joins the lines
of one request across Feed, Recall, Ranking and Rerank.
"""

from __future__ import annotations

import datetime as _dt
import json as _json
import logging
import sys
from typing import IO, Any

from serving.context import current_request_id

# Attributes every LogRecord has; anything else came from ``extra=`` and is emitted as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, request_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or current_request_id()
        if rid is not None:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for local runs; still carries the request id and extras."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s%(extras)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = {
            k: v for k, v in record.__dict__.items()
            if k not in _STANDARD_ATTRS and k != "request_id" and not k.startswith("_")
        }
        # Format a copy: other handlers must not see the attributes added here.
        record = logging.makeLogRecord(record.__dict__)
        record.request_id = getattr(record, "request_id", None) or current_request_id() or "-"
        record.extras = "".join(f" {k}={v}" for k, v in extras.items())
        return super().format(record)


class _CascadeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marker type so configure_logging can replace its own handler when called again."""


def configure_logging(level: int | str = logging.INFO, json: bool = True, stream: IO[str] | None = None) -> None:
    """Route the root logger to ``stream`` (stderr by default) as JSON lines (or text with ``json=False``).

    Idempotent: calling it again replaces the handler it installed earlier and
    leaves other handlers (e.g. pytest's capture) alone.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CascadeHandler):
            root.removeHandler(handler)
    handler = _CascadeHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
