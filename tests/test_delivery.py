"""Delivery through the real gateway: repeats change nothing, and an older change that
arrives after a newer one does not undo it."""

import itertools
import random
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protos.audience.v1 import audience_pb2
from protos.keys.v1 import keys_pb2
from tests.conftest import Tenant, fixture_json

_accounts = itertools.count()


def membership_message(
    api_key: str, timestamp_ms: int, changes: list[tuple[int, int, str]]
) -> dict[str, Any]:
    body = fixture_json("06_membership_change_mpid_only.json", api_key)
    body["timestamp_ms"] = timestamp_ms
    body["user_profiles"] = [
        {
            "mpid": str(mpid),
            "audiences": [
                {"audience_id": audience, "audience_name": f"A{audience}", "action": action}
            ],
        }
        for audience, mpid, action in changes
    ]
    return body


def subscription_message(api_key: str, timestamp_ms: int, action: str, name: str) -> dict:
    body = fixture_json("02_audience_subscription_add.json", api_key)
    body.update(timestamp_ms=timestamp_ms, action=action, audience_name=name, audience_id=1)
    return body


def is_member(stub: Any, account: str, audience: int, mpid: int) -> bool:
    request = audience_pb2.CheckMembershipRequest(
        account_id=account, audience_id=audience, mpid=mpid
    )
    return stub.CheckMembership(request).member


def post(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    response = http.post("/mparticle", json=body)
    assert response.status_code == 200, response.text
    return response


def test_the_same_request_three_times_leaves_the_state_of_once(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = fixture_json("05_membership_change_multi_user.json", tenant.api_key)

    for _ in range(3):
        post(http, body)

    listed = audience_stub.ListAudiences(audience_pb2.ListAudiencesRequest(account_id="acme"))
    assert {a.audience_id: a.member_count for a in listed.audiences} == {
        90211: 2,
        90317: 0,
        90318: 1,
    }


def test_an_older_delete_does_not_undo_a_newer_add(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    post(http, membership_message(tenant.api_key, 2_000, [(1, 7, "add")]))
    post(http, membership_message(tenant.api_key, 1_000, [(1, 7, "delete")]))

    assert is_member(audience_stub, "acme", 1, 7)


def test_an_older_add_does_not_undo_a_newer_delete(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    post(http, membership_message(tenant.api_key, 1_000, [(1, 7, "add")]))
    post(http, membership_message(tenant.api_key, 3_000, [(1, 7, "delete")]))
    post(http, membership_message(tenant.api_key, 2_000, [(1, 7, "add")]))

    assert not is_member(audience_stub, "acme", 1, 7)


def test_changes_older_than_a_removal_do_not_bring_the_audience_back(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    post(http, subscription_message(tenant.api_key, 1_000, "add", "One"))
    post(http, membership_message(tenant.api_key, 1_500, [(1, 7, "add")]))
    post(http, subscription_message(tenant.api_key, 3_000, "remove", "One"))

    post(http, membership_message(tenant.api_key, 2_000, [(1, 8, "add")]))
    post(http, subscription_message(tenant.api_key, 2_500, "update", "One, renamed late"))

    listed = audience_stub.ListAudiences(audience_pb2.ListAudiencesRequest(account_id="acme"))
    assert list(listed.audiences) == []
    assert not is_member(audience_stub, "acme", 1, 8)


def test_a_newer_subscription_wins_over_an_older_one(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    post(http, subscription_message(tenant.api_key, 2_000, "update", "Newer name"))
    post(http, subscription_message(tenant.api_key, 1_000, "update", "Older name"))
    post(http, subscription_message(tenant.api_key, 1_500, "remove", "Older name"))

    [audience] = audience_stub.ListAudiences(
        audience_pb2.ListAudiencesRequest(account_id="acme")
    ).audiences
    assert audience.name == "Newer name"


def test_a_newer_add_after_a_removal_brings_the_audience_back(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    post(http, subscription_message(tenant.api_key, 1_000, "add", "One"))
    post(http, subscription_message(tenant.api_key, 2_000, "remove", "One"))
    post(http, subscription_message(tenant.api_key, 3_000, "add", "One again"))
    post(http, membership_message(tenant.api_key, 3_500, [(1, 9, "add")]))

    assert is_member(audience_stub, "acme", 1, 9)


def test_changes_older_than_a_removal_stay_undone_after_the_audience_is_added_again(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    post(http, subscription_message(tenant.api_key, 1_000, "add", "One"))
    post(http, membership_message(tenant.api_key, 2_000, [(1, 7, "add"), (1, 8, "add")]))
    post(http, membership_message(tenant.api_key, 2_500, [(1, 7, "delete")]))
    post(http, subscription_message(tenant.api_key, 3_000, "remove", "One"))
    post(http, subscription_message(tenant.api_key, 5_000, "add", "One again"))
    post(http, membership_message(tenant.api_key, 5_500, [(1, 9, "add")]))

    # The first batch, delivered again late: the removal undid it.
    post(http, membership_message(tenant.api_key, 2_000, [(1, 7, "add"), (1, 8, "add")]))

    assert not is_member(audience_stub, "acme", 1, 7)
    assert not is_member(audience_stub, "acme", 1, 8)
    assert is_member(audience_stub, "acme", 1, 9)
    [audience] = audience_stub.ListAudiences(
        audience_pb2.ListAudiencesRequest(account_id="acme")
    ).audiences
    assert (audience.name, audience.member_count) == ("One again", 1)


EVENT = st.tuples(
    st.sampled_from([1, 2]),
    st.sampled_from([-(2**63), -1, 2**63 - 1]),
    st.sampled_from(["add", "delete"]),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=st.lists(EVENT, min_size=1, max_size=12),
    copies=st.lists(st.integers(1, 3), min_size=12, max_size=12),
    seed=st.integers(0, 2**32),
)
def test_any_delivery_order_with_repeats_ends_in_the_newest_state(
    http: httpx.Client,
    keys_stub: Any,
    audience_stub: Any,
    events: list[tuple[int, int, str]],
    copies: list[int],
    seed: int,
) -> None:
    account = f"prop{next(_accounts)}"
    api_key = keys_stub.CreateKey(
        keys_pb2.CreateKeyRequest(account_id=account, connector_id="con_p")
    ).plaintext
    timed = [(1_000 + 10 * i, event) for i, event in enumerate(events)]
    deliveries = [item for item, n in zip(timed, copies, strict=False) for _ in range(n)]
    random.Random(seed).shuffle(deliveries)

    for timestamp, change in deliveries:
        post(http, membership_message(api_key, timestamp, [change]))

    newest: dict[tuple[int, int], str] = {}
    for _, (audience, mpid, action) in sorted(timed):
        newest[(audience, mpid)] = action
    for (audience, mpid), action in newest.items():
        assert is_member(audience_stub, account, audience, mpid) is (action == "add")
    for audience in (1, 2):
        expected = sum(1 for (a, _), act in newest.items() if a == audience and act == "add")
        listed = audience_stub.ListAudiences(audience_pb2.ListAudiencesRequest(account_id=account))
        counts = {a.audience_id: a.member_count for a in listed.audiences}
        assert counts.get(audience, 0) == expected
