import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from services.audience.servicer import AudienceServicer
from services.audience.settings import AudienceSettings
from services.audience.store import AudienceStore
from services.common import redis as redis_helpers
from services.common.grpc_server import GrpcServer, ServiceBinding
from services.common.redis_pipelined import PipelinedConnection

_LOGGER = logging.getLogger(__name__)

SERVICE_NAME = audience_pb2.DESCRIPTOR.services_by_name["AudienceService"].full_name


async def create_server(settings: AudienceSettings) -> GrpcServer:
    """Build the audience server on settings.host:settings.port (0 picks a free port)."""
    # TODO(#4): one process serves every call, so lookups top out at one core (about 375 µs
    # of CPU a lookup, most of it grpc.aio's own; docs/performance.md). Serving the port from
    # several processes would lift that where the callers run on other machines.
    password = settings.redis_password.get_secret_value()
    client = redis_helpers.connect(settings.redis_url, password=password)
    try:
        pipelined: PipelinedConnection | None = PipelinedConnection(
            settings.redis_url, password=password
        )
    except ValueError:
        pipelined = None  # TLS: the hot paths take the pooled client too
    store = AudienceStore(client, settings.ordering_window_seconds, pipelined=pipelined)
    servicer = AudienceServicer(store)

    return GrpcServer(
        "audience",
        f"{settings.host}:{settings.port}",
        [
            ServiceBinding(
                SERVICE_NAME,
                partial(audience_pb2_grpc.add_AudienceServiceServicer_to_server, servicer),
            )
        ],
        readiness=partial(redis_helpers.is_ready, client),
        readiness_interval_seconds=settings.readiness_interval_seconds,
        metrics_port=settings.metrics_port,
        background=[
            partial(clean_up_removed_audiences, store, settings.cleanup_idle_seconds),
            partial(free_old_tombstones, store, settings.cleanup_idle_seconds),
        ],
        on_stop=[client.aclose, *([pipelined.aclose] if pipelined else [])],
    )


async def clean_up_removed_audiences(store: AudienceStore, idle_seconds: float) -> None:
    """Free the memberships of removed audiences, one bounded step at a time, for ever."""
    await _in_steps(store.cleanup, idle_seconds, "cleanup step failed")


async def free_old_tombstones(store: AudienceStore, idle_seconds: float) -> None:
    """Free the tombstones no change reads any more, one bounded step at a time, for ever."""
    await _in_steps(store.free_old_tombstones, idle_seconds, "tombstone cleanup step failed")


async def _in_steps(step: Callable[[], Awaitable[int]], idle_seconds: float, failed: str) -> None:
    """Run ``step`` again at once while it reports work pending, else after a pause."""
    while True:
        try:
            pending = await step()
        except Exception as exc:
            if not redis_helpers.is_transient(exc):
                _LOGGER.exception(failed)
            pending = 0

        await asyncio.sleep(0 if pending else idle_seconds)
