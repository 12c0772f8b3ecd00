"""Bad input through the real gateway: a clear, permanent 4xx in one JSON shape, never a 5xx,
and the valid changes beside a bad one are kept."""

import gzip
import json
import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from protos.audience.v1 import audience_pb2
from protos.keys.v1 import keys_pb2
from services.gateway.settings import GatewaySettings
from tests.conftest import Stack, Tenant, fixture_json

SUBSCRIPTION = "02_audience_subscription_add.json"
MEMBERSHIP = "06_membership_change_mpid_only.json"


def assert_error(response: httpx.Response, status: int, code: str, path: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"code": code, "message": response.json()["error"]["message"], "path": path}
    }
    assert response.json()["error"]["message"]
    assert "Traceback" not in response.text


def membership(tenant: Tenant, *profiles: dict[str, Any]) -> dict[str, Any]:
    body = fixture_json(MEMBERSHIP, tenant.api_key)
    body["user_profiles"] = list(profiles)
    return body


def profile(mpid: Any, audience_id: Any = 5, action: Any = "add") -> dict[str, Any]:
    return {
        "mpid": mpid,
        "audiences": [{"audience_id": audience_id, "audience_name": "Five", "action": action}],
    }


def members(audience_stub: Any, audience_id: int = 5) -> set[int]:
    try:
        page = audience_stub.ListMembers(
            audience_pb2.ListMembersRequest(account_id="acme", audience_id=audience_id)
        )
    except Exception:
        return set()
    return set(page.mpids)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"a string"', "invalid_json"),
        (b'{"type": NaN}', "invalid_json"),
        ('{"type": "é"}'.encode("utf-16"), "invalid_encoding"),
        (b'{"type": "\xff\xfe"}', "invalid_encoding"),
    ],
    ids=["truncated", "empty", "array", "string", "nan", "utf-16", "latin-1"],
)
def test_unreadable_bodies_are_400(http: httpx.Client, body: bytes, code: str) -> None:
    assert_error(http.post("/mparticle", content=body), 400, code, "$")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(http: httpx.Client, content_type: str) -> None:
    body = fixture_json("01_module_registration_request.json")

    response = http.post("/mparticle", json=body, headers={"Content-Type": content_type})

    assert_error(response, 415, "unsupported_media_type", None)


def test_json_content_type_with_parameters_is_accepted(http: httpx.Client) -> None:
    body = fixture_json("01_module_registration_request.json")
    headers = {"Content-Type": "application/json; charset=utf-8"}

    assert http.post("/mparticle", json=body, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("change", "status", "code", "path"),
    [
        ({"type": "event_processing_request"}, 400, "unsupported_type", "$.type"),
        ({"type": 7}, 400, "invalid_field", "$.type"),
        ({"account": None}, 400, "invalid_field", "$.account"),
        (
            {"account": {"account_id": 1, "account_settings": []}},
            400,
            "invalid_field",
            "$.account.account_settings",
        ),
        ({"action": "ADD"}, 400, "invalid_field", "$.action"),
        ({"action": None}, 400, "invalid_field", "$.action"),
        ({"audience_id": 0}, 400, "invalid_field", "$.audience_id"),
        ({"audience_id": 2**31}, 400, "invalid_field", "$.audience_id"),
        ({"audience_id": 1.5}, 400, "invalid_field", "$.audience_id"),
        ({"audience_id": True}, 400, "invalid_field", "$.audience_id"),
        ({"audience_id": "x"}, 400, "invalid_field", "$.audience_id"),
        ({"audience_name": ""}, 400, "invalid_field", "$.audience_name"),
        ({"audience_name": " \t "}, 400, "invalid_field", "$.audience_name"),
        ({"audience_name": " \u200b\ufeff\u00a0"}, 400, "invalid_field", "$.audience_name"),
        ({"audience_name": None}, 400, "invalid_field", "$.audience_name"),
        ({"audience_name": {"a": 1}}, 400, "invalid_field", "$.audience_name"),
        ({"action": "update", "audience_name": ""}, 400, "invalid_field", "$.audience_name"),
    ],
)
def test_bad_subscription_envelopes_are_400(
    http: httpx.Client, tenant: Tenant, change: dict, status: int, code: str, path: str
) -> None:
    body = {**fixture_json(SUBSCRIPTION, tenant.api_key), **change}

    assert_error(http.post("/mparticle", json=body), status, code, path)


def test_missing_account_on_membership_is_400(http: httpx.Client, tenant: Tenant) -> None:
    body = membership(tenant, profile("1"))
    del body["account"]

    assert_error(http.post("/mparticle", json=body), 400, "invalid_field", "$.account")


