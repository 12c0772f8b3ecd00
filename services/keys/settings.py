from pydantic import Field, SecretStr

from services.common.settings import GrpcServiceSettings


class KeysSettings(GrpcServiceSettings):
    host: str = Field("127.0.0.1", validation_alias="KEYS_HOST")
    port: int = Field(50051, validation_alias="KEYS_PORT", ge=0, le=65535)
    # Prometheus metrics over HTTP, on the same host.
    metrics_port: int = Field(9091, validation_alias="KEYS_METRICS_PORT", ge=0, le=65535)
    # Mixed into every stored key hash (HMAC-SHA256). Changing it invalidates every key.
    hash_secret: SecretStr = Field(SecretStr(""), validation_alias="KEYS_HASH_SECRET")
