"""One typed configuration: file, then environment overrides; bad values are refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cascade.config import load_config


def test_defaults_come_from_the_checked_in_file() -> None:
    config = load_config(environ={})
    assert config.redis.url is None and config.kafka.bootstrap_servers is None
    assert "impressions" in config.kafka.topics
    assert config.grpc.max_message_bytes > 0


def test_environment_overrides_nested_keys_and_well_known_urls() -> None:
    config = load_config(
        environ={
            "CASCADE__GRPC__SHUTDOWN_GRACE_S": "1.5",
            "CASCADE__KAFKA__TOPICS__IMPRESSIONS__PARTITIONS": "8",
            "REDIS_URL": "redis://example:6379/0",
            "KAFKA_BOOTSTRAP_SERVERS": "broker:9092",
        }
    )
    assert config.grpc.shutdown_grace_s == 1.5
    assert config.kafka.topics["impressions"].partitions == 8
    assert config.redis.url == "redis://example:6379/0"
    assert config.kafka.bootstrap_servers == "broker:9092"


def test_unknown_or_mistyped_keys_are_refused(tmp_path) -> None:
    with pytest.raises(ValidationError, match="grpc"):
        load_config(environ={"CASCADE__GRPC__NO_SUCH_KEY": "1"})
    with pytest.raises(ValidationError, match="max_message_bytes"):
        load_config(environ={"CASCADE__GRPC__MAX_MESSAGE_BYTES": "lots"})
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml", environ={})


def test_config_file_is_read(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[grpc]\ndefault_deadline_s = 0.25\n")
    assert load_config(path, environ={}).grpc.default_deadline_s == 0.25
