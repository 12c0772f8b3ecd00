"""audiencectl against the running suite: the README's walk-through, step by step."""

import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from audiencectl.main import cli
from tests.conftest import Stack, fixture_json


def run(stack: Stack, *args: str) -> Any:
    targets = [
        "--keys",
        stack.target("keys"),
        "--audience",
        stack.target("audience"),
        "--segment",
        stack.target("segment"),
    ]
    return CliRunner().invoke(cli, [*targets, *args], catch_exceptions=False)


def test_walk_through(stack: Stack, http: httpx.Client) -> None:
    connector = run(stack, "connectors", "create", "--account", "acme", "--name", "Web")
    connector_id = connector.stdout.strip()
    key = run(stack, "keys", "create", "--account", "acme", "--connector", connector_id)
    api_key = key.stdout.strip()
    for name in ("02_audience_subscription_add.json", "05_membership_change_multi_user.json"):
        assert http.post("/mparticle", json=fixture_json(name, api_key)).status_code == 200

    listed = run(stack, "segments", "list", "--account", "acme")
    lookup = run(stack, "users", "audiences", "--account", "acme", "--mpid", "-6529143021980561334")
    keys = run(stack, "keys", "list", "--account", "acme")

    assert connector.exit_code == key.exit_code == 0
    assert connector_id.startswith("con_")
    assert "shown only once" in key.stderr
    assert "Cart Abandoners - Last 7 Days" in listed.stdout
    assert "High Value Returning Visitors" in listed.stdout
    assert lookup.stdout.split() == ["90211", "90318"]
    assert api_key not in keys.stdout
    assert api_key[:15] in keys.stdout


def test_json_output_is_the_proto_json(stack: Stack, http: httpx.Client) -> None:
    connector_id = run(stack, "connectors", "create", "--account", "acme", "--name", "Web").stdout
    api_key = run(
        stack, "keys", "create", "--account", "acme", "--connector", connector_id.strip()
    ).stdout.strip()
    http.post("/mparticle", json=fixture_json("06_membership_change_mpid_only.json", api_key))

    segments = json.loads(run(stack, "--json", "segments", "list", "--account", "acme").stdout)
    lookup = json.loads(
        run(
            stack,
            "--json",
            "users",
            "audiences",
            "--account",
            "acme",
            "--mpid",
            "9223372036854775807",
        ).stdout
    )
    members = run(
        stack, "--json", "audiences", "members", "--account", "acme", "--audience", "90318"
    )

    after = run(stack, "segments", "list", "--account", "acme", "--json")

    [entry] = segments["connectors"]
    assert entry["segments"][0]["member_count"] == "3"
    assert json.loads(after.stdout) == segments
    assert lookup == {"audience_ids": [90318]}
    assert sorted(json.loads(line) for line in members.stdout.splitlines()) == sorted(
        ["9223372036854775807", "-9223372036854775808", "2"]
    )


def test_keys_create_refuses_an_unknown_connector(stack: Stack) -> None:
    result = run(stack, "keys", "create", "--account", "acme", "--connector", "con_missing")

    assert result.exit_code == 1
    assert "NOT_FOUND" in result.stderr
    assert run(stack, "keys", "list", "--account", "acme").stdout.count("\n") == 1


def test_revoke_and_connector_delete_revoke_keys(stack: Stack) -> None:
    connector_id = run(stack, "connectors", "create", "--account", "acme", "--name", "Web").stdout
    run(stack, "keys", "create", "--account", "acme", "--connector", connector_id.strip())
    run(stack, "keys", "create", "--account", "acme", "--connector", connector_id.strip())

    deleted = run(stack, "connectors", "delete", "--account", "acme", connector_id.strip())
    listed = json.loads(run(stack, "--json", "keys", "list", "--account", "acme").stdout)

    assert "keys revoked: 2" in deleted.stdout
    assert all(int(k["revoked_at_ms"]) > 0 for k in listed["keys"])


def test_unreachable_service_is_a_clear_error() -> None:
    result = CliRunner().invoke(
        cli, ["--segment", "127.0.0.1:1", "--timeout", "1", "connectors", "list", "--account", "a"]
    )

    assert result.exit_code == 1
    assert "UNAVAILABLE" in result.stderr


def test_a_key_is_revoked_by_its_id_or_its_prefix(stack: Stack) -> None:
    connector_id = run(stack, "connectors", "create", "--account", "acme", "--name", "Web").stdout
    for _ in range(2):
        run(stack, "keys", "create", "--account", "acme", "--connector", connector_id.strip())
    keys = json.loads(run(stack, "--json", "keys", "list", "--account", "acme").stdout)["keys"]

    by_id = run(stack, "keys", "revoke", "--account", "acme", keys[0]["key_id"])
    by_prefix = run(stack, "keys", "revoke", "--account", "acme", keys[1]["prefix"])

    assert by_id.exit_code == 0 and by_prefix.exit_code == 0
    listed = json.loads(run(stack, "--json", "keys", "list", "--account", "acme").stdout)
    assert all(int(k["revoked_at_ms"]) > 0 for k in listed["keys"])


def test_connector_delete_in_json_lists_the_keys_it_revoked(stack: Stack) -> None:
    connector_id = run(stack, "connectors", "create", "--account", "acme", "--name", "Web")
    connector_id = connector_id.stdout.strip()
    created = run(
        stack, "--json", "keys", "create", "--account", "acme", "--connector", connector_id
    )

    deleted = run(stack, "--json", "connectors", "delete", "--account", "acme", connector_id)

    assert json.loads(deleted.stdout) == {
        "revoked_key_ids": [json.loads(created.stdout)["key"]["key_id"]]
    }


@pytest.mark.parametrize(
    "args",
    [
        ("audiences", "members", "--account", "acme", "--audience", "4294967296"),
        ("audiences", "members", "--account", "acme", "--audience", "0"),
        ("users", "audiences", "--account", "acme", "--mpid", str(2**63)),
        ("keys", "list", "--account", "\udcff"),
        ("connectors", "create", "--account", "acme", "--name", "\udcff"),
        ("--timeout", "nan", "keys", "list", "--account", "acme"),
        ("--timeout", "0", "keys", "list", "--account", "acme"),
        ("--timeout", "inf", "keys", "list", "--account", "acme"),
    ],
    ids=[
        "audience_too_big",
        "audience_zero",
        "mpid_too_big",
        "account_not_utf8",
        "name_not_utf8",
        "timeout_nan",
        "timeout_zero",
        "timeout_inf",
    ],
)
def test_bad_arguments_are_usage_errors_not_tracebacks(stack: Stack, args: tuple[str, ...]) -> None:
    result = run(stack, *args)

    assert result.exit_code == 2
    assert "Error: Invalid value" in result.stderr
