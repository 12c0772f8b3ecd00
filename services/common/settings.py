"""Settings are read from the environment once, at start, into frozen objects.

Each service declares its own settings class on top of ``BaseServiceSettings``; every field
names the environment variable it comes from, so a missing or bad value fails at start with
that name.
"""

from collections.abc import Mapping
from typing import Self

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """A required setting is missing or malformed."""


class BaseServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    # Seconds in-flight calls get to finish after SIGTERM.
    shutdown_grace_seconds: float = Field(10.0, validation_alias="SHUTDOWN_GRACE_SECONDS", gt=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read the settings from the environment (or from ``environ``, a mapping of the same
        variables), or raise SettingsError naming each bad variable."""
        try:
            return cls() if environ is None else cls.model_validate(environ)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                name = ".".join(str(part) for part in error["loc"])
                problems.append(f"{name}: {error['msg']}")
            raise SettingsError("bad settings: " + "; ".join(problems)) from None


class GrpcServiceSettings(BaseServiceSettings):
    """Settings of a gRPC service that keeps its state in Redis."""

    redis_url: str = Field(validation_alias="REDIS_URL", pattern=r"^(redis|rediss|unix)://")
    # Redis's password, when REDIS_URL does not carry one: kept apart so that the URL can sit
    # in plain configuration and the password in a secret.
    redis_password: SecretStr = Field(SecretStr(""), validation_alias="REDIS_PASSWORD")
    # Seconds between readiness probes of Redis.
    readiness_interval_seconds: float = Field(
        1.0, validation_alias="READINESS_INTERVAL_SECONDS", gt=0
    )
