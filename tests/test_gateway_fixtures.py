"""Every shared mParticle fixture, posted through the real gateway to the real services and
Redis: the exact status, the response body and the state it leaves."""

import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from protos.audience.v1 import audience_pb2
from protos.segment.v1 import segment_pb2
from tests.conftest import FIXTURES, Tenant, fixture_json

INT64_MAX = 9223372036854775807
INT64_MIN = -9223372036854775808


def post(http: httpx.Client, name: str, tenant: Tenant | None, **headers: str) -> httpx.Response:
    body = fixture_json(name, tenant.api_key if tenant else None)
    return http.post("/mparticle", json=body, headers=headers)


def assert_envelope(response: httpx.Response, request_name: str, response_type: str) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["type"] == response_type
    assert body["id"] == fixture_json(request_name)["id"]
    assert body["firehose_version"] == "3.2.0"
    assert abs(body["timestamp_ms"] - time.time() * 1000) < 60_000
    return body


def user_audiences(audience_stub: Any, tenant: Tenant, mpid: int) -> list[int]:
    request = audience_pb2.GetUserAudiencesRequest(account_id=tenant.account_id, mpid=mpid)
    return list(audience_stub.GetUserAudiences(request).audience_ids)


def all_members(audience_stub: Any, tenant: Tenant, audience_id: int) -> set[int]:
    members: set[int] = set()
    token = ""
    while True:
        page = audience_stub.ListMembers(
            audience_pb2.ListMembersRequest(
                account_id=tenant.account_id, audience_id=audience_id, page_token=token
            )
        )
        members.update(page.mpids)
        token = page.next_page_token
        if not token:
            return members


def segments(segment_stub: Any, tenant: Tenant) -> list[tuple[str, list[tuple[int, str, int]]]]:
    reply = segment_stub.ListSegments(segment_pb2.ListSegmentsRequest(account_id=tenant.account_id))
    return [
        (c.connector.name, [(s.audience_id, s.name, s.member_count) for s in c.segments])
        for c in reply.connectors
    ]


def test_every_fixture_is_covered_here() -> None:
    covered = {
        "01_module_registration_request.json",
        "02_audience_subscription_add.json",
        "03_audience_subscription_update.json",
        "04_audience_subscription_remove.json",
        "05_membership_change_multi_user.json",
        "06_membership_change_mpid_only.json",
        "07_membership_change_all_identity_types.json",
        "08_membership_change_verification_noop.json",
        "09_malformed_missing_type.json",
        "12_malformed_subscription_action_delete.json",
    }
    assert {p.name for p in FIXTURES.glob("*.json")} == covered


def test_registration_answers_without_authentication(stack: Any) -> None:
    body = fixture_json("01_module_registration_request.json")
    response = httpx.post(f"{stack.gateway_url}/mparticle", json=body)

    reply = assert_envelope(
        response, "01_module_registration_request.json", "module_registration_response"
    )
    assert reply["name"] and reply["version"] and reply["description"]
    assert len(reply["description"]) < 230
    assert reply["permissions"] == {"allow_access_mpid": True}
    [setting] = reply["audience_processing_registration"]["account_settings"]
    assert setting["id"] == "apiKey"
    assert setting["type"] == "text"
    assert setting["required"] is True
    assert setting["confidential"] is True


def test_subscription_add_creates_an_empty_audience(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, segment_stub: Any
) -> None:
    response = post(http, "02_audience_subscription_add.json", tenant)

    body = assert_envelope(
        response, "02_audience_subscription_add.json", "audience_subscription_response"
    )
    assert set(body) == {"type", "id", "timestamp_ms", "firehose_version"}
    [audience] = audience_stub.ListAudiences(
        audience_pb2.ListAudiencesRequest(account_id="acme")
    ).audiences
    assert (audience.audience_id, audience.name, audience.member_count) == (
        90211,
        "Cart Abandoners - Last 7 Days",
        0,
    )
    assert audience.subscribed
    assert audience.connector_id == tenant.connector_id
    assert segments(segment_stub, tenant) == [("Web", [])]


