"""uvicorn's HTTP protocol (httptools), with a deadline for each request's head, and the
gateway's error shape for requests that are not HTTP.

uvicorn closes a connection left idle after a response (``timeout_keep_alive``), but not one
that sends part of a request line or of its headers and then stalls: enough of those would
hold every file descriptor of the process. Here each request's head must be complete within
a deadline from the moment the connection opens or its previous response was sent; past it,
the connection is closed. (The body has its own deadline, ``GATEWAY_BODY_TIMEOUT_SECONDS``.)
httptools sets no bound on a head's size either: one larger than MAX_HEAD_BYTES is answered
431 and the connection closed, before it is held in memory.
"""

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A request line and headers together; mParticle's are well under 2 KiB.
MAX_HEAD_BYTES = 64 * 1024


def with_header_timeout(seconds: float) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_deadline: asyncio.TimerHandle | None = None
            self._head_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._head_deadline is not None:
                # Inside a head: count its bytes, up to the blank line that ends it.
                end = data.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._disarm_head_deadline()
                    self._refuse(
                        b"431 Request Header Fields Too Large",
                        "headers_too_large",
                        f"the request line and headers must fit in {MAX_HEAD_BYTES} bytes",
                    )
                    return

            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            # A pipelined request waiting for its turn has its head already.
            next_head_pending = not self.pipeline
            super().on_response_complete()
            if next_head_pending and not self.transport.is_closing():
                self._arm_head_deadline()

        def send_400_response(self, msg: str) -> None:
            """A request the HTTP parser refuses (a bad chunk size, a negative length...):
            400 in the same JSON shape as every other error, then the connection closes."""
            self._refuse(b"400 Bad Request", "invalid_http", msg)

        def _refuse(self, status: bytes, code: str, message: str) -> None:
            body = orjson.dumps({"error": {"code": code, "message": message, "path": None}})
            head = (
                b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, len(body))
            )
            self.transport.write(head + body)
            self.transport.close()

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head_bytes = 0
            self._head_deadline = self.loop.call_later(seconds, self._head_too_slow)

        def _disarm_head_deadline(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _head_too_slow(self) -> None:
            self._head_deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol
