"""One asyncio Redis client per process, retrying only connection and timeout errors."""

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

# Errors that mean "the store cannot take this right now": a caller may retry. Besides an
# unreachable or slow server, a full one (OOM, under maxmemory with noeviction) and a replica
# that refuses writes (READONLY, during a failover) recover without any change on our side.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means the store cannot take this right now (see TRANSIENT_ERRORS)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    # A script running past busy-reply-threshold: redis-py has no class of its own for it.
    return isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("BUSY ")


def connect(
    url: str, *, password: str = "", timeout_seconds: float = 1.0, max_connections: int = 64
) -> redis.asyncio.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``), logging in with
    ``password`` when the URL carries none.

    Commands, and waits for one of the ``max_connections`` connections, give up after
    ``timeout_seconds``, so that a stalled server turns into an error a caller can retry
    instead of a hung request.
    """
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        password=password or None,
        max_connections=max_connections,
        timeout=timeout_seconds,
        socket_timeout=timeout_seconds,
        socket_connect_timeout=timeout_seconds,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=30,
    )
    return redis.asyncio.Redis.from_pool(pool)


async def is_ready(client: redis.asyncio.Redis) -> bool:
    """True when Redis answers PING and is not loading its data set."""
    try:
        return bool(await client.ping())
    except TRANSIENT_ERRORS:
        return False
    except redis.exceptions.ResponseError:
        return False
