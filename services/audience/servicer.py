import grpc
from prometheus_client import Counter

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from services.audience.store import (
    MAX_CLOCK_SKEW_MS,
    AudienceRecord,
    AudienceStore,
    BadPageToken,
    Changes,
    now_ms,
)
from services.common.rpc import abort
from services.common.validation import (
    AUDIENCES_PER_CALL_MAX,
    require_audience_id,
    require_id,
    require_page_size,
)

MAX_NAME_LENGTH = 1024
DEFAULT_PAGE_SIZE = 1000

_Action = audience_pb2.SubscriptionAction

MEMBERSHIPS_ADDED = Counter(
    "audience_memberships_added_total", "Memberships created, by account.", ["account"]
)
MEMBERSHIPS_REMOVED = Counter(
    "audience_memberships_removed_total", "Memberships deleted, by account.", ["account"]
)
CHANGES_STALE = Counter(
    "audience_changes_stale_total",
    "Membership changes ignored because a newer change was applied first, by account.",
    ["account"],
)


class AudienceServicer(audience_pb2_grpc.AudienceServiceServicer):
    def __init__(self, store: AudienceStore) -> None:
        self._store = store

    async def ApplySubscription(
        self, request: audience_pb2.ApplySubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> audience_pb2.ApplySubscriptionResponse:
        await require_id(context, "account_id", request.account_id)
        await require_id(context, "connector_id", request.connector_id)
        await require_audience_id(context, request.audience_id)

        source_time = await _source_time(context, request.timestamp_ms)
        if request.action == _Action.SUBSCRIPTION_ACTION_REMOVE:
            applied = await self._store.unsubscribe(
                request.account_id, request.audience_id, source_time
            )
            return audience_pb2.ApplySubscriptionResponse(stale=not applied)

        if request.action not in (
            _Action.SUBSCRIPTION_ACTION_ADD,
            _Action.SUBSCRIPTION_ACTION_UPDATE,
        ):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "action must be set")
        if not 0 < len(request.audience_name) <= MAX_NAME_LENGTH:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"audience_name must be 1 to {MAX_NAME_LENGTH} characters",
            )

        record, applied = await self._store.subscribe(
            request.account_id,
            request.connector_id,
            request.audience_id,
            request.audience_name,
            request.audience_description,
            dict(request.settings),
            source_time,
        )
        return audience_pb2.ApplySubscriptionResponse(
            audience=_to_proto(record) if record else None, stale=not applied
        )

    async def ApplyMembershipChanges(
        self,
        request: audience_pb2.ApplyMembershipChangesRequest,
        context: grpc.aio.ServicerContext,
    ) -> audience_pb2.ApplyMembershipChangesResponse:
        await require_id(context, "account_id", request.account_id)
        await require_id(context, "connector_id", request.connector_id)
        if len(request.audiences) > AUDIENCES_PER_CALL_MAX:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {AUDIENCES_PER_CALL_MAX} audiences a call; send more in several",
            )

        changes: Changes = []
        seen_audiences: set[int] = set()
        for entry in request.audiences:
            await require_audience_id(context, entry.audience_id)
            problem = _entry_problem(entry, seen_audiences)
            if problem:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
            seen_audiences.add(entry.audience_id)
            changes.append(
                (entry.audience_id, entry.audience_name, entry.add_mpids, entry.delete_mpids)
            )

        total = sum(len(e.add_mpids) + len(e.delete_mpids) for e in request.audiences)
        if not total:
            return audience_pb2.ApplyMembershipChangesResponse()

        source_time = await _source_time(context, request.timestamp_ms)
        result = await self._store.apply_changes(
            request.account_id, request.connector_id, changes, source_time
        )
        MEMBERSHIPS_ADDED.labels(request.account_id).inc(result.added)
        MEMBERSHIPS_REMOVED.labels(request.account_id).inc(result.removed)
        CHANGES_STALE.labels(request.account_id).inc(result.stale)
        return audience_pb2.ApplyMembershipChangesResponse(
            added=result.added,
            removed=result.removed,
            stale=result.stale,
            unchanged=total - result.added - result.removed - result.stale,
        )

    async def GetUserAudiences(
        self, request: audience_pb2.GetUserAudiencesRequest, context: grpc.aio.ServicerContext
    ) -> audience_pb2.GetUserAudiencesResponse:
        await require_id(context, "account_id", request.account_id)

        audience_ids = await self._store.user_audiences(request.account_id, request.mpid)
        return audience_pb2.GetUserAudiencesResponse(audience_ids=audience_ids)

    async def CheckMembership(
        self, request: audience_pb2.CheckMembershipRequest, context: grpc.aio.ServicerContext
    ) -> audience_pb2.CheckMembershipResponse:
        await require_id(context, "account_id", request.account_id)
        await require_audience_id(context, request.audience_id)

        member = await self._store.is_member(request.account_id, request.audience_id, request.mpid)
        return audience_pb2.CheckMembershipResponse(member=member)

    async def CountMembers(
        self, request: audience_pb2.CountMembersRequest, context: grpc.aio.ServicerContext
    ) -> audience_pb2.CountMembersResponse:
        await require_id(context, "account_id", request.account_id)
        await require_audience_id(context, request.audience_id)

        record = await self._store.get(request.account_id, request.audience_id)
        if record is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such audience")
        return audience_pb2.CountMembersResponse(member_count=record.member_count)

    async def ListMembers(
        self, request: audience_pb2.ListMembersRequest, context: grpc.aio.ServicerContext
    ) -> audience_pb2.ListMembersResponse:
        await require_id(context, "account_id", request.account_id)
        await require_audience_id(context, request.audience_id)
        await require_page_size(context, request.page_size)

        try:
            page = await self._store.members_page(
                request.account_id,
                request.audience_id,
                request.page_size or DEFAULT_PAGE_SIZE,
                request.page_token,
            )
        except BadPageToken as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if page is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "no such audience")

        return audience_pb2.ListMembersResponse(
            mpids=page.mpids, next_page_token=page.next_page_token
        )

    async def ListAudiences(
        self, request: audience_pb2.ListAudiencesRequest, context: grpc.aio.ServicerContext
    ) -> audience_pb2.ListAudiencesResponse:
        await require_id(context, "account_id", request.account_id)

        await require_page_size(context, request.page_size)

        try:
            page = await self._store.audiences_page(
                request.account_id, request.page_size or DEFAULT_PAGE_SIZE, request.page_token
            )
        except BadPageToken as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        settings = not request.without_settings
        return audience_pb2.ListAudiencesResponse(
            audiences=[_to_proto(r, with_settings=settings) for r in page.audiences],
            next_page_token=page.next_page_token,
        )


