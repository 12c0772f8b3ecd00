"""The keys service over real gRPC, on a real Redis."""

import logging
import time
from typing import Any, cast

import grpc
import pytest
import redis

from protos.keys.v1 import keys_pb2
from services.keys.store import KEY_PATTERN
from tests.conftest import Stack


def create(keys_stub: Any, account: str = "acme", connector: str = "con_1") -> Any:
    return keys_stub.CreateKey(
        keys_pb2.CreateKeyRequest(account_id=account, connector_id=connector)
    )


def rpc_error(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args)
    return caught.value


def test_created_key_validates_to_its_owner(keys_stub: Any) -> None:
    created = create(keys_stub)

    owner = keys_stub.ValidateKey(keys_pb2.ValidateKeyRequest(plaintext=created.plaintext))

    assert KEY_PATTERN.fullmatch(created.plaintext)
    assert created.plaintext.startswith(created.key.prefix + "_")
    assert (owner.account_id, owner.connector_id, owner.key_id) == (
        "acme",
        "con_1",
        created.key.key_id,
    )


def test_only_a_hash_is_stored(keys_stub: Any, redis_client: redis.Redis) -> None:
    created = create(keys_stub)
    secret = created.plaintext[len(created.key.prefix) + 1 :]

    stored = b"".join(
        b"".join(k + v for k, v in cast(dict[bytes, bytes], redis_client.hgetall(name)).items())
        for name in redis_client.keys("ks:key:*")
    )

    assert secret and secret.encode() not in stored
    assert created.plaintext.encode() not in stored


@pytest.mark.parametrize(
    "plaintext",
    ["", "nonsense", "ak_000000000000_" + "A" * 43, "test-key-0000-not-a-real-secret"],
)
def test_unknown_or_malformed_keys_are_unauthenticated(keys_stub: Any, plaintext: str) -> None:
    error = rpc_error(keys_stub.ValidateKey, keys_pb2.ValidateKeyRequest(plaintext=plaintext))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert plaintext not in error.details() or not plaintext


def test_a_wrong_secret_for_a_real_key_id_is_unauthenticated(keys_stub: Any) -> None:
    created = create(keys_stub)
    forged = created.plaintext[:-1] + ("A" if created.plaintext[-1] != "A" else "B")

    error = rpc_error(keys_stub.ValidateKey, keys_pb2.ValidateKeyRequest(plaintext=forged))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_revoked_key_stops_validating(keys_stub: Any) -> None:
    created = create(keys_stub)

    revoked = keys_stub.RevokeKey(
        keys_pb2.RevokeKeyRequest(account_id="acme", key_id=created.key.key_id)
    ).key
    again = keys_stub.RevokeKey(
        keys_pb2.RevokeKeyRequest(account_id="acme", key_id=created.key.key_id)
    ).key

    assert revoked.revoked_at_ms > 0
    assert again.revoked_at_ms == revoked.revoked_at_ms
    error = rpc_error(
        keys_stub.ValidateKey, keys_pb2.ValidateKeyRequest(plaintext=created.plaintext)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_another_account_cannot_revoke_a_key(keys_stub: Any) -> None:
    created = create(keys_stub, account="acme")

    error = rpc_error(
        keys_stub.RevokeKey,
        keys_pb2.RevokeKeyRequest(account_id="globex", key_id=created.key.key_id),
    )

    assert error.code() == grpc.StatusCode.NOT_FOUND
    keys_stub.ValidateKey(keys_pb2.ValidateKeyRequest(plaintext=created.plaintext))


def test_list_shows_keys_newest_first_without_secrets(keys_stub: Any) -> None:
    first = create(keys_stub)
    second = create(keys_stub, connector="con_2")
    create(keys_stub, account="globex")
    keys_stub.ValidateKey(keys_pb2.ValidateKeyRequest(plaintext=first.plaintext))

    listed = keys_stub.ListKeys(keys_pb2.ListKeysRequest(account_id="acme")).keys

    assert [k.key_id for k in listed] == [second.key.key_id, first.key.key_id]
    assert listed[1].last_used_at_ms >= listed[1].created_at_ms > 0
    assert listed[0].last_used_at_ms == 0
    assert first.plaintext not in str(listed)


@pytest.mark.parametrize("account", ["", "has space", "{braces}", "x" * 65])
def test_malformed_account_ids_are_invalid(keys_stub: Any, account: str) -> None:
    error = rpc_error(
        keys_stub.CreateKey, keys_pb2.CreateKeyRequest(account_id=account, connector_id="c")
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_over_long_account_id_is_cut_in_the_log_line(
    keys_stub: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    error = rpc_error(keys_stub.ListKeys, keys_pb2.ListKeysRequest(account_id="Z" * 100_000))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    # The server logs its line once the answer is sent: it may come just after.
    deadline = time.monotonic() + 5
    while not (lines := [r for r in caplog.records if r.__dict__.get("account", "")[:1] == "Z"]):
        assert time.monotonic() < deadline, "no rpc line"
        time.sleep(0.01)
    [line] = lines
    assert line.getMessage() == "rpc"
    assert line.__dict__["account"] == "Z" * 64 + "..."


@pytest.mark.parametrize(
    # Field 1 (account_id): two bytes that are not UTF-8; five announced, two sent.
    "sent",
    [b"\x0a\x02\xff\xfe", b"\x0a\x05ab"],
    ids=["not_utf8", "truncated"],
)
def test_bytes_that_are_not_a_request_are_invalid_argument(stack: Stack, sent: bytes) -> None:
    with grpc.insecure_channel(stack.target("keys")) as channel:
        call = channel.unary_unary("/keys.v1.KeyService/ListKeys")
        with pytest.raises(grpc.RpcError) as caught:
            call(sent, timeout=5)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
