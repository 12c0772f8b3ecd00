"""The host every gRPC service runs in.

``GrpcServer`` wraps a ``grpc.aio`` server with what each service needs besides its own
servicer: the library health service, server reflection, a readiness loop that follows the
service's dependencies, the per-RPC interceptor, and an orderly stop. Building one does not
start it, so tests can bind port 0 and read the port back.
"""

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import asyncio_runner, logs, metrics
from services.common.interceptors import ServerInterceptor
from services.common.settings import BaseServiceSettings, SettingsError

_LOGGER = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# The health service name a liveness probe asks for: SERVING while the process runs, whatever
# its dependencies. The overall status ("") and each service's status follow readiness.
LIVENESS = "liveness"

# Longest wait for a readiness check (and no longer than its interval); Redis answers a
# PING in well under a millisecond.
READINESS_TIMEOUT_SECONDS = 0.5

# Past its grace period, a stop that is still waiting is stuck, not finishing calls.
STOP_MARGIN_SECONDS = 5.0

# How long a stop waits for a cancelled loop before cancelling it again (see _end).
RECANCEL_SECONDS = 0.1

ReadinessCheck = Callable[[], Awaitable[bool]]
SettingsT = TypeVar("SettingsT", bound=BaseServiceSettings)


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to host: its full name and how to add its servicer to a server."""

    full_name: str
    add_to_server: Callable[[grpc.aio.Server], None]


class GrpcServer:
    def __init__(
        self,
        name: str,
        address: str,
        bindings: Sequence[ServiceBinding],
        *,
        readiness: ReadinessCheck,
        readiness_interval_seconds: float = 1.0,
        metrics_port: int | None = None,
        background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
        on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """Build (not start) a server for ``bindings`` on ``address`` ("host:port").

        ``readiness`` is polled every ``readiness_interval_seconds`` and must answer within
        that interval and READINESS_TIMEOUT_SECONDS; the health status of the server and of
        each service follows it. Prometheus metrics are served over HTTP on the
        address's host and ``metrics_port`` (0 picks one; None serves none; read
        ``metrics_port`` back after start). ``background`` loops run while the server
        serves and are cancelled when it stops. ``on_stop`` runs after the last call finished.
        """
        self.name = name
        self.health = health.aio.HealthServicer()
        self._bindings = bindings
        self._readiness = readiness
        self._interval = readiness_interval_seconds
        self._host = address.rpartition(":")[0]
        self.metrics_port = metrics_port
        self._metrics_server: WSGIServer | None = None
        self._background = background
        self._on_stop = on_stop
        self._tasks: list[asyncio.Task[None]] = []
        self._status: health_pb2.HealthCheckResponse.ServingStatus | None = None
        self._stopped = asyncio.Event()

        self.server = grpc.aio.server(
            interceptors=[ServerInterceptor()],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        )
        for binding in bindings:
            binding.add_to_server(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [b.full_name for b in bindings]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"{name}: cannot bind {address} (is the port taken?)")

    async def start(self) -> None:
        """Start serving; health says NOT_SERVING until the first readiness check passes."""
        await self.health.set(LIVENESS, SERVING)
        await self._set_health(NOT_SERVING)
        if self.metrics_port is not None:
            self._metrics_server = metrics.serve(self._host, self.metrics_port)
            self.metrics_port = self._metrics_server.server_port
        await self.server.start()
        await self._check_readiness()
        loops = [self._follow_readiness, *self._background]
        self._tasks = [asyncio.create_task(loop()) for loop in loops]
        _LOGGER.info("serving", extra={"port": self.port})

    async def stop(self, grace_seconds: float) -> None:
        """Stop in order: report NOT_SERVING, refuse new calls, let calls in flight finish
        within ``grace_seconds``, then release the dependencies."""
        if self._stopped.is_set():
            return
        self._stopped.set()

        await self.health.enter_graceful_shutdown()
        await _end(self._tasks)
        await self.server.stop(grace_seconds)

        for release in self._on_stop:
            await release()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.shutdown)
            self._metrics_server.server_close()
        _LOGGER.info("stopped")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()

    async def _follow_readiness(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._check_readiness()

    async def _check_readiness(self) -> None:
        # A dependency that does not answer at once is not ready: a paused Redis must not
        # keep the service SERVING while the client's timeouts and retries run.
        try:
            async with asyncio.timeout(min(self._interval, READINESS_TIMEOUT_SECONDS)):
                ready = await self._readiness()
        except TimeoutError:
            ready = False
        except Exception:
            _LOGGER.exception("readiness check failed")
            ready = False
        await self._set_health(SERVING if ready else NOT_SERVING)

    async def _set_health(self, status: "health_pb2.HealthCheckResponse.ServingStatus") -> None:
        if status == self._status:
            return
        if self._status is not None:
            name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            level = logging.INFO if status == SERVING else logging.WARNING
            _LOGGER.log(level, "health changed", extra={"status": name})
        self._status = status

        for service in ["", *(b.full_name for b in self._bindings)]:
            await self.health.set(service, status)


async def _end(tasks: Sequence["asyncio.Task[None]"]) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again any that goes on.

    On Python 3.11 a cancellation can be lost: ``asyncio.wait_for``, with which redis-py
    sends each command, returns the command's result instead of raising when the command
    completes as the cancellation arrives (CPython gh-86296, fixed in 3.12), and a loop
    around such a command then carries on as if it had never been cancelled.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)

    # Collects what each task ended with, so that none is reported as never retrieved.
    await asyncio.gather(*tasks, return_exceptions=True)


async def serve_until_signalled(server: GrpcServer, grace_seconds: float) -> bool:
    """Run ``server`` until SIGTERM or SIGINT, then stop it in order.

    Returns False when the stop was still waiting ``STOP_MARGIN_SECONDS`` after its grace
    period; the error logged then carries the step it was waiting on.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)

    await server.start()
    await stop_requested.wait()

    _LOGGER.info("stopping", extra={"grace_seconds": grace_seconds})
    limit = grace_seconds + STOP_MARGIN_SECONDS
    try:
        await asyncio.wait_for(server.stop(grace_seconds), limit)
    except TimeoutError:
        _LOGGER.exception("stop did not finish in time", extra={"limit_seconds": limit})
        return False
    return True


def run_service(
    name: str,
    settings_class: type[SettingsT],
    build: Callable[[SettingsT], Awaitable[GrpcServer]],
) -> None:
    """The entrypoint of a gRPC service: read settings, set up logging, serve until signalled.

    Exits with status 2 and the name of the bad variable when the settings are wrong.
    """
    try:
        settings = settings_class.from_env()
    except SettingsError as exc:
        sys.exit(f"{name}: {exc}")

    logs.configure(name, settings.log_level)

    async def main() -> None:
        try:
            server = await build(settings)
        except OSError as exc:
            # A port taken by another process: one clear line, not a traceback.
            _LOGGER.error("cannot start", extra={"error": str(exc)})
            sys.exit(1)
        if not await serve_until_signalled(server, settings.shutdown_grace_seconds):
            # The interpreter's own shutdown could wait on the same step: leave at once.
            logging.shutdown()
            os._exit(1)

    asyncio_runner.run(main())