async def _source_time(context: grpc.aio.ServicerContext, timestamp_ms: int) -> int:
    """The change's source time; one further ahead of our clock than MAX_CLOCK_SKEW_MS is
    taken as "now", so that a sender's fast clock cannot make its changes win for ever."""
    if timestamp_ms < 0:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "timestamp_ms must not be negative")
    now = now_ms()
    if not timestamp_ms or timestamp_ms > now + MAX_CLOCK_SKEW_MS:
        return now
    return timestamp_ms


def _entry_problem(entry: audience_pb2.AudienceChanges, seen_audiences: set[int]) -> str:
    """Why an AudienceChanges entry breaks the request's contract, or ''."""
    if entry.audience_id in seen_audiences:
        return f"audience {entry.audience_id} appears twice"
    if len(entry.audience_name) > MAX_NAME_LENGTH:
        return f"audience_name must be at most {MAX_NAME_LENGTH} characters"

    mentioned = len(entry.add_mpids) + len(entry.delete_mpids)
    if len(set(entry.add_mpids).union(entry.delete_mpids)) != mentioned:
        return f"an MPID appears twice for audience {entry.audience_id}"
    return ""


def _to_proto(record: AudienceRecord, *, with_settings: bool = True) -> audience_pb2.Audience:
    return audience_pb2.Audience(
        audience_id=record.audience_id,
        name=record.name,
        description=record.description,
        connector_id=record.connector_id,
        connector_ids=record.connector_ids,
        subscribed=record.subscribed,
        member_count=record.member_count,
        created_at_ms=record.created_at_ms,
        updated_at_ms=record.updated_at_ms,
        settings=record.settings if with_settings else {},
    )
