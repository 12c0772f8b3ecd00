from functools import partial

from protos.audience.v1 import audience_pb2_grpc
from protos.segment.v1 import segment_pb2, segment_pb2_grpc
from services.common import grpc_client
from services.common import redis as redis_helpers
from services.common.grpc_server import GrpcServer, ServiceBinding
from services.segment.servicer import SegmentServicer
from services.segment.settings import SegmentSettings
from services.segment.store import ConnectorStore

SERVICE_NAME = segment_pb2.DESCRIPTOR.services_by_name["SegmentService"].full_name


async def create_server(settings: SegmentSettings) -> GrpcServer:
    """Build the segment server on settings.host:settings.port (0 picks a free port)."""
    password = settings.redis_password.get_secret_value()
    client = redis_helpers.connect(settings.redis_url, password=password)
    audience_channel = grpc_client.channel(settings.audience_target)
    servicer = SegmentServicer(
        ConnectorStore(client),
        audience_pb2_grpc.AudienceServiceStub(audience_channel),
        settings.call_timeout_seconds,
    )

    return GrpcServer(
        "segment",
        f"{settings.host}:{settings.port}",
        [
            ServiceBinding(
                SERVICE_NAME,
                partial(segment_pb2_grpc.add_SegmentServiceServicer_to_server, servicer),
            )
        ],
        readiness=partial(redis_helpers.is_ready, client),
        readiness_interval_seconds=settings.readiness_interval_seconds,
        metrics_port=settings.metrics_port,
        on_stop=[audience_channel.close, client.aclose],
    )
