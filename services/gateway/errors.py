"""How failures leave the gateway: one JSON shape, and one table from gRPC codes to HTTP.

Every error body is ``{"error": {"code", "message", "path"}}``; ``path`` is the JSON path of
the offending field, or null. mParticle retries only 408, 429, 500, 502, 503 and 504
(PROTOCOL.md, "Retried codes"), so every failure that is not the sender's fault maps to one
of them, and a 4xx is kept for requests that could never succeed.
"""

from collections.abc import Mapping

import grpc
from starlette.responses import JSONResponse

# Seconds mParticle is asked to wait before retrying a 429 or 503.
RETRY_AFTER_SECONDS = 1

GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # Transient: the change was not stored, and a retry can succeed.
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    grpc.StatusCode.ABORTED: 503,
    grpc.StatusCode.CANCELLED: 503,
    # During a rolling deploy an older peer may not know a method yet.
    grpc.StatusCode.UNIMPLEMENTED: 503,
    # Our own faults: still retried, so that nothing is dropped for good.
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}


class ApiError(Exception):
    """A failure answered to the client as ``status`` with the standard error body."""

    def __init__(self, status: int, code: str, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.path = path

    @classmethod
    def from_grpc(cls, error: grpc.aio.AioRpcError, upstream: str) -> "ApiError":
        code = error.code()
        status = GRPC_TO_HTTP.get(code, 503)
        if status >= 500:
            message = f"{upstream} is unavailable, retry later"
        else:
            message = error.details() or code.name.lower()
        return cls(status, code.name.lower(), message)

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.status in (429, 503):
            headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        body = {"error": {"code": self.code, "message": self.message, "path": self.path}}
        return JSONResponse(body, status_code=self.status, headers=headers)
