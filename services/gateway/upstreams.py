"""The gRPC services the gateway calls."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.audience.v1 import audience_pb2_grpc
from protos.keys.v1 import keys_pb2_grpc
from services.common import grpc_client
from services.gateway.settings import GatewaySettings


class Upstreams:
    """Channels and stubs of the gRPC services the gateway calls."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._channels = {
            "keys": grpc_client.channel(settings.keys_target),
            "audience": grpc_client.channel(settings.audience_target),
        }
        self.keys = keys_pb2_grpc.KeyServiceStub(self._channels["keys"])
        self.audience = audience_pb2_grpc.AudienceServiceStub(self._channels["audience"])

    async def health(self, timeout_seconds: float) -> dict[str, bool]:
        """Whether each upstream answers its health check with SERVING."""
        result = {}
        for name, channel in self._channels.items():
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_seconds)
                result[name] = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                result[name] = False
        return result

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
