"""The gateway's Starlette application.

``POST /mparticle`` takes every Firehose message mParticle sends and answers the matching
``*_response``; ``GET /healthz`` says the process is alive; ``GET /readyz`` says whether the
gRPC services it needs are serving.
"""

import hmac
import logging
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import prometheus_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from services.common import grpc_client, logs
from services.common.interceptors import REQUEST_ID_HEADER
from services.gateway import firehose, metrics
from services.gateway.errors import ApiError
from services.gateway.registration import FIREHOSE_VERSION, registration_body
from services.gateway.settings import GatewaySettings

_LOGGER = logging.getLogger(__name__)

_SUBSCRIPTION_ACTIONS = {
    "add": audience_pb2.SUBSCRIPTION_ACTION_ADD,
    "update": audience_pb2.SUBSCRIPTION_ACTION_UPDATE,
    "remove": audience_pb2.SUBSCRIPTION_ACTION_REMOVE,
}


class Upstreams:
    """Channels and stubs of the gRPC services the gateway calls."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._channels = {
            "keys": grpc_client.channel(settings.keys_target),
            "audience": grpc_client.channel(settings.audience_target),
        }
        self.keys = keys_pb2_grpc.KeyServiceStub(self._channels["keys"])
        self.audience = audience_pb2_grpc.AudienceServiceStub(self._channels["audience"])

    async def health(self, timeout_seconds: float) -> dict[str, bool]:
        """Whether each upstream answers its health check with SERVING."""
        result = {}
        for name, channel in self._channels.items():
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_seconds)
                result[name] = reply.status == health_pb2.HealthCheckResponse.SERVING
            except grpc.aio.AioRpcError:
                result[name] = False
        return result

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


class MparticleEndpoint:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams) -> None:
        self._settings = settings
        self._upstreams = upstreams
        self._token = settings.mparticle_token.get_secret_value().encode()
        self._in_flight = 0

    async def __call__(self, request: Request) -> Response:
        if self._in_flight >= self._settings.max_in_flight:
            metrics.SHED.inc()
            _LOGGER.warning("shedding load", extra={"in_flight": self._in_flight})
            return ApiError(
                429, "overloaded", "too many requests in flight, retry later"
            ).response()

        self._in_flight += 1
        try:
            return await self._receive(request)
        except ApiError as error:
            return error.response()
        except Exception:
            _LOGGER.exception("unexpected error")
            # 500 is retried by mParticle: a bug of ours must not drop data for good.
            return ApiError(500, "internal", "internal error").response()
        finally:
            self._in_flight -= 1

    async def _receive(self, request: Request) -> Response:
        request.state.deadline = time.monotonic() + self._settings.request_timeout_seconds
        _check_content_type(request)
        body = await _read_body(request, self._settings.max_body_bytes)
        document = firehose.parse_json(body)
        envelope = firehose.read_envelope(document)
        request.state.message_type = envelope.type

        if envelope.type == firehose.REGISTRATION:
            return _reply(
                envelope, "module_registration_response", registration_body(self._settings)
            )

        self._check_token(request)
        if envelope.type == firehose.SUBSCRIPTION:
            return await self._subscription(request, envelope, document)
        if envelope.type == firehose.MEMBERSHIP:
            return await self._membership(request, envelope, document)
        raise ApiError(400, "unsupported_type", f"type {envelope.type!r} is not handled", "$.type")

    async def _subscription(
        self, request: Request, envelope: firehose.Envelope, document: dict[str, Any]
    ) -> Response:
        message = firehose.read_subscription(document)
        owner = await self._authenticate(request, message.account)
        if owner is None:
            metrics.KEYS_REJECTED.labels(firehose.SUBSCRIPTION).inc()
            raise ApiError(
                401,
                "invalid_api_key",
                "the API key in account.account_settings is missing, unknown or revoked",
                f"$.account.account_settings.{self._settings.api_key_setting}",
            )
        request.state.account = owner.account_id

        await self._call(
            request,
            "audience",
            self._upstreams.audience.ApplySubscription,
            audience_pb2.ApplySubscriptionRequest(
                account_id=owner.account_id,
                connector_id=owner.connector_id,
                action=_SUBSCRIPTION_ACTIONS[message.action],
                audience_id=message.audience_id,
                audience_name=message.audience_name,
                audience_description=message.audience_description,
                settings=message.audience_subscription_settings or {},
                timestamp_ms=envelope.timestamp_ms or 0,
            ),
        )
        return _reply(envelope, "audience_subscription_response")

    async def _membership(
        self, request: Request, envelope: firehose.Envelope, document: dict[str, Any]
    ) -> Response:
        message, batch = firehose.read_membership(document)
        owner = await self._authenticate(request, message.account)
        if owner is None:
            metrics.KEYS_REJECTED.labels(firehose.MEMBERSHIP).inc()
            # A broken configuration, not a passing fault: mParticle stops sending until the
            # customer fixes the key and resumes the connection.
            _LOGGER.info("membership change with an invalid key; asking to suspend")
            return _reply(
                envelope, "audience_membership_change_response", {"suspend_subscription": True}
            )
        request.state.account = owner.account_id

        if batch.skipped_profiles or batch.skipped_entries:
            metrics.SKIPPED.labels("profile").inc(batch.skipped_profiles)
            metrics.SKIPPED.labels("entry").inc(batch.skipped_entries)
            _LOGGER.warning(
                "skipped invalid parts of a membership change",
                extra={
                    "skipped_profiles": batch.skipped_profiles,
                    "skipped_entries": batch.skipped_entries,
                    "first_problem": batch.first_problem,
                },
            )
            if not batch.entries:
                raise ApiError(
                    422,
                    "nothing_valid",
                    "no user profile or audience entry of the message could be read",
                    batch.first_problem,
                )

        if batch.latest:
            changes = _membership_request(owner, batch, envelope.timestamp_ms or 0)
            await self._call(
                request, "audience", self._upstreams.audience.ApplyMembershipChanges, changes
            )
            for entry in changes.audiences:
                metrics.MEMBERSHIP_CHANGES.labels("add").inc(len(entry.add_mpids))
                metrics.MEMBERSHIP_CHANGES.labels("delete").inc(len(entry.delete_mpids))
        return _reply(
            envelope, "audience_membership_change_response", {"suspend_subscription": False}
        )

    async def _authenticate(
        self, request: Request, account: firehose.Account
    ) -> keys_pb2.ValidateKeyResponse | None:
        """The key's owner, or None when the key is missing, unknown or revoked."""
        plaintext = account.account_settings.get(self._settings.api_key_setting, "")
        if not plaintext:
            return None
        try:
            return await self._upstreams.keys.ValidateKey(
                keys_pb2.ValidateKeyRequest(plaintext=plaintext), timeout=_time_left(request)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                return None
            metrics.UPSTREAM_ERRORS.labels("keys", error.code().name).inc()
            raise ApiError.from_grpc(error, "keys") from None

    async def _call(self, request: Request, upstream: str, method: Any, message: Any) -> Any:
        try:
            return await method(message, timeout=_time_left(request))
        except grpc.aio.AioRpcError as error:
            metrics.UPSTREAM_ERRORS.labels(upstream, error.code().name).inc()
            _LOGGER.warning(
                "upstream call failed", extra={"upstream": upstream, "code": error.code().name}
            )
            raise ApiError.from_grpc(error, upstream) from None

    def _check_token(self, request: Request) -> None:
        if not self._token:
            return
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "token" or not hmac.compare_digest(
            value.strip().encode(), self._token
        ):
            raise ApiError(401, "unauthorized", "missing or wrong Authorization: Token header")


def _time_left(request: Request) -> float:
    """Seconds left of the request's budget: the deadline of its next gRPC call."""
    return max(request.state.deadline - time.monotonic(), 0.001)


def _membership_request(
    owner: keys_pb2.ValidateKeyResponse, batch: firehose.MembershipBatch, timestamp_ms: int
) -> audience_pb2.ApplyMembershipChangesRequest:
    request = audience_pb2.ApplyMembershipChangesRequest(
        account_id=owner.account_id, connector_id=owner.connector_id, timestamp_ms=timestamp_ms
    )
    for audience_id, latest in batch.latest.items():
        entry = request.audiences.add(
            audience_id=audience_id, audience_name=batch.names.get(audience_id, "")
        )
        entry.add_mpids.extend(mpid for mpid, added in latest.items() if added)
        entry.delete_mpids.extend(mpid for mpid, added in latest.items() if not added)
    return request


def _reply(
    envelope: firehose.Envelope, response_type: str, fields: dict[str, Any] | None = None
) -> JSONResponse:
    body = {
        "type": response_type,
        "id": _response_id(envelope.id),
        "timestamp_ms": time.time_ns() // 1_000_000,
        "firehose_version": FIREHOSE_VERSION,
        **(fields or {}),
    }
    return JSONResponse(body)


def _response_id(request_id: str | None) -> str:
    """The request's id when it is a UUID (mParticle allows reusing it), else a new one."""
    try:
        return str(uuid.UUID(request_id or ""))
    except ValueError:
        return str(uuid.uuid4())


def _check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, gunzipped when sent with Content-Encoding: gzip; 413 past ``limit`` bytes,
    decided before the whole body is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)

    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_encoding", "Content-Encoding must be gzip or identity")

    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    return _gunzip(body, limit) if encoding == "gzip" else body


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ApiError(400, "invalid_gzip", "the body is not valid gzip") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise _too_large(limit)
    if not inflater.eof:
        raise ApiError(400, "invalid_gzip", "the gzip body is truncated")
    return inflated


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the body exceeds {limit} bytes")


class AccessLog:
    """One JSON line per request; takes or makes the request id and returns it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
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
            _LOGGER.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "message_type": message_type,
                    "account": state.get("account", ""),
                },
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
            if 0 < len(text) <= 128 and text.isprintable():
                return text
    return ""


def create_app(settings: GatewaySettings) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstreams = Upstreams(settings)
        app.state.upstreams = upstreams
        app.state.endpoint = MparticleEndpoint(settings, upstreams)
        yield
        await upstreams.close()

    async def mparticle(request: Request) -> Response:
        return await request.app.state.endpoint(request)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        upstreams = await request.app.state.upstreams.health(settings.request_timeout_seconds)
        ready = all(upstreams.values())
        body = {"status": "ready" if ready else "not ready", "upstreams": upstreams}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(prometheus_client.generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/mparticle", mparticle, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        middleware=[Middleware(AccessLog)],
        lifespan=lifespan,
    )
