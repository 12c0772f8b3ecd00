from functools import partial

from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from services.common import redis as redis_helpers
from services.common.grpc_server import GrpcServer, ServiceBinding
from services.keys.servicer import KeyServicer
from services.keys.settings import KeysSettings
from services.keys.store import KeyStore

SERVICE_NAME = keys_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name


async def create_server(settings: KeysSettings) -> GrpcServer:
    """Build the keys server on settings.host:settings.port (0 picks a free port)."""
    password = settings.redis_password.get_secret_value()
    client = redis_helpers.connect(settings.redis_url, password=password)
    store = KeyStore(client, settings.hash_secret.get_secret_value().encode())
    servicer = KeyServicer(store)

    return GrpcServer(
        "keys",
        f"{settings.host}:{settings.port}",
        [
            ServiceBinding(
                SERVICE_NAME, partial(keys_pb2_grpc.add_KeyServiceServicer_to_server, servicer)
            )
        ],
        readiness=partial(redis_helpers.is_ready, client),
        readiness_interval_seconds=settings.readiness_interval_seconds,
        metrics_port=settings.metrics_port,
        on_stop=[client.aclose],
    )
