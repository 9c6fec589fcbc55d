"""Build, run and gracefully stop a grpc.aio server hosting one or more Cascade services.

Every server gets the same plumbing so operators and tools see one shape:
standard health checking (per service and overall ``""``), server reflection
(grpcurl/grpcui work without .proto files), message-size and concurrency
limits from :class:`~cascade.config.GrpcConfig`, and the
:class:`~serving.interceptors.ServingInterceptor` (metrics, request id,
deadline, error mapping). Everything bound to an event loop is created in
:meth:`GrpcServer.start`, so a ``GrpcServer`` can be configured outside the loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cascade.config import GrpcConfig
from serving.context import channel_options
from serving.interceptors import ServingInterceptor

_log = logging.getLogger("cascade.grpc.server")

RegisterFn = Callable[[Any, grpc.aio.Server], None]
"""A generated ``add_<Service>Servicer_to_server(servicer, server)`` function (or equivalent)."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _bind_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):  # bare IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


class GrpcServer:
    """One grpc.aio server process-endpoint for one or more servicers.

    Usage::

        server = GrpcServer("recall", cfg.grpc, port=cfg.ports.recall)
        server.add_service(recall_pb2_grpc.add_RecallServicer_to_server, RecallServicer(...), "cascade.v1.Recall")
        port = await server.start()
        install_signal_handlers(server)
        await server.wait()
    """

    def __init__(
        self,
        name: str,
        config: GrpcConfig,
        port: int = 0,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self.name = name
        self.config = config
        self._requested_port = port
        self._extra_interceptors = tuple(interceptors)
        self._services: list[tuple[RegisterFn, Any, str]] = []
        self._server: grpc.aio.Server | None = None
        self._health: grpc_health.aio.HealthServicer | None = None
        self._port: int | None = None
        self._stop_task: asyncio.Future[None] | None = None
        self._stop_grace = float("inf")

    # -- configuration -------------------------------------------------------------

    def add_service(self, register_fn: RegisterFn, servicer: Any, service_full_name: str) -> None:
        """Host ``servicer`` (registered by ``register_fn``) as ``service_full_name``, e.g. ``"cascade.v1.Recall"``.

        The full name is what health checks and reflection report; it must match
        the proto's ``package.Service``.
        """
        if self._server is not None:
            raise RuntimeError(f"{self.name}: add_service() after start()")
        if any(existing == service_full_name for _, _, existing in self._services):
            raise ValueError(f"{self.name}: service {service_full_name!r} added twice")
        self._services.append((register_fn, servicer, service_full_name))

    @property
    def service_names(self) -> list[str]:
        """Full names of the application services (without health and reflection)."""
        return [name for _, _, name in self._services]

    @property
    def port(self) -> int:
        """The bound port; only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` to dial, after :meth:`start`."""
        return _bind_address(self.config.host, self.port)

    @property
    def health(self) -> grpc_health.aio.HealthServicer:
        """The health servicer, for services that want to flip their own status (e.g. while loading a model)."""
        if self._health is None:
            raise RuntimeError(f"{self.name}: not started")
        return self._health

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> int:
        """Bind ``config.host:port`` (0 = a free port), start serving and mark every service SERVING."""
        if self._server is not None:
            raise RuntimeError(f"{self.name}: already started")
        cfg = self.config
        server = grpc.aio.server(
            interceptors=[ServingInterceptor(), *self._extra_interceptors],
            options=[*channel_options(cfg), ("grpc.so_reuseport", 0)],  # never share a port silently
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
        )
        self._health = grpc_health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for register_fn, servicer, _ in self._services:
            register_fn(servicer, server)
        reflection.enable_server_reflection(
            [*self.service_names, grpc_health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = _bind_address(cfg.host, self._requested_port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises on bind failure (older versions returned 0)
            port, error = 0, exc
        else:
            error = None
        if not port:
            await server.stop(None)
            raise OSError(f"{self.name}: cannot bind {address}" + (f": {error}" if error else "")) from error
        self._server = server
        await server.start()
        self._port = port
        for service in ("", *self.service_names):
            await self._health.set(service, SERVING)
        _log.info(
            "%s serving on %s", self.name, _bind_address(cfg.host, port),
            extra={"server": self.name, "port": port, "services": self.service_names},
        )
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Gracefully stop: health NOT_SERVING for every service, refuse new calls, drain in-flight ones.

        In-flight calls get up to ``grace`` seconds (default ``config.shutdown_grace_s``)
        and are then cancelled. Safe to call more than once and concurrently: a
        later call with a shorter grace (e.g. a second Ctrl-C with ``grace=0``)
        shortens the drain, otherwise it just waits for the first stop.
        """
        if self._server is None:
            return
        if grace is None:
            grace = self.config.shutdown_grace_s
        if self._stop_task is None:
            self._stop_grace = grace
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        elif grace < self._stop_grace:
            self._stop_grace = grace
            await self._server.stop(grace)
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        assert self._server is not None and self._health is not None
        _log.info("%s stopping (grace %.1fs)", self.name, grace, extra={"server": self.name})
        # Probes and Watch streams see NOT_SERVING before the listener goes away.
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        _log.info("%s stopped", self.name, extra={"server": self.name})

    async def wait(self) -> None:
        """Block until the server has terminated (after :meth:`stop`)."""
        if self._server is None:
            raise RuntimeError(f"{self.name}: not started")
        await self._server.wait_for_termination()
        if self._stop_task is not None:
            await asyncio.shield(self._stop_task)

    async def __aenter__(self) -> GrpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def install_signal_handlers(
    server: GrpcServer,
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> Callable[[], None]:
    """Make SIGINT/SIGTERM stop ``server`` gracefully; a second signal stops it at once (grace 0).

    Must be called from the running event loop. Returns a function that removes the handlers.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []
    tasks: set[asyncio.Future[None]] = set()

    def on_signal(signum: int) -> None:
        received.append(signum)
        first = len(received) == 1
        _log.warning(
            "%s received %s; %s", server.name, signal.Signals(signum).name,
            "stopping gracefully" if first else "stopping now", extra={"server": server.name},
        )
        task = asyncio.ensure_future(server.stop(None if first else 0.0))
        tasks.add(task)  # keep a reference until done
        task.add_done_callback(tasks.discard)

    installed: list[signal.Signals] = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # non-main thread, or no signal support
            _log.warning("cannot install handler for %s", sig.name)

    def uninstall() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return uninstall
