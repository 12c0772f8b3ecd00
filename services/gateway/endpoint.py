"""POST /mparticle: every Firehose message mParticle sends, answered with its *_response."""

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from typing import Any

import grpc
from cachetools import TTLCache
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from protos.audience.v1 import audience_pb2
from protos.keys.v1 import keys_pb2
from services.common.validation import AUDIENCES_PER_CALL_MAX
from services.gateway import firehose, metrics
from services.gateway.body import BodyTooLarge, check_media_type, read_body
from services.gateway.errors import ApiError
from services.gateway.http_protocol import BODY_LOST
from services.gateway.memory import MemoryBudget, Reservation, parse_cost
from services.gateway.registration import FIREHOSE_VERSION, registration_body
from services.gateway.settings import GatewaySettings
from services.gateway.upstreams import Upstreams

_LOGGER = logging.getLogger(__name__)

_SUBSCRIPTION_ACTIONS = {
    "add": audience_pb2.SUBSCRIPTION_ACTION_ADD,
    "update": audience_pb2.SUBSCRIPTION_ACTION_UPDATE,
    "remove": audience_pb2.SUBSCRIPTION_ACTION_REMOVE,
}

# Without the mParticle token (when one is configured) only a registration request can
# succeed, and it is tiny: such requests get a small body limit and their own small pool.
UNAUTHENTICATED_BODY_LIMIT = 64 * 1024
UNAUTHENTICATED_IN_FLIGHT = 16
# Bodies above this are parsed in a worker thread, a few at a time, so that the event loop
# keeps taking and answering other requests meanwhile. Parsing holds the interpreter lock,
# so they still slow down while a batch of tens of megabytes is read (by about a second).
# TODO(#4): parse the largest batches in a separate process if that delay matters.
LARGE_BODY_BYTES = 256 * 1024
LARGE_BODIES_AT_ONCE = 2
# Deadline allowance for applying a membership batch, on top of the budget, per change and
# per audience it names: several times what each costs the store on a busy machine (a change
# about 3.5 µs, an audience's entry 20-26 µs when idle), so that the largest batches under the
# body cap (a million changes, or tens of thousands of new audiences) are answered 200
# rather than timing out on every retry.
APPLY_SECONDS_PER_CHANGE = 25e-6
APPLY_SECONDS_PER_AUDIENCE = 200e-6


