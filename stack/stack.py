"""The local stack: a Redis-protocol server and a Kafka-protocol broker.

Embedded servers by default (private, free ports, stopped by pid when the owner
exits); external ones when `REDIS_URL` / `KAFKA_BOOTSTRAP_SERVERS` are set.
Used alike by the demo, benchmarks and the test fixtures.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType

from cascade.config import Config, get_config
from stack.clients import ensure_topics
from stack.kafka_broker import EmbeddedKafka
from stack.redis_server import EmbeddedRedis

log = logging.getLogger(__name__)


class Stack:
    """Start with `with Stack() as s:`; read `s.redis_url` and `s.kafka_bootstrap`."""

    def __init__(self, config: Config | None = None, redis: bool = True, kafka: bool = True,
                 run_dir: Path | None = None) -> None:
        self.config = config or get_config()
        self._want_redis = redis
        self._want_kafka = kafka
        self._own_run_dir = run_dir is None
        self.run_dir = run_dir or self._new_run_dir()
        self._redis: EmbeddedRedis | None = None
        self._kafka: EmbeddedKafka | None = None
        self.redis_url: str | None = None
        self.kafka_bootstrap: str | None = None
        self._started = False

    def _new_run_dir(self) -> Path:
        base = self.config.paths.var_dir / "run"
        base.mkdir(parents=True, exist_ok=True)
        # One directory per owner process and instance: two demos never share pid or log files.
        return Path(tempfile.mkdtemp(prefix=f"stack-{os.getpid()}-", dir=base))

    @property
    def pids(self) -> list[int]:
        """Pids of the embedded servers this stack started (empty for external servers)."""
        return [p for p in (self._redis and self._redis.pid, self._kafka and self._kafka.pid) if p]

    def start(self) -> "Stack":
        if self._started:
            return self
        atexit.register(self.stop)
        self._started = True
        try:
            if self._want_redis:
                self._start_redis()
            if self._want_kafka:
                self._start_kafka()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> None:
        if self.config.redis.url:
            self.redis_url = self.config.redis.url
            log.info("using external Redis at %s", self.redis_url)
            return
        t0 = time.monotonic()
        self._redis = EmbeddedRedis(self.run_dir, self.config.redis.startup_timeout_s).start()
        self.redis_url = self._redis.url
        log.info("embedded valkey-server ready at %s in %.2fs", self.redis_url, time.monotonic() - t0)

    def _start_kafka(self) -> None:
        if self.config.kafka.bootstrap_servers:
            self.kafka_bootstrap = self.config.kafka.bootstrap_servers
            log.info("using external Kafka at %s", self.kafka_bootstrap)
        else:
            t0 = time.monotonic()
            self._kafka = EmbeddedKafka(self.run_dir, self.config.kafka.startup_timeout_s).start()
            self.kafka_bootstrap = self._kafka.bootstrap_servers
            log.info("embedded Tansu broker ready at %s in %.2fs", self.kafka_bootstrap, time.monotonic() - t0)
        ensure_topics(self.kafka_bootstrap, self.config.kafka, self.config.kafka.startup_timeout_s)

    def stop(self) -> None:
        """Stop what this stack started, in reverse order; safe to call twice."""
        for server in (self._kafka, self._redis):
            if server is not None:
                try:
                    server.stop()
                except Exception:  # noqa: BLE001 - keep stopping the rest
                    log.exception("failed to stop %s", server)
        self._kafka = self._redis = None
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        atexit.unregister(self.stop)
        self._started = False

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
