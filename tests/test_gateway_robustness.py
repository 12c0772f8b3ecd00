"""Hostile and surprising input through the real gateway: very large batches, slow or
unauthenticated senders, odd text, odd types. Nothing valid is lost, and nothing answers
with a code mParticle would retry for ever or drop for good without cause."""

import gzip
import json
import logging
import re
import socket
import time
from typing import Any

import grpc
import httpx
import orjson
import pytest
import redis

from protos.audience.v1 import audience_pb2
from protos.keys.v1 import keys_pb2
from protos.segment.v1 import segment_pb2
from services.gateway.http_protocol import MAX_HEAD_BYTES
from tests.conftest import MPARTICLE_TOKEN, Stack, Tenant, fixture_json

MEMBERSHIP = "06_membership_change_mpid_only.json"
SUBSCRIPTION = "02_audience_subscription_add.json"


def membership(api_key: str, *profiles: Any) -> dict[str, Any]:
    body = fixture_json(MEMBERSHIP, api_key)
    body["user_profiles"] = list(profiles)
    return body


def profile(mpid: Any, audience_id: int | str = 5, name: Any = "Five", action: str = "add") -> dict:
    return {
        "mpid": mpid,
        "audiences": [{"audience_id": audience_id, "audience_name": name, "action": action}],
    }


def exchange(base_url: str, sent: bytes, piece: int | None = None) -> bytes:
    """Send raw bytes to the gateway (``piece`` bytes at a time, each as its own segment,
    when given); everything it answers until it closes the connection (socket.timeout
    after 5 s if it never does)."""
    url = httpx.URL(base_url)
    with socket.create_connection((url.host, url.port), timeout=5) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step = piece or max(len(sent), 1)
        for start in range(0, len(sent), step):
            connection.sendall(sent[start : start + step])
            if piece:
                time.sleep(0.002)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def audiences(audience_stub: Any) -> dict[int, Any]:
    """Every audience of the account, each once, however many pages that takes."""
    found: dict[int, Any] = {}
    token = ""
    while True:
        page = audience_stub.ListAudiences(
            audience_pb2.ListAudiencesRequest(account_id="acme", page_size=10_000, page_token=token)
        )
        found.update((a.audience_id, a) for a in page.audiences)
        token = page.next_page_token
        if not token:
            return found


