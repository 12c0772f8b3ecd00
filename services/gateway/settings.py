from pydantic import Field, SecretStr

from services.common.settings import BaseServiceSettings


class GatewaySettings(BaseServiceSettings):
    host: str = Field("127.0.0.1", validation_alias="GATEWAY_HOST")
    port: int = Field(8080, validation_alias="GATEWAY_PORT", ge=0, le=65535)
    keys_target: str = Field("127.0.0.1:50051", validation_alias="KEYS_TARGET")
    audience_target: str = Field("127.0.0.1:50052", validation_alias="AUDIENCE_TARGET")
    # Time budget of one mParticle request, in seconds: its gRPC calls together get no more,
    # so that a stalled dependency is answered with a retried 503 within a second.
    request_timeout_seconds: float = Field(
        0.75, validation_alias="GATEWAY_REQUEST_TIMEOUT_SECONDS", gt=0
    )
    # Seconds a request body may take to arrive; past it, 408 (which mParticle retries).
    body_timeout_seconds: float = Field(10.0, validation_alias="GATEWAY_BODY_TIMEOUT_SECONDS", gt=0)
    # Seconds a request's line and headers may take to arrive, from the connection's start or
    # its previous response; past it, the connection is closed.
    header_timeout_seconds: float = Field(
        10.0, validation_alias="GATEWAY_HEADER_TIMEOUT_SECONDS", gt=0
    )
    # Seconds an API key's validation is reused (0: ask the keys service every time). A
    # revoked key stops working within this bound.
    key_cache_seconds: float = Field(2.0, validation_alias="GATEWAY_KEY_CACHE_SECONDS", ge=0)
    # Requests to /mparticle handled at once; past it, the gateway answers 429 at once.
    max_in_flight: int = Field(256, validation_alias="GATEWAY_MAX_IN_FLIGHT", gt=0)
    # Largest accepted request body, in bytes, before and after gunzip.
    max_body_bytes: int = Field(64 * 1024 * 1024, validation_alias="GATEWAY_MAX_BODY_BYTES", gt=0)
    # Memory, in bytes, that the bodies of requests in flight may take together, as read and
    # once parsed (about 6 times a valid body's size); past it, 429 (services/gateway/memory.py).
    memory_budget_bytes: int = Field(
        1024 * 1024 * 1024, validation_alias="GATEWAY_MEMORY_BUDGET_BYTES", gt=0
    )
    # When set, every request but registration must carry "Authorization: Token <this>".
    mparticle_token: SecretStr = Field(SecretStr(""), validation_alias="MPARTICLE_TOKEN")
    # The account setting that carries the customer's API key, as declared at registration.
    api_key_setting: str = Field("apiKey", validation_alias="MPARTICLE_API_KEY_SETTING")
    # What mParticle's directory shows about this integration.
    integration_name: str = Field("Audience Targeting", validation_alias="INTEGRATION_NAME")
    integration_version: str = Field("1.0", validation_alias="INTEGRATION_VERSION")
