"""uvicorn's HTTP protocol (httptools), with a deadline for each request's head, and the
gateway's error shape for requests that are not HTTP.

uvicorn closes a connection left idle after a response (``timeout_keep_alive``), but not one
that sends part of a request line or of its headers and then stalls: enough of those would
hold every file descriptor of the process. Here each request's head must be complete within
a deadline from the moment the connection opens or its previous response was sent; past it,
the connection is closed. (The body has its own deadline, ``GATEWAY_BODY_TIMEOUT_SECONDS``.)
httptools sets no bound on a head's size either: one larger than MAX_HEAD_BYTES is answered
431 and the connection closed, before it is held in memory.

The gateway speaks HTTP/1.1 only, and ignores a request's ``Upgrade`` (as RFC 9110 lets a
server do): httptools would otherwise take the body of a POST sent with ``Connection:
Upgrade`` (``curl --http2`` on http://, some HTTP/2 clients) for the new protocol's data,
and the request would reach the endpoint without it. So each head is gathered whole and the
``upgrade`` option taken out of its Connection header before httptools reads it. A request
pipelined behind another reaches httptools directly; if it asks to upgrade, its body (and
whatever follows it) is lost to the parser, so it is answered 503, which mParticle retries,
and the connection closed after it (BODY_LOST).
"""

import asyncio
import logging
import re
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_LOGGER = logging.getLogger(__name__)

# A request line and headers together; mParticle's are well under 2 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Set in a request's ASGI scope when httptools took its body for another protocol's data.
BODY_LOST = "gateway.body_lost"

# How every request httptools accepts begins: a method, then a space; and bytes no head
# holds (control characters but tab, CR and LF).
_REQUEST_START = re.compile(rb"[A-Z]{1,20}(?: |\Z)")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The blank line that ends a head (httptools also takes bare line feeds).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# A Connection header of a head, and the upgrade option in its value (a token, between
# the colon, commas, spaces and the line's end).
_CONNECTION = re.compile(rb"^connection[ \t]*:[^\r\n]*", re.IGNORECASE | re.MULTILINE)
_UPGRADE_OPTION = re.compile(rb"(?<=[:, \t])upgrade(?=[, \t\r\n]|\Z)", re.IGNORECASE)


def with_header_timeout(seconds: float) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (``Config(http=...)``)."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_deadline: asyncio.TimerHandle | None = None
            # The head so far, while it arrives in pieces.
            self._head = bytearray()
            # Whether httptools is inside a request's body, from the bytes so far.
            self._in_body = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_deadline()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # While a body answered early still arrives, its bytes are the parser's to skip.
            if self._head_deadline is not None and not self._in_body:
                data = self._through_head(data)
                if not data:
                    return
            super().data_received(data)

        def _through_head(self, data: bytes) -> bytes:
            """What of ``data`` to pass on while a head is arriving: nothing until the head
            is whole (or is not HTTP at all), then the head without its upgrade and what
            follows it."""
            if self._head:
                searched = len(self._head) - 3
                self._head += data
                buffer: bytes | bytearray = self._head
            else:
                # The usual case, a head (and maybe its body) in one read: nothing is copied.
                searched = 0
                buffer = data
            searched = max(searched, 0)
            blank = _HEAD_END.search(buffer, searched)
            end = blank.start() if blank else -1

            if (blank.end() if blank else len(buffer)) > MAX_HEAD_BYTES:
                self._disarm_head_deadline()
                # Never an ASGI request, so this is its one log line.
                _LOGGER.warning("request head too large", extra={"status": 431})
                self._refuse(
                    b"431 Request Header Fields Too Large",
                    "headers_too_large",
                    f"the request line and headers must fit in {MAX_HEAD_BYTES} bytes",
                )
                return b""
            if end < 0 and _REQUEST_START.match(buffer) and not _CONTROL.search(buffer, searched):
                if buffer is data:
                    self._head = bytearray(data)
                # A head is arriving: the head's deadline, not uvicorn's idle timer, bounds it.
                self._unset_keepalive_if_required()
                return b""

            self._head = bytearray()
            if end < 0:
                # Not HTTP: httptools refuses it at once.
                return bytes(buffer)
            if _UPGRADE_OPTION.search(buffer, 0, end) is None:
                return bytes(buffer) if buffer is not data else data
            return _without_upgrade(bytes(buffer[:end])) + bytes(buffer[end:])

        def on_headers_complete(self) -> None:
            self._disarm_head_deadline()
            super().on_headers_complete()
            self._in_body = True

        def on_message_complete(self) -> None:
            self._in_body = False
            super().on_message_complete()
            # Answered before its body had arrived (415, 413, 429...): the next head starts
            # where the body ends, with a deadline of its own.
            if self.cycle.response_complete and not self.pipeline:
                self._arm_head_deadline_if_open()

        def on_response_complete(self) -> None:
            # A pipelined request waiting for its turn has its head already. The rest of a
            # body answered early, and the next head, must arrive within the deadline.
            next_head_pending = not self.pipeline
            super().on_response_complete()
            if next_head_pending:
                self._arm_head_deadline_if_open()

        def _unsupported_upgrade_warning(self) -> None:
            # httptools met an upgrade in a pipelined request (one at the start of a head is
            # taken out beforehand): that request, the newest, has no body to read.
            self.cycle.scope[BODY_LOST] = True  # type: ignore[literal-required]
            self.cycle.keep_alive = False
            _LOGGER.warning("a pipelined request asked to upgrade; it is answered 503")

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

        def _arm_head_deadline_if_open(self) -> None:
            if not self.transport.is_closing():
                self._arm_head_deadline()

        def _arm_head_deadline(self) -> None:
            self._disarm_head_deadline()
            self._head = bytearray()
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


def _without_upgrade(head: bytes) -> bytes:
    """``head`` with the upgrade option taken out of its Connection headers."""
    return _CONNECTION.sub(lambda line: _UPGRADE_OPTION.sub(b"", line.group()), head)
