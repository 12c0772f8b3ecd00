"""Reading a request body within bounds: media type, size, time and gzip."""

import asyncio
import zlib

from starlette.requests import Request

from services.gateway.errors import ApiError
from services.gateway.memory import Reservation

# Compressed bodies up to this size are inflated on the event loop; larger ones in a thread.
# Deflate expands at most about 1,032 times, so that this is at most about 1 MiB inflated.
_GUNZIP_ON_LOOP_BYTES = 1024
# Compressed bytes fed at a time, and the most inflated at a time before it is taken from the
# memory budget.
_GUNZIP_CHUNK = 64 * 1024
_GUNZIP_OUTPUT_STEP = 1024 * 1024


class BodyTooLarge(Exception):
    pass


def check_media_type(request: Request) -> None:
    """JSON, or no Content-Type at all (mParticle's is not documented); else 415."""
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")

    if _encoding(request) not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_encoding", "Content-Encoding must be gzip or identity")


def _encoding(request: Request) -> str:
    """The body's content coding: an empty header is none, and x-gzip is gzip (RFC 9110,
    8.4.1.3)."""
    encoding = request.headers.get("content-encoding", "").strip().lower() or "identity"
    return "gzip" if encoding == "x-gzip" else encoding


async def read_body(
    request: Request, limit: int, timeout_seconds: float, memory: Reservation
) -> bytes:
    """The body, gunzipped when sent with Content-Encoding: gzip.

    Raises BodyTooLarge past ``limit`` bytes (before or after gunzip), decided before the
    whole body is read; ApiError 408 when it does not arrive within ``timeout_seconds``.
    Its bytes are taken from ``memory`` (the declared length before any is read, else as
    they arrive), which raises ApiError 413 or 429 when the gateway's budget cannot hold them.
    """
    header = request.headers.get("content-length", "")
    declared = int(header) if header.isdigit() else None
    if declared is not None and declared > limit:
        raise BodyTooLarge

    try:
        async with asyncio.timeout(timeout_seconds):
            if declared is not None:
                await _take_or_discard(request, memory, declared)
            body = await _read_stream(request, limit, None if declared is not None else memory)
    except TimeoutError:
        raise ApiError(408, "body_timeout", "the body did not arrive in time") from None

    if _encoding(request) != "gzip":
        return body
    if len(body) <= _GUNZIP_ON_LOOP_BYTES:
        return _gunzip(body, limit, memory)
    # Inflating megabytes takes a while: off the event loop, so that other requests and the
    # probes are answered meanwhile.
    return await asyncio.to_thread(_gunzip, body, limit, memory)


async def _read_stream(request: Request, limit: int, memory: Reservation | None) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if memory is not None:
            await _take_or_discard(request, memory, len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def _take_or_discard(request: Request, memory: Reservation, size: int) -> None:
    """Take ``size`` bytes from the budget; when it refuses, read the rest of the body and
    drop it before answering, so that the answer (429) reaches the sender instead of a
    reset connection, and bytes it no longer needs are not held."""
    try:
        memory.take(size)
    except ApiError:
        async for _ in request.stream():
            pass
        raise


def _gunzip(body: bytes, limit: int, memory: Reservation) -> bytes:
    """Inflate every gzip member of ``body``, never producing more than ``limit`` bytes, and
    taking what it produces from ``memory`` as it goes.

    The input is fed in chunks, so that what is left over at the end of each member is at
    most a chunk: a body of many tiny members costs time in proportion to its size.
    """
    view = memoryview(body)
    position = 0
    pending: bytes | memoryview = b""
    # Whether zlib may hold inflated bytes back, the last output having filled its step.
    held_back = False
    inflater = None
    output: list[bytes] = []
    size = members = 0
    while pending or held_back or position < len(body):
        if not pending and not held_back:
            pending = view[position : position + _GUNZIP_CHUNK]
            position += len(pending)
        inflater = inflater or zlib.decompressobj(wbits=31)
        step = min(_GUNZIP_OUTPUT_STEP, limit + 1 - size)
        try:
            inflated = inflater.decompress(pending, step)
        except zlib.error:
            raise ApiError(400, "invalid_gzip", "the body is not valid gzip") from None
        size += len(inflated)
        if size > limit:
            raise BodyTooLarge
        memory.take(len(inflated))
        output.append(inflated)

        if inflater.eof:
            members += 1
            pending, inflater, held_back = inflater.unused_data, None, False
        else:
            pending, held_back = inflater.unconsumed_tail, len(inflated) == step

    if inflater is not None:
        raise ApiError(400, "invalid_gzip", "the gzip body is truncated")
    if not members:
        raise ApiError(400, "invalid_gzip", "the gzip body is empty")
    return b"".join(output)
