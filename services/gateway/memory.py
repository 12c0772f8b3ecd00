"""A budget for the memory that request bodies take while they are served.

Each body is bounded alone (``GATEWAY_MAX_BODY_BYTES``), but up to ``GATEWAY_MAX_IN_FLIGHT``
requests are served at once, and parsing makes objects of a body that take several times its
size (about 28 times for a body of "{}"). So each request reserves what its body costs, its
bytes as they arrive, then an estimate of what the typed decoder makes of them and, should
the body need another way of reading (firehose.py), of what that makes of them, from one
budget (``GATEWAY_MEMORY_BUDGET_BYTES``). A request that finds the budget spent is answered
429, which mParticle retries once others are done; one that could not fit even alone, 413.
"""

import threading

from services.gateway.errors import ApiError

# What parsing makes of a body, by measure (CPython 3.11, 64-bit). The typed decoder of a
# well-formed batch: a struct or container with its slot takes 72-90 bytes before its items,
# and the batch read from it up to about four times the JSON text.
BYTES_PER_CONTAINER = 90
BYTES_PER_BODY_BYTE = 4
# The lenient path builds every value as a Python object, and a validated copy of each
# profile: an object or array with its copy up to about 400 bytes, any other value (one a
# comma) up to about 80 (a one-letter string, 4 bytes of JSON, takes 66 with its slot).
LENIENT_BYTES_PER_CONTAINER = 400
LENIENT_BYTES_PER_ITEM = 80


def parse_cost(body: bytes) -> int:
    """An upper estimate of the memory the typed decoder and the batch it reads take."""
    # Two passes that allocate nothing: one pass through bytes.translate would take a
    # third less time, but a copy of the body's size that the budget does not see.
    containers = body.count(b"{") + body.count(b"[")
    return BYTES_PER_BODY_BYTE * len(body) + BYTES_PER_CONTAINER * containers


# Splitting a body into its profiles without reading them (firehose.py): a msgspec.Raw and
# its list slot for each, and any item of a list can be a profile.
SPLIT_BYTES_PER_ITEM = 64


def split_cost(body: bytes) -> int:
    """An upper estimate of the memory that splitting ``body`` into its profiles takes."""
    return SPLIT_BYTES_PER_ITEM * (body.count(b",") + 1)


def lenient_parse_cost(body: bytes) -> int:
    """An upper estimate of the memory the lenient path takes to read ``body``."""
    containers = body.count(b"{") + body.count(b"[")
    items = body.count(b",")
    return (
        BYTES_PER_BODY_BYTE * len(body)
        + LENIENT_BYTES_PER_CONTAINER * containers
        + LENIENT_BYTES_PER_ITEM * items
    )


class MemoryBudget:
    """Bytes that the bodies of requests in flight may take together."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        # Large bodies are parsed in worker threads, which take from the budget too.
        self.lock = threading.Lock()

    def reservation(self) -> "Reservation":
        return Reservation(self)


class Reservation:
    """What one request holds of the budget; ``release`` gives it all back."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise ApiError: 413 when this request would need
        more than the whole budget, 429 when others hold too much of it now."""
        budget = self._budget
        if self.held + size > budget.limit:
            raise ApiError(
                413,
                "body_too_large",
                f"reading this body takes more than the {budget.limit} bytes of memory the "
                "gateway gives request bodies; send fewer profiles a request",
            )

        with budget.lock:
            if budget.used + size > budget.limit:
                raise ApiError(429, "overloaded", "too many large bodies in flight, retry later")
            budget.used += size
        self.held += size

    def give_back(self, size: int) -> None:
        """Return ``size`` bytes taken earlier, once what they stood for is freed."""
        with self._budget.lock:
            self._budget.used -= size
        self.held -= size

    def release(self) -> None:
        with self._budget.lock:
            self._budget.used -= self.held
        self.held = 0
