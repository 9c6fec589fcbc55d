"""One typed configuration for every service, the CLI, benchmarks and tests.

Values come from, in increasing priority: the defaults below, the TOML file
(``config/cascade.toml`` or ``$CASCADE_CONFIG``), and environment variables
``CASCADE__SECTION__KEY=value`` (nested with double underscores). The well-known
``REDIS_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` select external servers instead of
the embedded ones. Nothing else in the code base should hold a port, a topic
name, a timeout or a size as a literal.
"""

from __future__ import annotations

import json
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "config" / "cascade.toml"
ENV_PREFIX = "CASCADE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(_Section):
    url: str | None = Field(None, description="External server (redis:// or rediss://); None starts an embedded valkey-server.")
    cluster: bool = Field(False, description="Treat `url` as a Redis Cluster seed node.")
    startup_timeout_s: float = 15.0
    socket_timeout_s: float = 5.0
    max_connections: int = 64


class TopicConfig(_Section):
    partitions: int = 4
    replication_factor: int = 1


class KafkaConfig(_Section):
    bootstrap_servers: str | None = Field(None, description="External cluster; None starts the embedded Tansu broker.")
    startup_timeout_s: float = 20.0
    client_id: str = "cascade"
    # Short group timeouts: Tansu (and small clusters) join groups slowly with the defaults.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 30000
    request_timeout_ms: int = 15000
    topics: dict[str, TopicConfig] = Field(
        default_factory=lambda: {
            "impressions": TopicConfig(),
            "events": TopicConfig(),
            "samples": TopicConfig(),
            "features": TopicConfig(),
            "models": TopicConfig(partitions=1),
        }
    )


class GrpcConfig(_Section):
    host: str = "127.0.0.1"
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 1024
    shutdown_grace_s: float = 5.0
    default_deadline_s: float = 2.0
    max_request_items: int = Field(10_000, description="Upper bound on repeated fields (candidates, entities, events) in one request.")


class ServicePorts(_Section):
    """0 means "pick a free port" (tests, a second demo on the same machine)."""

    feed: int = 0
    recall: int = 0
    ranking: int = 0
    rerank: int = 0
    features: int = 0
    events: int = 0
    metrics: int = 0


class PathsConfig(_Section):
    var_dir: Path = Field(REPO_ROOT / "var", description="Logs, pid files and runtime state of the local stack.")
    data_dir: Path = Field(REPO_ROOT / "var" / "data", description="Offline store (Parquet) and loaded datasets.")
    artifacts_dir: Path = Field(REPO_ROOT / "var" / "artifacts", description="Model and index artifacts.")
    benchmarks_file: Path = REPO_ROOT / "BENCHMARKS.md"


class FeatureStoreConfig(_Section):
    project: str = Field("cascade", description="Namespace of online keys and registry entries.")
    definitions: Path = Field(REPO_ROOT / "config" / "features.py", description="Python file holding the project's feature definitions.")
    offline_subdir: str = Field("offline", description="Offline store root, under paths.data_dir.")
    registry_subdir: str = Field("registry", description="Applied definitions and their versions, under paths.var_dir.")
    materialize_chunk_rows: int = Field(50_000, description="Rows per bounded chunk when materializing (memory stays flat).")
    online_batch_keys: int = Field(2_000, description="Keys per MGET when reading many entities online.")
    stream_group: str = Field("featurestore-stream", description="Kafka consumer group of the streaming updater.")


class Config(_Section):
    redis: RedisConfig = RedisConfig()
    kafka: KafkaConfig = KafkaConfig()
    grpc: GrpcConfig = GrpcConfig()
    ports: ServicePorts = ServicePorts()
    paths: PathsConfig = PathsConfig()
    features: FeatureStoreConfig = FeatureStoreConfig()

    @property
    def offline_root(self) -> Path:
        return self.paths.data_dir / self.features.offline_subdir

    @property
    def registry_dir(self) -> Path:
        return self.paths.var_dir / self.features.registry_subdir


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"config override {'.'.join(keys)} crosses a scalar at {key!r}")
    node[keys[-1]] = value


def _parse_env_value(raw: str) -> Any:
    """Env values are JSON when they parse as JSON (numbers, bools, objects), else strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
            if keys:
                _set_path(tree, keys, _parse_env_value(raw))
    if environ.get("REDIS_URL"):
        _set_path(tree, ["redis", "url"], environ["REDIS_URL"])
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        _set_path(tree, ["kafka", "bootstrap_servers"], environ["KAFKA_BOOTSTRAP_SERVERS"])
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Build the configuration from file and environment; raises ValueError with the offending key."""
    env = dict(os.environ if environ is None else environ)
    file = Path(path or env.get("CASCADE_CONFIG") or DEFAULT_CONFIG_FILE)
    tree: dict[str, Any] = {}
    if file.exists():
        with file.open("rb") as fh:
            tree = tomllib.load(fh)
    elif path is not None or env.get("CASCADE_CONFIG"):
        raise FileNotFoundError(f"config file not found: {file}")
    tree = _merge(tree, _env_overrides(env))
    return Config.model_validate(tree)


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The process-wide configuration, read once."""
    return load_config()
