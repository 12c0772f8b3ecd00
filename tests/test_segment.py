"""The segment service over real gRPC: connectors, and the list built from the audience
service's data."""

from typing import Any

import grpc
import pytest

from protos.audience.v1 import audience_pb2
from protos.segment.v1 import segment_pb2


def create(segment_stub: Any, name: str, account: str = "acme") -> Any:
    request = segment_pb2.CreateConnectorRequest(account_id=account, name=name)
    return segment_stub.CreateConnector(request).connector


def add_members(
    audience_stub: Any, connector_id: str, audience_id: int, name: str, mpids: list[int]
) -> None:
    audience_stub.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id=connector_id,
            audiences=[
                audience_pb2.AudienceChanges(
                    audience_id=audience_id, audience_name=name, add_mpids=mpids
                )
            ],
        )
    )


def test_connector_names_are_unique_per_account(segment_stub: Any) -> None:
    create(segment_stub, "Web")
    create(segment_stub, "Web", account="globex")

    with pytest.raises(grpc.RpcError) as caught:
        create(segment_stub, "Web")

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_connector_names_are_checked(segment_stub: Any, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        create(segment_stub, name)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_connectors_list_get_and_delete(segment_stub: Any) -> None:
    web = create(segment_stub, "Web")
    app = create(segment_stub, "App")

    listed = segment_stub.ListConnectors(segment_pb2.ListConnectorsRequest(account_id="acme"))
    got = segment_stub.GetConnector(
        segment_pb2.GetConnectorRequest(account_id="acme", connector_id=web.connector_id)
    )
    segment_stub.DeleteConnector(
        segment_pb2.DeleteConnectorRequest(account_id="acme", connector_id=web.connector_id)
    )

    assert [c.name for c in listed.connectors] == ["App", "Web"]
    assert got.connector == web
    with pytest.raises(grpc.RpcError) as caught:
        segment_stub.DeleteConnector(
            segment_pb2.DeleteConnectorRequest(account_id="acme", connector_id=web.connector_id)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    after = segment_stub.ListConnectors(segment_pb2.ListConnectorsRequest(account_id="acme"))
    assert [c.connector_id for c in after.connectors] == [app.connector_id]
    # The name is free again.
    create(segment_stub, "Web")


@pytest.mark.parametrize("connector_id", ["", "a b", "a}b{", "x" * 65])
@pytest.mark.parametrize("rpc", ["GetConnector", "DeleteConnector"])
def test_malformed_connector_ids_are_invalid(
    segment_stub: Any, rpc: str, connector_id: str
) -> None:
    request = getattr(segment_pb2, f"{rpc}Request")(account_id="acme", connector_id=connector_id)

    with pytest.raises(grpc.RpcError) as caught:
        getattr(segment_stub, rpc)(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_segments_list_whatever_the_size_of_the_audiences_settings(
    segment_stub: Any, audience_stub: Any
) -> None:
    """The largest settings the gateway takes (100 of 4096 characters), on audiences whose
    whole listing is over the 64 MiB a gRPC answer may hold: the segment list has no need
    of them, and leaves them out."""
    web = create(segment_stub, "Web")
    # 4-byte characters: 3.3 MB of settings an audience, 75 MB for the 23.
    settings = {f"{i:04}" + "\U0001f600" * 4092: "\U0001f600" * 4096 for i in range(100)}
    for audience_id in range(1, 24):
        audience_stub.ApplySubscription(
            audience_pb2.ApplySubscriptionRequest(
                account_id="acme",
                connector_id=web.connector_id,
                action=audience_pb2.SUBSCRIPTION_ACTION_ADD,
                audience_id=audience_id,
                audience_name=f"A{audience_id}",
                settings=settings,
            ),
            timeout=30,
        )
        add_members(audience_stub, web.connector_id, audience_id, f"A{audience_id}", [7])

    reply = segment_stub.ListSegments(
        segment_pb2.ListSegmentsRequest(account_id="acme"), timeout=30
    )

    [listed] = reply.connectors
    assert sorted(s.audience_id for s in listed.segments) == list(range(1, 24))


def test_segments_group_non_empty_audiences_by_connector(
    segment_stub: Any, audience_stub: Any
) -> None:
    web = create(segment_stub, "Web")
    app = create(segment_stub, "App")
    add_members(audience_stub, web.connector_id, 1, "Buyers", [1, 2])
    add_members(audience_stub, web.connector_id, 2, "Abandoners", [3])
    add_members(audience_stub, app.connector_id, 3, "Installers", [4])
    add_members(audience_stub, web.connector_id, 4, "Empty", [])
    audience_stub.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id=web.connector_id,
            audiences=[
                audience_pb2.AudienceChanges(audience_id=5, audience_name="Gone", add_mpids=[9])
            ],
        )
    )
    audience_stub.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id=web.connector_id,
            audiences=[audience_pb2.AudienceChanges(audience_id=5, delete_mpids=[9])],
        )
    )

    reply = segment_stub.ListSegments(segment_pb2.ListSegmentsRequest(account_id="acme"))

    listing = [
        (c.connector.name, [(s.audience_id, s.name, s.member_count) for s in c.segments])
        for c in reply.connectors
    ]
    assert listing == [
        ("App", [(3, "Installers", 1)]),
        ("Web", [(2, "Abandoners", 1), (1, "Buyers", 2)]),
    ]
    assert all(s.updated_at_ms > 0 for c in reply.connectors for s in c.segments)
