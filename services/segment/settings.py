from pydantic import Field

from services.common.settings import GrpcServiceSettings


class SegmentSettings(GrpcServiceSettings):
    host: str = Field("127.0.0.1", validation_alias="SEGMENT_HOST")
    port: int = Field(50053, validation_alias="SEGMENT_PORT", ge=0, le=65535)
    # Prometheus metrics over HTTP, on the same host.
    metrics_port: int = Field(9093, validation_alias="SEGMENT_METRICS_PORT", ge=0, le=65535)
    # The audience service, as a gRPC target.
    audience_target: str = Field("127.0.0.1:50052", validation_alias="AUDIENCE_TARGET")
    # Deadline of each call to the audience service, in seconds.
    call_timeout_seconds: float = Field(2.0, validation_alias="GRPC_CALL_TIMEOUT_SECONDS", gt=0)
