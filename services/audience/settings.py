from pydantic import Field

from services.common.settings import GrpcServiceSettings


class AudienceSettings(GrpcServiceSettings):
    host: str = Field("127.0.0.1", validation_alias="AUDIENCE_HOST")
    port: int = Field(50052, validation_alias="AUDIENCE_PORT", ge=0, le=65535)
    # Prometheus metrics over HTTP, on the same host.
    metrics_port: int = Field(9092, validation_alias="AUDIENCE_METRICS_PORT", ge=0, le=65535)
    # How long, in seconds, a membership change is remembered so that an older change that
    # arrives after it is ignored (kept for one to two windows).
    ordering_window_seconds: int = Field(
        3600, validation_alias="AUDIENCE_ORDERING_WINDOW_SECONDS", gt=0
    )
    # Seconds the cleanup of removed audiences sleeps when it finds nothing to do.
    cleanup_idle_seconds: float = Field(1.0, validation_alias="AUDIENCE_CLEANUP_IDLE_SECONDS", gt=0)
