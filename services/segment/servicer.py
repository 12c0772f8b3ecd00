import logging
from collections import defaultdict

import grpc

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from protos.segment.v1 import segment_pb2, segment_pb2_grpc
from services.common.rpc import abort
from services.common.validation import PAGE_SIZE_MAX, require_id
from services.segment.store import ConnectorRecord, ConnectorStore, NameTaken

_LOGGER = logging.getLogger(__name__)

# Codes of the audience service that a retry may get past; any other is a fault of ours.
_PASSING_FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

MAX_NAME_LENGTH = 200


class SegmentServicer(segment_pb2_grpc.SegmentServiceServicer):
    def __init__(
        self,
        store: ConnectorStore,
        audiences: audience_pb2_grpc.AudienceServiceStub,
        call_timeout_seconds: float,
    ) -> None:
        self._store = store
        self._audiences = audiences
        self._timeout = call_timeout_seconds

    async def CreateConnector(
        self, request: segment_pb2.CreateConnectorRequest, context: grpc.aio.ServicerContext
    ) -> segment_pb2.CreateConnectorResponse:
        await require_id(context, "account_id", request.account_id)
        name = request.name.strip()
        if not 0 < len(name) <= MAX_NAME_LENGTH:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"name must be 1 to {MAX_NAME_LENGTH} characters",
            )

        try:
            record = await self._store.create(request.account_id, name)
        except NameTaken:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, "the account has a connector of that name"
            )
        return segment_pb2.CreateConnectorResponse(connector=_to_proto(record))

    async def ListConnectors(
        self, request: segment_pb2.ListConnectorsRequest, context: grpc.aio.ServicerContext
    ) -> segment_pb2.ListConnectorsResponse:
        await require_id(context, "account_id", request.account_id)

        records = await self._store.list(request.account_id)
        return segment_pb2.ListConnectorsResponse(connectors=[_to_proto(r) for r in records])

    async def GetConnector(
        self, request: segment_pb2.GetConnectorRequest, context: grpc.aio.ServicerContext
    ) -> segment_pb2.GetConnectorResponse:
        await require_id(context, "account_id", request.account_id)
        await require_id(context, "connector_id", request.connector_id)

        record = await self._store.get(request.account_id, request.connector_id)
        if record is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "the account has no such connector")
        return segment_pb2.GetConnectorResponse(connector=_to_proto(record))

    async def DeleteConnector(
        self, request: segment_pb2.DeleteConnectorRequest, context: grpc.aio.ServicerContext
    ) -> segment_pb2.DeleteConnectorResponse:
        await require_id(context, "account_id", request.account_id)
        await require_id(context, "connector_id", request.connector_id)

        if not await self._store.delete(request.account_id, request.connector_id):
            await abort(context, grpc.StatusCode.NOT_FOUND, "the account has no such connector")
        return segment_pb2.DeleteConnectorResponse()

    async def ListSegments(
        self, request: segment_pb2.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> segment_pb2.ListSegmentsResponse:
        await require_id(context, "account_id", request.account_id)

        connectors = await self._store.list(request.account_id)
        try:
            audiences = await self._non_empty_audiences(request.account_id)
        except grpc.aio.AioRpcError as exc:
            _LOGGER.warning("audience service call failed", extra={"code": exc.code().name})
            if exc.code() in _PASSING_FAULTS:
                await abort(context, grpc.StatusCode.UNAVAILABLE, "audience service unavailable")
            await abort(context, grpc.StatusCode.INTERNAL, "the audience list could not be read")

        by_connector: dict[str, list[segment_pb2.Segment]] = defaultdict(list)
        for audience in audiences:
            segment = segment_pb2.Segment(
                audience_id=audience.audience_id,
                name=audience.name,
                member_count=audience.member_count,
                updated_at_ms=audience.updated_at_ms,
            )
            for connector_id in audience.connector_ids:
                by_connector[connector_id].append(segment)
        for segments in by_connector.values():
            segments.sort(key=lambda s: (s.name, s.audience_id))

        return segment_pb2.ListSegmentsResponse(
            connectors=[
                segment_pb2.ConnectorSegments(
                    connector=_to_proto(c), segments=by_connector[c.connector_id]
                )
                for c in connectors
            ]
        )

    async def _non_empty_audiences(self, account_id: str) -> list[audience_pb2.Audience]:
        """The account's audiences with members, each once (as its last page showed it), page
        by page: every call has the deadline of one."""
        found: dict[int, audience_pb2.Audience] = {}
        token = ""
        while True:
            page = await self._audiences.ListAudiences(
                audience_pb2.ListAudiencesRequest(
                    account_id=account_id,
                    without_settings=True,
                    # The largest pages: few calls, each still short.
                    page_size=PAGE_SIZE_MAX,
                    page_token=token,
                ),
                timeout=self._timeout,
            )
            found.update((a.audience_id, a) for a in page.audiences)
            token = page.next_page_token
            if not token:
                return [a for a in found.values() if a.member_count > 0]


def _to_proto(record: ConnectorRecord) -> segment_pb2.Connector:
    return segment_pb2.Connector(
        connector_id=record.connector_id,
        account_id=record.account_id,
        name=record.name,
        created_at_ms=record.created_at_ms,
    )
