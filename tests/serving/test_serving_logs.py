"""JSON log lines carry the request id and extra fields."""

from __future__ import annotations

import io
import json
import logging

import pytest

from serving.context import request_scope
from serving.logs import configure_logging


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_with_request_id_and_extras(restore_root_logger):
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    configure_logging("DEBUG", stream=stream)  # idempotent: still one handler
    log = logging.getLogger("cascade.test")
    log.info("outside")
    with request_scope("rid-7", None):
        log.warning("took %d ms", 12, extra={"stage": "ranking", "items": 3})
        try:
            raise KeyError("k")
        except KeyError:
            log.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    assert lines[0]["message"] == "outside" and "request_id" not in lines[0]
    assert lines[1] == {**lines[1], "level": "WARNING", "logger": "cascade.test", "message": "took 12 ms",
                        "request_id": "rid-7", "stage": "ranking", "items": 3}
    assert "time" in lines[1]
    assert "KeyError" in lines[2]["exc"] and lines[2]["request_id"] == "rid-7"


def test_text_mode(restore_root_logger):
    stream = io.StringIO()
    configure_logging(logging.INFO, json=False, stream=stream)
    with request_scope("rid-8", None):
        logging.getLogger("cascade.test").info("hello", extra={"k": 1})
    logging.getLogger("cascade.test").debug("hidden")
    out = stream.getvalue()
    assert "[rid-8] hello k=1" in out and "hidden" not in out