def test_multi_user_change_applies_adds_and_deletes(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, segment_stub: Any
) -> None:
    post(http, "02_audience_subscription_add.json", tenant)

    response = post(http, "05_membership_change_multi_user.json", tenant)

    body = assert_envelope(
        response,
        "05_membership_change_multi_user.json",
        "audience_membership_change_response",
    )
    assert body["suspend_subscription"] is False
    assert user_audiences(audience_stub, tenant, 4107729618823040185) == [90211]
    assert user_audiences(audience_stub, tenant, -6529143021980561334) == [90211, 90318]
    assert user_audiences(audience_stub, tenant, 733018846211) == []
    assert all_members(audience_stub, tenant, 90211) == {
        4107729618823040185,
        -6529143021980561334,
    }
    assert segments(segment_stub, tenant) == [
        (
            "Web",
            [
                (90211, "Cart Abandoners - Last 7 Days", 2),
                (90318, "High Value Returning Visitors", 1),
            ],
        )
    ]


def test_extreme_mpids_round_trip_exactly(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    response = post(http, "06_membership_change_mpid_only.json", tenant)

    assert_envelope(
        response, "06_membership_change_mpid_only.json", "audience_membership_change_response"
    )
    assert all_members(audience_stub, tenant, 90318) == {INT64_MAX, INT64_MIN, 2}
    for mpid, expected in ((INT64_MAX, True), (INT64_MIN, True), (2, True), (-1, False)):
        check = audience_stub.CheckMembership(
            audience_pb2.CheckMembershipRequest(account_id="acme", audience_id=90318, mpid=mpid)
        )
        assert check.member is expected, mpid
    assert user_audiences(audience_stub, tenant, INT64_MIN) == [90318]
    count = audience_stub.CountMembers(
        audience_pb2.CountMembersRequest(account_id="acme", audience_id=90318)
    )
    assert count.member_count == 3


def test_membership_without_subscription_is_kept_under_the_entry_name(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, segment_stub: Any
) -> None:
    post(http, "06_membership_change_mpid_only.json", tenant)

    [audience] = audience_stub.ListAudiences(
        audience_pb2.ListAudiencesRequest(account_id="acme")
    ).audiences
    assert audience.name == "High Value Returning Visitors"
    assert not audience.subscribed
    assert segments(segment_stub, tenant) == [
        ("Web", [(90318, "High Value Returning Visitors", 3)])
    ]


def test_all_identity_types_and_attribute_update(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    response = post(http, "07_membership_change_all_identity_types.json", tenant)

    assert_envelope(
        response,
        "07_membership_change_all_identity_types.json",
        "audience_membership_change_response",
    )
    # attribute_update changes no membership and creates no audience.
    assert user_audiences(audience_stub, tenant, -3048212769455001846) == [90318]
    listed = audience_stub.ListAudiences(audience_pb2.ListAudiencesRequest(account_id="acme"))
    assert [a.audience_id for a in listed.audiences] == [90318]


def test_verification_request_is_answered_and_stores_nothing(
    http: httpx.Client, tenant: Tenant, redis_client: redis.Redis
) -> None:
    before = sorted(redis_client.keys("*"))

    response = post(http, "08_membership_change_verification_noop.json", tenant)

    body = assert_envelope(
        response,
        "08_membership_change_verification_noop.json",
        "audience_membership_change_response",
    )
    assert body["suspend_subscription"] is False
    assert sorted(redis_client.keys("*")) == before


def test_update_renames_and_keeps_members(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, segment_stub: Any
) -> None:
    post(http, "02_audience_subscription_add.json", tenant)
    post(http, "05_membership_change_multi_user.json", tenant)

    response = post(http, "03_audience_subscription_update.json", tenant)

    assert_envelope(
        response, "03_audience_subscription_update.json", "audience_subscription_response"
    )
    listed = audience_stub.ListAudiences(audience_pb2.ListAudiencesRequest(account_id="acme"))
    audience = next(a for a in listed.audiences if a.audience_id == 90211)
    assert audience.name == "Cart Abandoners - Last 14 Days"
    assert audience.description.startswith("Visitors who left items")
    assert dict(audience.settings) == {"partnerAudienceRef": "seg-90211"}
    assert audience.member_count == 2
    assert segments(segment_stub, tenant)[0][1][0] == (90211, "Cart Abandoners - Last 14 Days", 2)


def test_remove_takes_the_audience_off_at_once_and_frees_its_members(
    http: httpx.Client,
    tenant: Tenant,
    audience_stub: Any,
    segment_stub: Any,
    redis_client: redis.Redis,
) -> None:
    post(http, "02_audience_subscription_add.json", tenant)
    post(http, "05_membership_change_multi_user.json", tenant)

    response = post(http, "04_audience_subscription_remove.json", tenant)

    assert_envelope(
        response, "04_audience_subscription_remove.json", "audience_subscription_response"
    )
    assert user_audiences(audience_stub, tenant, 4107729618823040185) == []
    assert user_audiences(audience_stub, tenant, -6529143021980561334) == [90318]
    assert segments(segment_stub, tenant) == [
        ("Web", [(90318, "High Value Returning Visitors", 1)])
    ]
    deadline = time.monotonic() + 10
    while redis_client.llen("au:gc:{acme}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert redis_client.llen("au:gc:{acme}") == 0
    # Only 90318's single member set is left, and only its member has a reverse set.
    assert len(redis_client.keys("au:mem:*")) == 1
    assert redis_client.keys("au:usr:*") == [b"au:usr:{acme}:-6529143021980561334"]


def test_missing_type_is_refused(
    http: httpx.Client, tenant: Tenant, redis_client: redis.Redis
) -> None:
    before = sorted(redis_client.keys("*"))

    response = post(http, "09_malformed_missing_type.json", tenant)

    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "missing_type", "message": "the message has no type", "path": "$.type"}
    }
    assert sorted(redis_client.keys("*")) == before


def test_subscription_action_delete_is_refused(
    http: httpx.Client, tenant: Tenant, redis_client: redis.Redis
) -> None:
    before = sorted(redis_client.keys("*"))

    response = post(http, "12_malformed_subscription_action_delete.json", tenant)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_field"
    assert error["path"] == "$.action"
    assert "add" in error["message"] and "remove" in error["message"]
    assert sorted(redis_client.keys("*")) == before


@pytest.mark.usefixtures("tenant")
def test_unknown_key_on_subscription_is_401(http: httpx.Client) -> None:
    response = post(http, "02_audience_subscription_add.json", None)

    assert response.status_code == 401
    assert response.json()["error"]["path"] == "$.account.account_settings.apiKey"


@pytest.mark.parametrize(
    "fixture",
    ["05_membership_change_multi_user.json", "08_membership_change_verification_noop.json"],
)
def test_unknown_key_on_membership_asks_to_suspend(
    http: httpx.Client, redis_client: redis.Redis, fixture: str
) -> None:
    response = post(http, fixture, None)

    body = assert_envelope(response, fixture, "audience_membership_change_response")
    assert body["suspend_subscription"] is True
    assert redis_client.keys("au:*") == []


def test_missing_mparticle_token_is_401(stack: Any, tenant: Tenant) -> None:
    body = fixture_json("02_audience_subscription_add.json", tenant.api_key)
    for headers in ({}, {"Authorization": "Token wrong"}, {"Authorization": "Bearer x"}):
        response = httpx.post(f"{stack.gateway_url}/mparticle", json=body, headers=headers)
        assert response.status_code == 401, headers


def test_token_header_is_read_leniently(stack: Any, tenant: Tenant) -> None:
    body = fixture_json("02_audience_subscription_add.json", tenant.api_key)
    headers = {"Authorization": "token   test-mparticle-token"}

    response = httpx.post(f"{stack.gateway_url}/mparticle", json=body, headers=headers)

    assert response.status_code == 200


def test_response_id_is_fresh_when_the_request_id_is_not_a_uuid(http: httpx.Client) -> None:
    body = {**fixture_json("01_module_registration_request.json"), "id": "not-a-uuid"}

    reply = http.post("/mparticle", json=body).json()

    assert uuid.UUID(reply["id"]).version == 4
