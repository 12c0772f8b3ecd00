"""Logging: one JSON object per line on stdout, configured only by entrypoints.

Modules log through ``logging.getLogger(__name__)``. The request id of the call being
served, when there is one, is added to every record.

The one summary line of each HTTP request and RPC goes through ``request_line``. Once
``configure`` has run it takes structlog's direct path to stdout, which costs a lookup about
a tenth of its CPU less than a record through ``logging`` (docs/performance.md); both paths
write the same fields. Before that (tests serving in their own process), it is a
``logging`` record like any other.
"""

import contextlib
import contextvars
import datetime
import logging
import secrets
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog
from pythonjsonlogger.orjson import OrjsonFormatter

# The request id of the HTTP request or RPC this task is serving.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The account it concerns, once known; for the request's summary line.
account: contextvars.ContextVar[str] = contextvars.ContextVar("account", default="")

# Where request_line writes once configured.
_direct: structlog.typing.FilteringBoundLogger | None = None


def new_request_id() -> str:
    """An id for a request that arrived without one: 32 hex digits."""
    return secrets.token_hex(16)


def request_line(logger: str, level: int, message: str, **fields: Any) -> None:
    """Log the summary line of one request as a record of ``logger`` with ``fields``."""
    if _direct is None:
        logging.getLogger(logger).log(level, message, extra=fields)
        return

    # Like a record that logging cannot write: the line is lost, the request is not.
    with contextlib.suppress(OSError, ValueError):
        _direct.log(level, message, logger=logger, **fields)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn attaches a terminal-coloured copy of some messages.
        record.__dict__.pop("color_message", None)
        current = request_id.get()
        if current and not hasattr(record, "request_id"):
            record.request_id = current
        return True


def configure(service: str, level: str = "INFO") -> None:
    """Send every record to stdout as a JSON line tagged with the service's name."""
    global _direct

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        OrjsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(_RequestIdFilter())

    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

    _direct = structlog.wrap_logger(
        structlog.BytesLogger(sys.stdout.buffer),
        wrapper_class=structlog.make_filtering_bound_logger(root.getEffectiveLevel()),
        processors=[
            _FieldsOfEveryRecord(service),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
    )


class _FieldsOfEveryRecord:
    """Adds what the formatter of ``logging`` records adds (level, service, time, request
    id), in the order it writes them, the event's text named "message"."""

    def __init__(self, service: str) -> None:
        self._service = service

    def __call__(
        self, _: Any, method_name: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        line = {
            "level": method_name.upper(),
            "logger": event.pop("logger"),
            "message": event.pop("event"),
            "service": self._service,
            **event,
        }
        current = request_id.get()
        if current and "request_id" not in line:
            line["request_id"] = current
        # As the formatter writes a record's time: ISO 8601 with "+00:00".
        line["time"] = datetime.datetime.now(datetime.UTC)
        return line
