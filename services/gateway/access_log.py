"""One JSON log line and one set of metrics per HTTP request, with its request id."""

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import logs
from services.common.interceptors import REQUEST_ID_HEADER
from services.gateway import firehose, metrics


class AccessLog:
    """One JSON line per request; takes or makes the request id and returns it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or logs.new_request_id()
        token = logs.request_id.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            state = scope.get("state", {})
            route = scope["path"] if scope["path"] in _ROUTES else "other"
            message_type = _known_type(state.get("message_type", ""))
            metrics.REQUESTS.labels(route, message_type, str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route, message_type).observe(elapsed)
            logs.request_line(
                __name__,
                logging.INFO,
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 3),
                message_type=message_type,
                account=state.get("account", ""),
            )
            logs.request_id.reset(token)


_ROUTES = frozenset({"/mparticle", "/healthz", "/readyz", "/metrics"})
_MESSAGE_TYPES = frozenset({firehose.REGISTRATION, firehose.SUBSCRIPTION, firehose.MEMBERSHIP})


def _known_type(message_type: object) -> str:
    """The message type as a metric label: one of ours, or "other" (never a sender's text)."""
    if not message_type:
        return ""
    return message_type if message_type in _MESSAGE_TYPES else "other"


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1").strip()
            # gRPC metadata carries ASCII only; any other id is replaced by one of ours.
            if 0 < len(text) <= 128 and text.isascii() and text.isprintable():
                return text
    return ""
