"""Logging: one JSON object per line on stdout, configured only by entrypoints.

Modules log through ``logging.getLogger(__name__)``. The request id of the call being
served, when there is one, is added to every record.
"""

import contextvars
import logging
import sys

from pythonjsonlogger.orjson import OrjsonFormatter

# The request id of the HTTP request or RPC this task is serving.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The account it concerns, once known; for the request's summary line.
account: contextvars.ContextVar[str] = contextvars.ContextVar("account", default="")


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
