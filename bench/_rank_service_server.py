"""The ranking service in its own process, for `bench rank_service` (the client must not share its GIL).

``python -m bench._rank_service_server --redis-url URL --project P --registry DIR [--batching on|off]
[--deadline-ms MS]`` builds the server with :func:`ranking.service.build_ranking_server`
(the configured model name, backend and threads; the feature client on project
`P`; the model registry at `DIR`), prints ``PORT <n> VERSION <v> BACKEND <b> METRICS <port>`` once it serves (Prometheus on the last port), and runs
until SIGTERM or its parent dies.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import signal
import sys


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _serve(args: argparse.Namespace) -> None:
    from cascade.config import get_config
    from featurestore.client import FeatureClient
    from featurestore.repository import get_repo
    from ranking.registry import ModelRegistry
    from ranking.service import build_ranking_server

    config = get_config()
    ranking = {"batching": args.batching == "on"}
    if args.deadline_ms is not None:
        ranking["deadline_ms"] = args.deadline_ms
    config = config.model_copy(update={
        "features": config.features.model_copy(update={"project": args.project}),
        "ranking": config.ranking.model_copy(update=ranking),
    })
    repo = get_repo(config.features.definitions)
    client = FeatureClient.from_config(config, args.redis_url, repo=repo, check_registry=False, shared_cache=True)
    registry = ModelRegistry(args.registry, repo=repo, default_model=config.ranking.model)
    server = build_ranking_server(config, args.redis_url, feature_client=client, registry=registry, port=0)
    port = await server.start()
    from serving import start_metrics_server

    metrics = start_metrics_server(0, config.grpc.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    live = server.manager.live_model()
    print(f"PORT {port} VERSION {live.version if live else '-'} "
          f"BACKEND {getattr(live.scorer, 'backend_name', '?') if live else '-'} METRICS {metrics}", flush=True)
    await stop.wait()
    await server.stop(0.5)
    client.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--registry", required=True)
    p.add_argument("--batching", choices=("on", "off"), default="on")
    p.add_argument("--deadline-ms", type=float, default=None)
    a = p.parse_args()
    _die_with_parent()
    asyncio.run(_serve(a))


if __name__ == "__main__":
    main()