@pytest.mark.parametrize("account", [5, [], {"account_settings": "apiKey"}])
def test_a_field_that_must_be_an_object_says_so_in_plain_words(
    http: httpx.Client, tenant: Tenant, account: Any
) -> None:
    body = {**membership(tenant, profile("1")), "account": account}

    message = http.post("/mparticle", json=body).json()["error"]["message"]

    assert message.endswith("must be a JSON object"), message
    assert "Account" not in message and "dictionary" not in message


def test_subscription_settings_of_other_scalar_types_are_read_as_text(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = fixture_json(SUBSCRIPTION, tenant.api_key)
    body["audience_subscription_settings"] = {"flag": True, "size": 12}
    body["account"]["account_settings"]["extra"] = False

    assert http.post("/mparticle", json=body).status_code == 200

    [audience] = audience_stub.ListAudiences(
        audience_pb2.ListAudiencesRequest(account_id="acme")
    ).audiences
    assert dict(audience.settings) == {"flag": "true", "size": "12"}


@pytest.mark.parametrize(
    "mpid",
    ["123", 123, "-9223372036854775808", 9223372036854775807, -9223372036854775808, "0", "007"],
)
def test_valid_mpids_are_kept_exactly(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, mpid: Any
) -> None:
    response = http.post("/mparticle", json=membership(tenant, profile(mpid)))

    assert response.status_code == 200
    assert members(audience_stub) == {int(mpid)}


BAD_MPIDS = [
    "9223372036854775808",
    "-9223372036854775809",
    9223372036854775808,
    -9223372036854775809,
    1.5,
    1.0,
    True,
    "",
    "abc",
    " 1",
    "+1",
    "1\n",
    "1e3",
    "0x10",
    None,
    [],
    {},
]


@pytest.mark.parametrize("mpid", BAD_MPIDS)
def test_a_bad_mpid_skips_only_its_profile(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, mpid: Any
) -> None:
    body = membership(tenant, profile("11"), profile(mpid), profile("-12"))

    response = http.post("/mparticle", json=body)

    assert response.status_code == 200
    assert response.json()["suspend_subscription"] is False
    assert members(audience_stub) == {11, -12}


def test_what_was_skipped_is_logged_without_the_identities(
    http: httpx.Client, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    bad_mpid = "12345678901234567890123"
    body = membership(tenant, profile("13"), profile(bad_mpid), profile("14", action="remove"))

    with caplog.at_level(logging.WARNING, logger="services.gateway.endpoint"):
        response = http.post("/mparticle", json=body)

    [record] = [r for r in caplog.records if r.getMessage().startswith("skipped invalid parts")]
    assert response.status_code == 200
    fields = vars(record)
    assert (fields["skipped_profiles"], fields["skipped_entries"]) == (1, 1)
    assert fields["first_problem"].startswith("$.user_profiles[1].mpid")
    logged = " ".join(str(value) for r in caplog.records for value in vars(r).values())
    assert bad_mpid not in logged and tenant.api_key not in logged


@pytest.mark.parametrize(
    "literal", ["1e3", "1.0", "123456789012345678901234567890", "9" * 5000], ids=str.__len__
)
def test_mpid_number_literals_beyond_int64_or_not_integers_skip_their_profile(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, literal: str
) -> None:
    body = membership(tenant, profile("11"), profile("MARK"))
    text = httpx.Request("POST", "/", json=body).content.decode().replace('"MARK"', literal)

    response = http.post("/mparticle", content=text.encode())

    assert response.status_code == 200
    assert members(audience_stub) == {11}


def test_a_message_with_nothing_valid_is_422(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = membership(tenant, profile("1.5"), profile("2", action="join"))

    response = http.post("/mparticle", json=body)

    assert_error(response, 422, "nothing_valid", "$.user_profiles[0].mpid")
    assert "(1 profiles and 1 entries skipped as invalid)" in response.json()["error"]["message"]
    assert members(audience_stub) == set()


@pytest.mark.parametrize(
    "entry",
    [
        {"audience_id": 6, "audience_name": "Six", "action": "join"},
        {"audience_id": 6, "audience_name": "Six", "action": "ADD"},
        {"audience_id": 0, "audience_name": "Zero", "action": "add"},
        {"audience_id": "x", "audience_name": "X", "action": "add"},
        {"audience_name": "No id", "action": "add"},
        "not an object",
    ],
)
def test_a_bad_audience_entry_skips_only_itself(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, entry: Any
) -> None:
    user = profile("21")
    user["audiences"].append(entry)

    response = http.post("/mparticle", json=membership(tenant, user))

    assert response.status_code == 200
    assert members(audience_stub) == {21}


def test_unknown_fields_and_identity_types_are_ignored(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    user = profile("31")
    user["user_identities"] = [{"type": "other_id_11", "encoding": "raw", "value": "x"}]
    user["device_identities"] = [{"type": "new_device_kind", "encoding": "sha512", "value": "y"}]
    user["shiny_new_field"] = {"nested": [1, 2]}
    body = {**membership(tenant, user), "another_new_field": True, "mpid": "999"}

    response = http.post("/mparticle", json=body)

    assert response.status_code == 200
    assert members(audience_stub) == {31}


def test_a_bad_byte_in_a_field_nobody_reads_is_still_400(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    user = profile("32")
    user["user_identities"] = [{"type": "email", "encoding": "raw", "value": "MARK"}]
    body = json.dumps(membership(tenant, user)).encode().replace(b"MARK", b"caf\xe9")

    response = http.post("/mparticle", content=body)

    assert_error(response, 400, "invalid_encoding", "$")
    assert members(audience_stub) == set()


@pytest.mark.parametrize("audiences", [{}, {"audiences": None}], ids=["absent", "null"])
def test_pre_2018_shape_is_a_clear_400(http: httpx.Client, tenant: Tenant, audiences: dict) -> None:
    added = [{"audience_id": 5, "audience_name": "Five"}]
    legacy = {"mpid": "41", **audiences, "added_audiences": added}

    response = http.post("/mparticle", json=membership(tenant, legacy))

    assert_error(response, 400, "unsupported_format", "$.user_profiles[0]")


def test_empty_user_profiles_is_a_verification(http: httpx.Client, tenant: Tenant) -> None:
    response = http.post("/mparticle", json=membership(tenant))

    assert response.status_code == 200
    assert response.json()["suspend_subscription"] is False


# Stands for "account_settings": null, read as no settings at all.
NULL_SETTINGS = "account_settings: null"


def set_key(body: dict[str, Any], key: Any) -> None:
    """Put ``key`` where the API key goes: None leaves it out, NULL_SETTINGS every setting."""
    if key is NULL_SETTINGS:
        body["account"]["account_settings"] = None
    elif key is None:
        del body["account"]["account_settings"]["apiKey"]
    else:
        body["account"]["account_settings"]["apiKey"] = key


@pytest.mark.parametrize("key", [None, NULL_SETTINGS, "", 12345, "ak_malformed"])
def test_missing_or_malformed_key_on_subscription_is_401(
    http: httpx.Client, tenant: Tenant, key: Any
) -> None:
    body = fixture_json(SUBSCRIPTION, tenant.api_key)
    set_key(body, key)

    response = http.post("/mparticle", json=body)

    assert_error(response, 401, "invalid_api_key", "$.account.account_settings.apiKey")


@pytest.mark.parametrize("key", [None, NULL_SETTINGS, "", 12345, "ak_malformed"])
def test_missing_or_malformed_key_on_membership_asks_to_suspend(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, key: Any
) -> None:
    body = membership(tenant, profile("61"))
    set_key(body, key)

    response = http.post("/mparticle", json=body)

    assert response.status_code == 200
    assert response.json()["suspend_subscription"] is True
    assert members(audience_stub) == set()


def test_a_revoked_key_stops_working_within_the_cache_bound(
    http: httpx.Client, tenant: Tenant, keys_stub: Any, audience_stub: Any
) -> None:
    assert http.post("/mparticle", json=membership(tenant, profile("51"))).status_code == 200
    [key] = keys_stub.ListKeys(keys_pb2.ListKeysRequest(account_id="acme")).keys
    keys_stub.RevokeKey(keys_pb2.RevokeKeyRequest(account_id="acme", key_id=key.key_id))
    revoked_at = time.monotonic()

    while True:
        change = http.post("/mparticle", json=membership(tenant, profile("52")))
        if change.json()["suspend_subscription"]:
            break
        assert time.monotonic() - revoked_at < GatewaySettings().key_cache_seconds + 1
        time.sleep(0.1)
    subscription = http.post("/mparticle", json=fixture_json(SUBSCRIPTION, tenant.api_key))

    assert change.status_code == 200
    assert subscription.status_code == 401
    # Changes accepted before the revocation took effect were stored; none after.
    assert members(audience_stub) <= {51, 52}
    after = http.post("/mparticle", json=membership(tenant, profile("53")))
    assert after.json()["suspend_subscription"] is True
    assert 53 not in members(audience_stub)


@pytest.fixture
def small_gateway(stack: Stack) -> Iterator[httpx.Client]:
    url = stack.start_gateway(max_body_bytes=4096)
    headers = {"Authorization": "Token test-mparticle-token", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        yield client


def big_membership(tenant: Tenant, profiles: int) -> dict[str, Any]:
    return membership(tenant, *(profile(str(i)) for i in range(profiles)))


def test_over_the_cap_with_content_length_is_413(
    small_gateway: httpx.Client, tenant: Tenant
) -> None:
    response = small_gateway.post("/mparticle", json=big_membership(tenant, 200))

    assert_error(response, 413, "body_too_large", None)


def test_over_the_cap_without_content_length_is_413(
    small_gateway: httpx.Client, tenant: Tenant
) -> None:
    content = httpx.Request("POST", "/", json=big_membership(tenant, 200)).content

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 1000):
            yield content[start : start + 1000]

    response = small_gateway.post("/mparticle", content=chunks())

    assert "content-length" not in response.request.headers
    assert_error(response, 413, "body_too_large", None)


def test_gzip_bodies_are_accepted(
    small_gateway: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    content = httpx.Request("POST", "/", json=big_membership(tenant, 20)).content

    response = small_gateway.post(
        "/mparticle", content=gzip.compress(content), headers={"Content-Encoding": "gzip"}
    )

    assert response.status_code == 200
    assert members(audience_stub) == set(range(20))


@pytest.mark.parametrize("encoding", ["x-gzip", "GZip"])
def test_x_gzip_is_gzip(
    small_gateway: httpx.Client, tenant: Tenant, audience_stub: Any, encoding: str
) -> None:
    content = httpx.Request("POST", "/", json=big_membership(tenant, 3)).content

    response = small_gateway.post(
        "/mparticle", content=gzip.compress(content), headers={"Content-Encoding": encoding}
    )

    assert response.status_code == 200
    assert members(audience_stub) == set(range(3))


def test_an_empty_content_encoding_is_no_encoding(
    small_gateway: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    response = small_gateway.post(
        "/mparticle", json=big_membership(tenant, 3), headers={"Content-Encoding": ""}
    )

    assert response.status_code == 200
    assert members(audience_stub) == set(range(3))


def test_a_gzip_bomb_is_refused_before_it_is_inflated_past_the_memory_budget(
    stack: Stack,
) -> None:
    """The budget is taken as the body inflates: a bomb stops at the budget, not the cap."""
    url = stack.start_gateway(memory_budget_bytes=4 * 1024 * 1024)
    bomb = gzip.compress(b'{"type": "' + b" " * 60_000_000 + b'"}', compresslevel=9)
    headers = {"Authorization": "Token test-mparticle-token", "Content-Encoding": "gzip"}

    tracemalloc.start()
    try:
        response = httpx.post(f"{url}/mparticle", content=bomb, headers=headers, timeout=30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert_error(response, 413, "body_too_large", None)
    assert peak < 20_000_000


def test_a_gzip_bomb_is_refused_within_the_cap(small_gateway: httpx.Client) -> None:
    bomb = gzip.compress(b'{"type": "' + b" " * 3_000_000 + b'"}', compresslevel=9)
    assert len(bomb) < 4096

    response = small_gateway.post("/mparticle", content=bomb, headers={"Content-Encoding": "gzip"})

    assert_error(response, 413, "body_too_large", None)


@pytest.mark.parametrize(
    ("content", "encoding", "status", "code"),
    [
        (b"not gzip at all", "gzip", 400, "invalid_gzip"),
        (gzip.compress(b'{"type": "x"}')[:-12], "gzip", 400, "invalid_gzip"),
        (b"{}", "br", 415, "unsupported_encoding"),
    ],
    ids=["garbage", "truncated", "brotli"],
)
def test_bad_encodings(
    small_gateway: httpx.Client, content: bytes, encoding: str, status: int, code: str
) -> None:
    response = small_gateway.post(
        "/mparticle", content=content, headers={"Content-Encoding": encoding}
    )

    assert_error(response, status, code, None)


def test_a_remove_needs_no_audience_name(http: httpx.Client, tenant: Tenant) -> None:
    body = {**fixture_json(SUBSCRIPTION, tenant.api_key), "action": "remove"}
    body.pop("audience_name", None)

    response = http.post("/mparticle", json=body)

    assert response.status_code == 200
    assert response.json()["type"] == "audience_subscription_response"


def test_a_byte_order_mark_before_the_json_is_accepted(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    content = httpx.Request("POST", "/", json=membership(tenant, profile("11"))).content

    response = http.post("/mparticle", content=b"\xef\xbb\xbf" + content)

    assert response.status_code == 200
    assert members(audience_stub) == {11}