class _Pool:
    """Counts requests in flight against a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0


class MparticleEndpoint:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams) -> None:
        self._settings = settings
        self._upstreams = upstreams
        self._token = settings.mparticle_token.get_secret_value().encode()
        self._trusted = _Pool(settings.max_in_flight)
        self._untrusted = _Pool(UNAUTHENTICATED_IN_FLIGHT)
        self._large_bodies = asyncio.Semaphore(LARGE_BODIES_AT_ONCE)
        self._memory = MemoryBudget(settings.memory_budget_bytes)
        # SHA-256 of a key -> its owner, or None for a rejected key.
        self._owners: TTLCache[bytes, keys_pb2.ValidateKeyResponse | None] | None = None
        if settings.key_cache_seconds > 0:
            self._owners = TTLCache(maxsize=10_000, ttl=settings.key_cache_seconds)

    async def __call__(self, request: Request) -> Response:
        trusted = self._has_token(request)
        pool = self._trusted if trusted else self._untrusted
        if pool.in_flight >= pool.limit:
            # Counted here; the request's own log line says 429.
            metrics.SHED.inc()
            return ApiError(
                429, "overloaded", "too many requests in flight, retry later"
            ).response()

        pool.in_flight += 1
        memory = self._memory.reservation()
        try:
            return await self._receive(request, trusted, memory)
        except ApiError as error:
            if error.code == "overloaded":
                metrics.SHED.inc()
            return error.response()
        except ClientDisconnect:
            _LOGGER.info("client went away before sending the whole body")
            return Response(status_code=400)
        except Exception:
            _LOGGER.exception("unexpected error")
            # 500 is retried by mParticle: a bug of ours must not drop data for good.
            return ApiError(500, "internal", "internal error").response()
        finally:
            memory.release()
            pool.in_flight -= 1

    async def _receive(self, request: Request, trusted: bool, memory: Reservation) -> Response:
        if request.scope.get(BODY_LOST):
            raise ApiError(
                503,
                "body_lost",
                "a request pipelined behind another asked to upgrade the connection and its "
                "body could not be read; send it again",
            )

        check_media_type(request)
        limit = self._settings.max_body_bytes if trusted else UNAUTHENTICATED_BODY_LIMIT
        try:
            body = await read_body(request, limit, self._settings.body_timeout_seconds, memory)
        except BodyTooLarge:
            if not trusted:
                raise _unauthorized() from None
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes") from None

        # What the typed decoder makes of the body, held until the answer; reading it
        # another way takes more (firehose.read_message).
        memory.take(parse_cost(body))
        message = await self._read(body, memory)

        envelope = message.envelope
        request.state.message_type = envelope.type
        if envelope.type == firehose.REGISTRATION:
            body_fields = registration_body(self._settings)
            return _reply(envelope, "module_registration_response", body_fields)
        if not trusted:
            raise _unauthorized()
        if message.subscription is None and message.membership is None:
            shown = envelope.type if len(envelope.type) <= 64 else envelope.type[:64] + "..."
            raise ApiError(400, "unsupported_type", f"type {shown!r} is not handled", "$.type")

        # The budget for the gRPC calls starts once the body is read and checked.
        request.state.deadline = time.monotonic() + self._settings.request_timeout_seconds
        if message.subscription is not None:
            return await self._subscription(request, envelope, message.subscription)
        assert message.membership is not None and message.batch is not None
        return await self._membership(request, envelope, message.membership, message.batch)

    async def _read(self, body: bytes, memory: Reservation) -> firehose.Message:
        if len(body) <= LARGE_BODY_BYTES:
            return firehose.read_message(body, memory)
        async with self._large_bodies:
            return await asyncio.to_thread(firehose.read_message, body, memory)

    async def _subscription(
        self, request: Request, envelope: firehose.Envelope, message: firehose.SubscriptionRequest
    ) -> Response:
        if message.action != "remove" and not message.audience_name:
            raise ApiError(
                400,
                "invalid_field",
                "audience_name: required to add or update an audience",
                "$.audience_name",
            )

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
        self,
        request: Request,
        envelope: firehose.Envelope,
        message: firehose.MembershipRequest,
        batch: firehose.MembershipBatch,
    ) -> Response:
        owner = await self._authenticate(request, message.account)
        if owner is None:
            metrics.KEYS_REJECTED.labels(firehose.MEMBERSHIP).inc()
            # A broken configuration, not a passing fault: mParticle stops sending until the
            # customer fixes the key and resumes the connection.
            _LOGGER.info("membership change with an invalid key; asking to suspend")
            suspend = {"suspend_subscription": True}
            return _reply(envelope, "audience_membership_change_response", suspend)
        request.state.account = owner.account_id

        if batch.skipped_profiles or batch.skipped_entries:
            _report_skipped(batch)
            if not batch.entries:
                raise ApiError(
                    422,
                    "nothing_valid",
                    f"no audience entry of the message could be read ({batch.skipped_profiles}"
                    f" profiles and {batch.skipped_entries} entries skipped as invalid)",
                    batch.first_problem,
                )

        # One call in the usual case; a batch naming many audiences in several, one after the
        # other (were one to fail, the answer is a retried error, and delivering the batch
        # again changes nothing that was stored).
        for changes in _membership_requests(owner, batch, envelope.timestamp_ms or 0):
            adds = sum(len(entry.add_mpids) for entry in changes.audiences)
            deletes = sum(len(entry.delete_mpids) for entry in changes.audiences)
            allowance = (adds + deletes) * APPLY_SECONDS_PER_CHANGE + len(
                changes.audiences
            ) * APPLY_SECONDS_PER_AUDIENCE
            await self._call(
                request,
                "audience",
                self._upstreams.audience.ApplyMembershipChanges,
                changes,
                allowance,
            )
            metrics.MEMBERSHIP_CHANGES.labels("add").inc(adds)
            metrics.MEMBERSHIP_CHANGES.labels("delete").inc(deletes)

        suspend = {"suspend_subscription": False}
        return _reply(envelope, "audience_membership_change_response", suspend)

    async def _authenticate(
        self, request: Request, account: firehose.Account
    ) -> keys_pb2.ValidateKeyResponse | None:
        """The key's owner, or None when the key is missing, unknown or revoked. Answers are
        reused for GATEWAY_KEY_CACHE_SECONDS; failures to ask are not."""
        plaintext = account.account_settings.get(self._settings.api_key_setting, "").strip()
        if not plaintext:
            return None

        digest = hashlib.sha256(plaintext.encode()).digest()
        if self._owners is not None and digest in self._owners:
            return self._owners[digest]

        try:
            owner = await self._upstreams.keys.ValidateKey(
                keys_pb2.ValidateKeyRequest(plaintext=plaintext), timeout=_time_left(request)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                metrics.UPSTREAM_ERRORS.labels("keys", error.code().name).inc()
                raise ApiError.from_grpc(error, "keys") from None
            owner = None

        if self._owners is not None:
            self._owners[digest] = owner
        return owner

    async def _call(
        self, request: Request, upstream: str, method: Any, message: Any, allowance: float = 0.0
    ) -> Any:
        try:
            return await method(message, timeout=_time_left(request) + allowance)
        except grpc.aio.AioRpcError as error:
            metrics.UPSTREAM_ERRORS.labels(upstream, error.code().name).inc()
            _LOGGER.warning(
                "upstream call failed", extra={"upstream": upstream, "code": error.code().name}
            )
            raise ApiError.from_grpc(error, upstream) from None

    def _has_token(self, request: Request) -> bool:
        """Whether the request carries the mParticle token (always true when none is set)."""
        if not self._token:
            return True
        parts = request.headers.get("authorization", "").split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "token":
            return False
        return hmac.compare_digest(parts[1].strip().encode(), self._token)


def _unauthorized() -> ApiError:
    return ApiError(401, "unauthorized", "missing or wrong Authorization: Token header")


def _report_skipped(batch: firehose.MembershipBatch) -> None:
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


def _time_left(request: Request) -> float:
    """Seconds left of the request's budget: the deadline of its next gRPC call."""
    return max(request.state.deadline - time.monotonic(), 0.001)


def _membership_requests(
    owner: keys_pb2.ValidateKeyResponse, batch: firehose.MembershipBatch, timestamp_ms: int
) -> list[audience_pb2.ApplyMembershipChangesRequest]:
    """The batch as calls of at most AUDIENCES_PER_CALL_MAX audiences each."""
    requests: list[audience_pb2.ApplyMembershipChangesRequest] = []
    for n, (audience_id, latest) in enumerate(batch.latest.items()):
        if n % AUDIENCES_PER_CALL_MAX == 0:
            requests.append(
                audience_pb2.ApplyMembershipChangesRequest(
                    account_id=owner.account_id,
                    connector_id=owner.connector_id,
                    timestamp_ms=timestamp_ms,
                )
            )
        entry = requests[-1].audiences.add(
            audience_id=audience_id, audience_name=batch.names.get(audience_id, "")
        )
        entry.add_mpids.extend(mpid for mpid, added in latest.items() if added)
        entry.delete_mpids.extend(mpid for mpid, added in latest.items() if not added)
    return requests


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
