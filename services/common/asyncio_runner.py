"""Runs a coroutine on uvloop where it is installed, on asyncio's own loop otherwise."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
    uvloop = None  # type: ignore[assignment]


def run(main: Coroutine[Any, Any, T]) -> T:
    if uvloop is not None:
        return uvloop.run(main)
    return asyncio.run(main)
