"""The server interceptor every service runs: request ids, error mapping, one log line per RPC.

Servicers abort with precise codes themselves. What escapes them is mapped here:
Redis connection and timeout errors become UNAVAILABLE (the caller may retry), anything
else becomes INTERNAL with a generic message, its traceback going to the log only.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.common import logs, metrics
from services.common.redis import is_transient
from services.common.rpc import abort
from services.common.validation import ID_MAX_LENGTH

_LOGGER = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # Wrapped handlers, built once per method: this runs on every call.
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is not None:
            return wrapped

        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or method.startswith("/grpc."):
            return handler
        wrapped = grpc.unary_unary_rpc_method_handler(
            _wrap(method, handler.unary_unary),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._handlers[method] = wrapped
        return wrapped


# Stands in for a request whose bytes are not a message of its type (truncated, not UTF-8
# where a string is): the call is answered INVALID_ARGUMENT, as for any bad input.
_UNREADABLE = object()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNREADABLE

    return deserialize


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return logs.new_request_id()


def _wrap(method: str, behavior: Behavior) -> Behavior:
    service, _, name = method.lstrip("/").partition("/")
    latency = metrics.RPC_SECONDS.labels(service, name)
    handled: dict[grpc.StatusCode, Any] = {}

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = logs.request_id.set(_request_id(context))
        account_token = logs.account.set(_shown_account(getattr(request, "account_id", "")))
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if request is _UNREADABLE:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the request is unreadable")
            return await behavior(request, context)
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            if not is_transient(exc):
                code = grpc.StatusCode.INTERNAL
                _LOGGER.exception("unexpected error")
                await abort(context, code, "internal error")
            code = grpc.StatusCode.UNAVAILABLE
            metrics.REDIS_ERRORS.labels(type(exc).__name__).inc()
            _LOGGER.warning("storage unavailable", extra={"error": type(exc).__name__})
            await abort(context, code, "storage unavailable, retry later")
        finally:
            elapsed = time.perf_counter() - started
            counter = handled.get(code)
            if counter is None:
                counter = handled[code] = metrics.RPCS_HANDLED.labels(service, name, code.name)
            counter.inc()
            latency.observe(elapsed)
            _log_rpc(method, code, elapsed)
            logs.account.reset(account_token)
            logs.request_id.reset(token)

    return handle


def _shown_account(account_id: str) -> str:
    """The account as log lines show it: one longer than any valid id is cut at that
    length, so that a request cannot make its own log line huge."""
    if len(account_id) <= ID_MAX_LENGTH:
        return account_id
    return account_id[:ID_MAX_LENGTH] + "..."


def _log_rpc(method: str, code: grpc.StatusCode, elapsed: float) -> None:
    logs.request_line(
        __name__,
        logging.ERROR if code in _SERVER_FAULTS else logging.INFO,
        "rpc",
        method=method,
        code=code.name,
        duration_ms=round(elapsed * 1000, 3),
        account=logs.account.get(),
    )


_SERVER_FAULTS = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