def test_a_batch_of_50k_profiles_is_stored(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    profiles = [
        {
            "mpid": str(i * 7919 - 10**12),
            "user_identities": [{"type": "email", "encoding": "raw", "value": f"u{i}@example.com"}],
            "audiences": [{"audience_id": 5, "audience_name": "Five", "action": "add"}],
        }
        for i in range(50_000)
    ]

    response = http.post("/mparticle", json=membership(tenant.api_key, *profiles), timeout=60)

    assert response.status_code == 200, response.text
    assert audiences(audience_stub)[5].member_count == 50_000


def test_a_batch_of_40k_new_audiences_is_stored_on_first_delivery(
    stack: Stack, tenant: Tenant, audience_stub: Any, segment_stub: Any
) -> None:
    # Each new audience costs the store several times what a change does (its record, its
    # ids): the deadline allows for both, so that such a batch is not answered 503 until
    # retried. A short base budget leaves only the allowance. (Sent in four calls of at
    # most 10,000 audiences.)
    url = stack.start_gateway(request_timeout_seconds=0.05)
    profiles = [
        {
            "mpid": str(50_000_000 + i),
            "audiences": [{"audience_id": 6_000_000 + i, "action": "add"}],
        }
        for i in range(40_000)
    ]

    response = httpx.post(
        f"{url}/mparticle",
        json=membership(tenant.api_key, *profiles),
        headers={"Authorization": f"Token {MPARTICLE_TOKEN}"},
        timeout=60,
    )

    assert response.status_code == 200, response.text
    listed = audiences(audience_stub)
    assert len(listed) == 40_000
    assert {a.member_count for a in listed.values()} == {1}
    # The segment list reads them page by page, each call under its own deadline.
    [web] = segment_stub.ListSegments(segment_pb2.ListSegmentsRequest(account_id="acme")).connectors
    assert len(web.segments) == 40_000
    assert {s.audience_id for s in web.segments} == set(listed)


@pytest.fixture
def guarded_gateway(stack: Stack) -> str:
    return stack.start_gateway(max_in_flight=4, body_timeout_seconds=0.5)


def stalled_request(url: str, headers: dict[str, str], length: int = 100_000) -> socket.socket:
    """A POST that declares a body of ``length`` bytes and sends only its first bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    lines = [
        "POST /mparticle HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{k}: {v}" for k, v in headers.items()),
        "",
        '{"type": "audience_membership_change_request", ',
    ]
    sock.sendall("\r\n".join(lines).encode())
    return sock


def test_unauthenticated_stalled_senders_cannot_lock_mparticle_out(
    guarded_gateway: str, tenant: Tenant, audience_stub: Any
) -> None:
    sockets = [stalled_request(guarded_gateway, {}) for _ in range(30)]
    time.sleep(0.2)
    try:
        response = httpx.post(
            f"{guarded_gateway}/mparticle",
            json=membership(tenant.api_key, profile("1")),
            headers={"Authorization": f"Token {MPARTICLE_TOKEN}"},
        )
    finally:
        for sock in sockets:
            sock.close()

    assert response.status_code == 200
    assert audiences(audience_stub)[5].member_count == 1


def test_a_body_that_does_not_arrive_in_time_is_408(guarded_gateway: str) -> None:
    sock = stalled_request(guarded_gateway, {"Authorization": f"Token {MPARTICLE_TOKEN}"})
    sock.settimeout(5)
    reply = ""
    try:
        while '"body_timeout"' not in reply and (chunk := sock.recv(4096)):
            reply += chunk.decode()
    finally:
        sock.close()

    assert reply.startswith("HTTP/1.1 408")
    assert '"code":"body_timeout"' in reply


def test_bodies_in_flight_share_one_memory_budget(stack: Stack, tenant: Tenant) -> None:
    """A request that does not fit beside those in flight gets 429 (retried), and fits once
    they are done; one that could not fit even alone gets 413."""
    url = stack.start_gateway(memory_budget_bytes=2_000_000)
    token = {"Authorization": f"Token {MPARTICLE_TOKEN}"}
    small = membership(tenant.api_key, *(profile(str(i), 4201) for i in range(1, 1001)))
    large = membership(tenant.api_key, *(profile(str(i), 4202) for i in range(1, 20_001)))

    holder = stalled_request(url, token, length=1_500_000)
    time.sleep(0.2)
    try:
        crowded = httpx.post(f"{url}/mparticle", json=small, headers=token)
        # Refused on its declared length, before it is read: it is read and dropped, so
        # that the 429 arrives whole instead of a reset.
        raw = orjson.dumps(large)[:700_000]
        head = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        head += b"Authorization: Token %s\r\n" % MPARTICLE_TOKEN.encode()
        declared_refused = exchange(url, head + b"Content-Length: %d\r\n\r\n" % len(raw) + raw)
    finally:
        holder.close()
    retried = _post_until_not_429(f"{url}/mparticle", small, token)
    alone = httpx.post(f"{url}/mparticle", json=large, headers=token)

    assert crowded.status_code == 429, crowded.text
    assert crowded.headers["Retry-After"] == "1"
    assert crowded.json()["error"]["code"] == "overloaded"
    assert declared_refused.startswith(b"HTTP/1.1 429"), declared_refused[:200]
    assert retried.status_code == 200, retried.text
    assert alone.status_code == 413, alone.text
    assert alone.json()["error"]["code"] == "body_too_large"


def _post_until_not_429(url: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    """POST as mParticle would, again after each 429, for up to 5 s."""
    deadline = time.monotonic() + 5
    while (response := httpx.post(url, json=body, headers=headers)).status_code == 429:
        assert time.monotonic() < deadline, "the budget was not given back"
        time.sleep(0.05)
    return response


def test_what_a_body_costs_follows_what_parsing_makes_of_it(
    stack: Stack, tenant: Tenant, audience_stub: Any
) -> None:
    """Of four bodies of one size, a valid batch fits the budget, and so does the same batch
    with one bad MPID, whose other profiles the typed decoder still reads, and one whose
    every audience id is a string, read one profile at a time; one made of "{}", which only
    the lenient rules read, does not."""
    url = stack.start_gateway(memory_budget_bytes=16_000_000)
    token = {"Authorization": f"Token {MPARTICLE_TOKEN}", "Content-Type": "application/json"}
    profiles = [profile(str(i), 4301) for i in range(1, 12_001)]
    valid = orjson.dumps(membership(tenant.api_key, *profiles))
    one_bad = orjson.dumps(membership(tenant.api_key, profile("x", 4302), *profiles[1:]))
    texts = orjson.dumps(
        membership(tenant.api_key, *(profile(str(i), "4303") for i in range(12_000)))
    )
    junk = membership(tenant.api_key, {"mpid": "1", "audiences": []})
    junk["user_profiles"][0]["audiences"] = [{}] * (len(valid) // 3)
    dense = orjson.dumps(junk)

    answers = {
        name: httpx.post(f"{url}/mparticle", content=body, headers=token)
        for name, body in [
            ("dense", dense),
            ("one_bad", one_bad),
            ("texts", texts),
            ("valid", valid),
        ]
    }

    assert len(valid) <= len(dense) < len(valid) * 1.1
    assert answers["dense"].status_code == 413, answers["dense"].text
    assert answers["one_bad"].status_code == 200, answers["one_bad"].text
    assert answers["texts"].status_code == 200, answers["texts"].text
    assert answers["valid"].status_code == 200, answers["valid"].text
    assert audiences(audience_stub)[4301].member_count == 12_000
    assert 4302 not in audiences(audience_stub)
    assert audiences(audience_stub)[4303].member_count == 12_000


def test_an_unauthenticated_large_body_is_refused_unread(stack: Stack) -> None:
    body = {"type": "module_registration_request", "pad": "x" * 200_000}

    response = httpx.post(f"{stack.gateway_url}/mparticle", json=body)

    assert response.status_code == 401


def test_registration_still_needs_no_token(stack: Stack) -> None:
    body = fixture_json("01_module_registration_request.json")

    assert httpx.post(f"{stack.gateway_url}/mparticle", json=body).status_code == 200


def test_a_long_audience_name_is_cut_not_refused(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = membership(tenant.api_key, profile("101", 1001, "A"), profile("102", 1002, "x" * 5000))

    response = http.post("/mparticle", json=body)

    assert response.status_code == 200
    stored = audiences(audience_stub)
    assert stored[1001].member_count == stored[1002].member_count == 1
    assert stored[1002].name == "x" * 1024


def raw_post(http: httpx.Client, text: str) -> httpx.Response:
    return http.post("/mparticle", content=text.encode())


def test_lone_surrogates_become_replacement_characters(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = json.dumps(membership(tenant.api_key, profile("101", 1001, "MARK"), profile("102")))

    response = raw_post(http, body.replace('"MARK"', '"bad \\ud800 name"'))

    assert response.status_code == 200
    stored = audiences(audience_stub)
    assert stored[1001].name == "bad \ufffd name"
    assert stored[5].member_count == 1


def test_a_lone_surrogate_in_the_key_is_an_invalid_key(http: httpx.Client, tenant: Tenant) -> None:
    body = json.dumps(membership(tenant.api_key + "MARK", profile("101")))
    subscription = json.dumps(fixture_json(SUBSCRIPTION, tenant.api_key + "MARK"))

    change = raw_post(http, body.replace("MARK", "\\udfff"))
    subscribe = raw_post(http, subscription.replace("MARK", "\\udfff"))

    assert change.status_code == 200
    assert change.json()["suspend_subscription"] is True
    assert subscribe.status_code == 401


def test_deeply_nested_json_is_400(http: httpx.Client, tenant: Tenant) -> None:
    body = json.dumps(membership(tenant.api_key, profile("1")))
    nested = body[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}"

    response = raw_post(http, nested)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("timestamp", [2**63, 2**64 - 1, -5, "-5", 1.5, "soon", None])
def test_an_unusable_timestamp_is_read_as_now(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, timestamp: Any
) -> None:
    body = membership(tenant.api_key, profile("1"))
    body["timestamp_ms"] = timestamp

    assert http.post("/mparticle", json=body).status_code == 200
    assert audiences(audience_stub)[5].member_count == 1


def test_a_timestamp_of_thousands_of_digits_is_read_as_now(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = membership(tenant.api_key, profile("1"))
    body["timestamp_ms"] = "MARK"
    text = json.dumps(body).replace('"MARK"', "7" * 5000)

    assert http.post("/mparticle", content=text.encode()).status_code == 200
    assert audiences(audience_stub)[5].member_count == 1


def test_long_descriptions_are_cut_and_too_many_settings_refused(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    long = fixture_json(SUBSCRIPTION, tenant.api_key)
    long["audience_description"] = "d" * 100_000
    many = fixture_json(SUBSCRIPTION, tenant.api_key)
    many["audience_subscription_settings"] = {f"k{i}": "v" for i in range(101)}

    assert http.post("/mparticle", json=long).status_code == 200
    refused = http.post("/mparticle", json=many)

    assert len(audiences(audience_stub)[90211].description) == 4096
    assert refused.status_code == 400
    assert refused.json()["error"]["path"] == "$.audience_subscription_settings"


def test_an_audience_sent_by_two_connectors_is_listed_under_both(
    http: httpx.Client, tenant: Tenant, keys_stub: Any, segment_stub: Any
) -> None:
    app = segment_stub.CreateConnector(
        segment_pb2.CreateConnectorRequest(account_id="acme", name="App")
    ).connector
    app_key = keys_stub.CreateKey(
        keys_pb2.CreateKeyRequest(account_id="acme", connector_id=app.connector_id)
    ).plaintext

    http.post("/mparticle", json=membership(tenant.api_key, profile("1")))
    http.post("/mparticle", json=membership(app_key, profile("2")))

    listed = segment_stub.ListSegments(segment_pb2.ListSegmentsRequest(account_id="acme"))
    assert [
        (c.connector.name, [(s.audience_id, s.member_count) for s in c.segments])
        for c in listed.connectors
    ] == [("App", [(5, 2)]), ("Web", [(5, 2)])]


def test_a_legacy_profile_beside_current_ones_is_skipped(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    legacy = {"mpid": "9", "added_audiences": [{"audience_id": 5, "audience_name": "Five"}]}

    response = http.post("/mparticle", json=membership(tenant.api_key, profile("1"), legacy))

    assert response.status_code == 200
    assert audiences(audience_stub)[5].member_count == 1


@pytest.mark.parametrize("legacy_value", [None, [], [{"audience_id": 6}]])
def test_legacy_keys_beside_audiences_are_ignored(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, legacy_value: Any
) -> None:
    current = {**profile("1"), "added_audiences": legacy_value, "removed_audiences": []}

    response = http.post("/mparticle", json=membership(tenant.api_key, current))

    assert response.status_code == 200
    assert audiences(audience_stub)[5].member_count == 1
    assert 6 not in audiences(audience_stub)


def test_loose_types_where_nothing_depends_on_them(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    body = membership(tenant.api_key, profile("1", name=123))
    body["account"]["account_settings"].update(other=None, nested={"a": 1}, listed=[1])
    body["firehose_version"] = 3.2
    body["account"]["account_settings"]["apiKey"] = f"  {tenant.api_key}\n"

    response = http.post("/mparticle", json=body)

    assert response.status_code == 200
    assert response.json()["suspend_subscription"] is False
    assert audiences(audience_stub)[5].name == "123"


def test_a_tab_after_the_token_scheme_is_accepted(stack: Stack, tenant: Tenant) -> None:
    response = httpx.post(
        f"{stack.gateway_url}/mparticle",
        json=membership(tenant.api_key, profile("1")),
        headers={"Authorization": f"Token\t{MPARTICLE_TOKEN}"},
    )

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/mparticle", 405, "method_not_allowed"),
        ("PUT", "/mparticle", 405, "method_not_allowed"),
        ("POST", "/mparticle/", 404, "not_found"),
        ("POST", "/MPARTICLE", 404, "not_found"),
    ],
)
def test_routing_errors_have_the_error_shape(
    http: httpx.Client, method: str, path: str, status: int, code: str
) -> None:
    response = http.request(method, path, json={})

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    "split",
    [
        lambda content: gzip.compress(content[:50]) + gzip.compress(content[50:]),
        # Many tiny members: read in time proportional to the body's size.
        lambda content: gzip.compress(b" ") * 100_000 + gzip.compress(content),
    ],
    ids=["two_members", "100k_tiny_members_then_the_message"],
)
def test_multi_member_gzip_is_read_whole(
    http: httpx.Client, tenant: Tenant, audience_stub: Any, split: Any
) -> None:
    content = json.dumps(membership(tenant.api_key, profile("1"), profile("2"))).encode()

    response = http.post("/mparticle", content=split(content), headers={"Content-Encoding": "gzip"})

    assert response.status_code == 200
    assert audiences(audience_stub)[5].member_count == 2


def test_a_non_ascii_request_id_is_replaced_not_an_error(
    http: httpx.Client, tenant: Tenant, audience_stub: Any
) -> None:
    content = json.dumps(membership(tenant.api_key, profile("1"))).encode()

    response = http.post(
        "/mparticle",
        content=content,
        headers=[
            (b"Content-Type", b"application/json"),
            (b"X-Request-Id", "\xe9t\xe9".encode("latin-1")),
        ],
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"].isascii()
    assert audiences(audience_stub)[5].member_count == 1


def test_gzip_with_trailing_garbage_is_400(http: httpx.Client, tenant: Tenant) -> None:
    content = json.dumps(membership(tenant.api_key, profile("1"))).encode()

    response = http.post(
        "/mparticle",
        content=gzip.compress(content) + b"garbage",
        headers={"Content-Encoding": "gzip"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_gzip"


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /mparticle HTTP/1.1\r\nHost: x\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET",
    ],
    ids=["nothing", "part_of_the_headers", "a_request_then_part_of_the_next"],
)
def test_a_connection_whose_request_head_stalls_is_closed(stack: Stack, sent: bytes) -> None:
    url = stack.start_gateway(header_timeout_seconds=0.5)

    received = exchange(url, sent)

    # exchange returned: the server closed the connection, well before the socket timeout.
    assert received.count(b"HTTP/1.1 200") == sent.count(b"/healthz")


def test_a_body_answered_early_and_then_trickled_is_cut_off(stack: Stack) -> None:
    """After a 415, the rest of the body and the next head share the head's deadline: a
    sender trickling bytes cannot hold the connection."""
    url = httpx.URL(stack.start_gateway(header_timeout_seconds=0.5))
    head = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
    head += b"Content-Length: 1000000\r\n\r\n{"

    with socket.create_connection((url.host, url.port), timeout=5) as connection:
        connection.sendall(head)
        answer = connection.recv(65536)
        closed = False
        for _ in range(50):
            time.sleep(0.1)
            try:
                connection.sendall(b" ")
                connection.setblocking(False)
                closed = connection.recv(65536) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed = True
            finally:
                connection.setblocking(True)
            if closed:
                break

    assert answer.startswith(b"HTTP/1.1 415")
    assert closed


@pytest.mark.parametrize(
    "request_head",
    [
        b"POST /mparticle HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /mparticle HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        # The start of a TLS handshake, binary after a method: refused at once, not held as
        # an unfinished head.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /\x00\x01\x02\xff\xfe",
        b"POST /mparticle HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
    ],
    ids=["bad_chunk_size", "negative_length", "tls_handshake", "binary_after_a_method", "bare_lf"],
)
def test_a_request_that_is_not_http_gets_the_error_shape(stack: Stack, request_head: bytes) -> None:
    received = exchange(stack.gateway_url, request_head)

    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head
    assert json.loads(body)["error"]["code"] == "invalid_http"


@pytest.mark.parametrize("piece", [None, 5], ids=["at_once", "in_pieces"])
@pytest.mark.parametrize(
    "upgrade",
    [
        b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c",
        b"connection:upgrade,close\r\nupgrade: websocket",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nConnection: close",
        b"Connection: close, upgrade\r\nUpgrade: websocket",
        b"Connection:\tUpgrade\r\nConnection: UPGRADE\r\nConnection: close",
    ],
    ids=["h2c", "websocket", "alone", "last", "tab_and_twice"],
)
def test_a_post_asking_to_upgrade_is_served_as_http_1_1(
    stack: Stack, tenant: Tenant, audience_stub: Any, upgrade: bytes, piece: int | None
) -> None:
    body = orjson.dumps(membership(tenant.api_key, profile("41", 4101, "Upgrade")))
    head = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Authorization: Token %s\r\n" % MPARTICLE_TOKEN.encode()
    head += upgrade + b"\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    head += b"Content-Length: %d\r\n\r\n" % len(body)

    received = exchange(stack.gateway_url, head + body, piece)

    assert received.startswith(b"HTTP/1.1 200"), received
    assert audiences(audience_stub)[4101].member_count == 1


def test_a_pipelined_request_asking_to_upgrade_is_answered_503_not_400(
    stack: Stack, tenant: Tenant, audience_stub: Any
) -> None:
    """Behind another request, the upgrade reaches httptools, which takes the body for the
    new protocol's: the request is answered 503, so that mParticle sends it again."""

    def post(audience_id: int, extra: bytes = b"") -> bytes:
        body = orjson.dumps(membership(tenant.api_key, profile("51", audience_id, "P")))
        head = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += b"Authorization: Token %s\r\n%s" % (MPARTICLE_TOKEN.encode(), extra)
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    first, asking, after = post(5101), post(5102, upgrade), post(5103, b"Connection: close\r\n")

    received = exchange(stack.gateway_url, first + asking + after)
    again = exchange(stack.gateway_url, asking.replace(b"HTTP2-Settings", b"close"))

    assert re.findall(rb"HTTP/1\.1 (\d{3})", received) == [b"200", b"503"], received
    assert b'"code":"body_lost"' in received
    assert again.startswith(b"HTTP/1.1 200")
    stored = audiences(audience_stub)
    assert stored[5101].member_count == stored[5102].member_count == 1
    # The request after it was never read: its sender gets no answer, and sends it again.
    assert 5103 not in stored


@pytest.mark.parametrize("piece", [None, 65536], ids=["at_once", "in_pieces"])
def test_a_request_answered_before_its_body_arrived_gets_one_answer(
    stack: Stack, tenant: Tenant, audience_stub: Any, piece: int | None
) -> None:
    """The rest of the refused request's body is skipped, not read as the next head: the
    request behind it on the connection is served."""
    refused = b'{"padding": "%s"}' % (b"x" * 300_000)
    head = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
    head += b"Authorization: Token %s\r\n" % MPARTICLE_TOKEN.encode()
    first = head + b"Content-Length: %d\r\n\r\n" % len(refused) + refused
    body = orjson.dumps(membership(tenant.api_key, profile("61", 6101, "After")))
    head = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Authorization: Token %s\r\nConnection: close\r\n" % MPARTICLE_TOKEN.encode()
    second = head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    received = exchange(stack.gateway_url, first + second, piece)

    assert re.findall(rb"HTTP/1\.1 (\d{3})", received) == [b"415", b"200"], received[:600]
    assert audiences(audience_stub)[6101].member_count == 1


@pytest.mark.parametrize("piece", [None, 4096], ids=["at_once", "in_pieces"])
def test_a_request_head_over_the_limit_is_431(
    stack: Stack, piece: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Nothing more is sent once the head is over the limit, so that the gateway has read
    # everything when it closes (data arriving after that would reset the connection).
    start = b"POST /mparticle HTTP/1.1\r\nHost: x\r\nX-Padding: "
    sent = start + b"x" * (MAX_HEAD_BYTES + 1 - len(start))

    received = exchange(stack.gateway_url, sent, piece)

    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431")
    assert json.loads(body)["error"]["code"] == "headers_too_large"
    logged = [r for r in caplog.records if getattr(r, "status", None) == 431]
    assert [r.getMessage() for r in logged] == ["request head too large"]


def test_a_head_under_the_limit_and_a_large_body_are_served(
    http: httpx.Client, tenant: Tenant
) -> None:
    body = membership(tenant.api_key, *(profile(str(i)) for i in range(1, 5000)))
    padding = "x" * (MAX_HEAD_BYTES - 1024)

    response = http.post("/mparticle", json=body, headers={"X-Padding": padding})

    assert response.status_code == 200


def test_a_fault_of_ours_is_500_and_its_details_reach_the_log_only(
    http: httpx.Client,
    tenant: Tenant,
    audience_stub: Any,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Data the store cannot have written (the audience index a string, not a hash) fails
    every change of the account: 500, which mParticle retries until the fault is mended,
    with a generic message; the traceback goes to the audience service's log."""
    redis_client.set("au:idx:{acme}", "not a hash")

    with caplog.at_level(logging.ERROR, logger="services.common.interceptors"):
        response = http.post("/mparticle", json=membership(tenant.api_key, profile("1")))
    with pytest.raises(grpc.RpcError) as lookup:
        audience_stub.CheckMembership(
            audience_pb2.CheckMembershipRequest(account_id="acme", audience_id=5, mpid=1)
        )

    assert response.status_code == 500, response.text
    assert response.json() == {
        "error": {
            "code": "internal",
            "message": "audience is unavailable, retry later",
            "path": None,
        }
    }
    assert lookup.value.code() == grpc.StatusCode.INTERNAL
    assert lookup.value.details() == "internal error"
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert len(logged) == 2  # the change's call and the lookup's
    assert all(r.exc_info and "WRONGTYPE" in str(r.exc_info[1]) for r in logged)
    assert "WRONGTYPE" not in response.text


def test_a_head_arriving_in_pieces_on_a_kept_alive_connection_has_the_whole_deadline(
    stack: Stack,
) -> None:
    """The next head may take GATEWAY_HEADER_TIMEOUT_SECONDS from the previous answer, in
    pieces, past uvicorn's own idle timer (5 s unless told otherwise)."""
    url = httpx.URL(stack.start_gateway(header_timeout_seconds=7))
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    with socket.create_connection((url.host, url.port), timeout=10) as connection:
        connection.sendall(request)
        first = read_response(connection)
        time.sleep(1)
        connection.sendall(request[:20])
        time.sleep(4.5)
        connection.sendall(request[20:])
        second = read_response(connection)

    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200"), second


def read_response(connection: socket.socket) -> bytes:
    """One whole response with a Content-Length (its head and body may arrive apart)."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += connection.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    declared = re.search(rb"(?i)content-length: *(\d+)", head)
    assert declared is not None, head
    length = int(declared.group(1))
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body
