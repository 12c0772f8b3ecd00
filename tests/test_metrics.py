"""Prometheus metrics, scraped over HTTP after real traffic through the stack."""

from functools import partial
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack, Tenant, fixture_json

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def service_metrics_url(stack: Stack, service: str) -> str:
    return f"http://127.0.0.1:{stack.servers[service].metrics_port}/metrics"


def test_counters_move_by_the_traffic(stack: Stack, http: httpx.Client, tenant: Tenant) -> None:
    gateway_url = f"{stack.gateway_url}/metrics"
    before = scrape(gateway_url)
    before_audience = scrape(service_metrics_url(stack, "audience"))
    before_keys = scrape(service_metrics_url(stack, "keys"))

    http.post(
        "/mparticle", json=fixture_json("05_membership_change_multi_user.json", tenant.api_key)
    )
    http.post("/mparticle", json=fixture_json("05_membership_change_multi_user.json", "bad-key"))
    bad = fixture_json("06_membership_change_mpid_only.json", tenant.api_key)
    bad["user_profiles"][0]["mpid"] = "not a number"
    bad["user_profiles"][1]["audiences"].append({"audience_id": 5, "action": "join"})
    bad["user_profiles"].append(None)
    http.post("/mparticle", json=bad)
    leave = fixture_json("05_membership_change_multi_user.json", tenant.api_key)
    leave["timestamp_ms"] += 1
    leave["user_profiles"] = [
        {"mpid": "-6529143021980561334", "audiences": [{"audience_id": 90211, "action": "delete"}]}
    ]
    http.post("/mparticle", json=leave)

    gateway = partial(delta, before, scrape(gateway_url))
    audience = partial(delta, before_audience, scrape(service_metrics_url(stack, "audience")))
    keys = partial(delta, before_keys, scrape(service_metrics_url(stack, "keys")))
    mparticle = {"route": "/mparticle", "message_type": "audience_membership_change_request"}
    assert gateway("gateway_requests_total", **mparticle, status="200") == 4
    assert gateway("gateway_request_duration_seconds_count", **mparticle) == 4
    assert gateway("gateway_keys_rejected_total", message_type=mparticle["message_type"]) == 1
    assert gateway("gateway_skipped_total", kind="profile") == 2
    assert gateway("gateway_skipped_total", kind="entry") == 1
    assert gateway("gateway_membership_changes_total", action="add") == 3 + 2
    assert gateway("gateway_membership_changes_total", action="delete") == 3 + 1 + 1
    assert audience("audience_memberships_added_total", account="acme") == 3 + 2
    assert audience("audience_memberships_removed_total", account="acme") == 1
    applied = {
        "grpc_service": "audience.v1.AudienceService",
        "grpc_method": "ApplyMembershipChanges",
    }
    assert audience("grpc_server_handled_total", **applied, grpc_code="OK") == 3
    # Later requests reuse the first one's validation (GATEWAY_KEY_CACHE_SECONDS).
    assert keys("keys_validations_total", outcome="valid") == 1
    assert keys("keys_validations_total", outcome="rejected") == 1
    validated = {"grpc_service": "keys.v1.KeyService", "grpc_method": "ValidateKey"}
    assert keys("grpc_server_handled_total", **validated, grpc_code="UNAUTHENTICATED") == 1


def test_unknown_message_types_do_not_become_labels(stack: Stack, http: httpx.Client) -> None:
    body = {"type": "made_up_type_12345", "id": "x"}

    http.post("/mparticle", json=body)

    text = httpx.get(f"{stack.gateway_url}/metrics").text
    assert "made_up_type_12345" not in text
    assert 'message_type="other"' in text


def test_grpc_services_serve_their_metrics(stack: Stack, audience_stub: Any) -> None:
    for service in ("keys", "audience", "segment"):
        response = httpx.get(service_metrics_url(stack, service))

        assert response.status_code == 200
        assert "grpc_server_handling_seconds" in response.text
