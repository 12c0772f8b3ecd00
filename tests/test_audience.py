"""The audience service over real gRPC, on a real Redis."""

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import grpc
import pytest
import redis
import redis.asyncio
import redis.crc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from services.audience.server import create_server
from services.audience.settings import AudienceSettings
from services.audience.store import (
    CLOCK_MARGIN_MS,
    TOMBSTONE_ACCOUNTS,
    TOMBSTONE_HASHES,
    AudienceStore,
)
from services.common.embedded_redis import free_port
from services.common.validation import AUDIENCES_PER_CALL_MAX

ADD = audience_pb2.SUBSCRIPTION_ACTION_ADD
REMOVE = audience_pb2.SUBSCRIPTION_ACTION_REMOVE


def subscribe(stub: Any, audience_id: int, name: str = "A", account: str = "acme") -> Any:
    return stub.ApplySubscription(
        audience_pb2.ApplySubscriptionRequest(
            account_id=account,
            connector_id="con_1",
            action=ADD,
            audience_id=audience_id,
            audience_name=name,
        )
    )


def unsubscribe(stub: Any, audience_id: int, account: str = "acme") -> None:
    stub.ApplySubscription(
        audience_pb2.ApplySubscriptionRequest(
            account_id=account, connector_id="con_1", action=REMOVE, audience_id=audience_id
        )
    )


def change(
    stub: Any,
    audience_id: int,
    add: Sequence[int] = (),
    delete: Sequence[int] = (),
    account: str = "acme",
) -> Any:
    return stub.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id=account,
            connector_id="con_1",
            audiences=[
                audience_pb2.AudienceChanges(
                    audience_id=audience_id,
                    audience_name=f"Audience {audience_id}",
                    add_mpids=add,
                    delete_mpids=delete,
                )
            ],
        )
    )


def audiences_of(stub: Any, mpid: int, account: str = "acme") -> list[int]:
    reply = stub.GetUserAudiences(
        audience_pb2.GetUserAudiencesRequest(account_id=account, mpid=mpid)
    )
    return list(reply.audience_ids)


def count(stub: Any, audience_id: int) -> int:
    request = audience_pb2.CountMembersRequest(account_id="acme", audience_id=audience_id)
    return stub.CountMembers(request).member_count


def wait_for_cleanup(client: redis.Redis, account: str = "acme") -> None:
    deadline = time.monotonic() + 20
    while client.llen(f"au:gc:{{{account}}}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.llen(f"au:gc:{{{account}}}") == 0


def rpc_error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def test_counts_report_what_changed(audience_stub: Any) -> None:
    first = change(audience_stub, 7, add=[1, 2, 3])
    again = change(audience_stub, 7, add=[1, 2, 3])
    mixed = change(audience_stub, 7, add=[4], delete=[1, 99])

    assert (first.added, first.removed, first.unchanged) == (3, 0, 0)
    assert (again.added, again.removed, again.unchanged) == (0, 0, 3)
    assert (mixed.added, mixed.removed, mixed.unchanged) == (1, 1, 1)
    assert count(audience_stub, 7) == 3


def test_lookups_are_scoped_to_the_account(audience_stub: Any) -> None:
    change(audience_stub, 7, add=[42], account="acme")
    change(audience_stub, 8, add=[42], account="globex")

    assert audiences_of(audience_stub, 42, "acme") == [7]
    assert audiences_of(audience_stub, 42, "globex") == [8]
    assert audiences_of(audience_stub, 42, "initech") == []


def test_changes_and_lookups_work_after_redis_forgot_their_scripts(
    audience_stub: Any, redis_client: redis.Redis
) -> None:
    """As after a restart or a failover: the scripts are loaded again, each change once."""
    change(audience_stub, 7, add=[42])
    assert audiences_of(audience_stub, 42) == [7]

    redis_client.script_flush()
    changed = change(audience_stub, 8, add=[42, 43])

    assert (changed.added, changed.unchanged) == (2, 0)
    redis_client.script_flush()
    assert audiences_of(audience_stub, 42) == [7, 8]
    redis_client.script_flush()
    check = audience_pb2.CheckMembershipRequest(account_id="acme", audience_id=8, mpid=43)
    assert audience_stub.CheckMembership(check).member


def test_members_page_through_exactly_once(audience_stub: Any) -> None:
    mpids = {-(2**63), 2**63 - 1, 0, -1} | {i * 7919 for i in range(1, 300)}
    change(audience_stub, 7, add=sorted(mpids))

    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = audience_stub.ListMembers(
            audience_pb2.ListMembersRequest(
                account_id="acme", audience_id=7, page_size=7, page_token=token
            )
        )
        assert len(page.mpids) <= 7
        seen += page.mpids
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert sorted(seen) == sorted(mpids)
    assert pages >= len(mpids) // 7


def test_page_tokens_are_checked(audience_stub: Any) -> None:
    change(audience_stub, 7, add=list(range(1, 50)))
    change(audience_stub, 8, add=list(range(1, 50)))
    page = audience_stub.ListMembers(
        audience_pb2.ListMembersRequest(account_id="acme", audience_id=7, page_size=5)
    )

    for token in ("garbage!", page.next_page_token):
        error = rpc_error(
            audience_stub.ListMembers,
            audience_pb2.ListMembersRequest(account_id="acme", audience_id=8, page_token=token),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def list_audience_pages(stub: Any, page_size: int, account: str = "acme") -> list[list[int]]:
    """The audience ids of each page of ListAudiences, until the last."""
    pages, token = [], ""
    while True:
        page = stub.ListAudiences(
            audience_pb2.ListAudiencesRequest(
                account_id=account, page_size=page_size, page_token=token, without_settings=True
            )
        )
        pages.append([a.audience_id for a in page.audiences])
        token = page.next_page_token
        if not token:
            return pages


def test_audiences_page_through_each_at_least_once(audience_stub: Any) -> None:
    """An account of thousands of audiences is listed in pages of about the size asked, so
    that no call holds the service long; one of a few is listed in one page, in order."""
    audience_stub.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id="con_1",
            audiences=[
                audience_pb2.AudienceChanges(audience_id=a, add_mpids=[a]) for a in range(1, 3001)
            ],
        )
    )
    for a in (5, 3, 9):
        subscribe(audience_stub, a, account="small")

    pages = list_audience_pages(audience_stub, page_size=250)

    assert {a for page in pages for a in page} == set(range(1, 3001))
    assert len(pages) >= 3000 // 500
    assert max(len(page) for page in pages) < 500
    assert all(page == sorted(page) for page in pages)
    assert list_audience_pages(audience_stub, page_size=1, account="small") == [[3, 5, 9]]


def test_audience_pages_are_checked(audience_stub: Any) -> None:
    change(audience_stub, 7, add=list(range(1, 50)))
    members = audience_stub.ListMembers(
        audience_pb2.ListMembersRequest(account_id="acme", audience_id=7, page_size=5)
    )
    for request in (
        audience_pb2.ListAudiencesRequest(account_id="acme", page_size=10_001),
        audience_pb2.ListAudiencesRequest(account_id="acme", page_size=-1),
        audience_pb2.ListAudiencesRequest(account_id="acme", page_token="garbage!"),
        audience_pb2.ListAudiencesRequest(account_id="acme", page_token=members.next_page_token),
    ):
        error = rpc_error(audience_stub.ListAudiences, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request


def test_unknown_audience_is_not_found_for_counts_and_members(audience_stub: Any) -> None:
    for call, request in (
        (
            audience_stub.CountMembers,
            audience_pb2.CountMembersRequest(account_id="a", audience_id=5),
        ),
        (audience_stub.ListMembers, audience_pb2.ListMembersRequest(account_id="a", audience_id=5)),
    ):
        assert rpc_error(call, request).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_",
    [
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id="c",
            audiences=[
                audience_pb2.AudienceChanges(audience_id=1, add_mpids=[5], delete_mpids=[5])
            ],
        ),
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id="c",
            audiences=[
                audience_pb2.AudienceChanges(audience_id=1, add_mpids=[5]),
                audience_pb2.AudienceChanges(audience_id=1, add_mpids=[6]),
            ],
        ),
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id="c",
            audiences=[audience_pb2.AudienceChanges(audience_id=0, add_mpids=[5])],
        ),
        audience_pb2.ApplyMembershipChangesRequest(account_id="ac:me", connector_id="c"),
        audience_pb2.ApplyMembershipChangesRequest(
            account_id="acme",
            connector_id="c",
            audiences=[
                audience_pb2.AudienceChanges(audience_id=a, add_mpids=[5])
                for a in range(1, AUDIENCES_PER_CALL_MAX + 2)
            ],
        ),
    ],
    ids=["mpid-twice", "audience-twice", "audience-zero", "bad-account", "too-many-audiences"],
)
def test_contract_violations_are_invalid_and_change_nothing(
    audience_stub: Any, redis_client: redis.Redis, request_: Any
) -> None:
    error = rpc_error(audience_stub.ApplyMembershipChanges, request_)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert redis_client.keys("au:*") == []


_BUSY_SCRIPT = """
local started = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - started[1]) * 1000000 + (now[2] - started[2]) > 1500000 then return 1 end
end
"""


def test_a_busy_redis_is_unavailable_not_internal(
    audience_stub: Any, redis_client: redis.Redis
) -> None:
    """Redis answers BUSY while another client's script runs past busy-reply-threshold: a
    passing fault, answered UNAVAILABLE like an unreachable server."""
    threshold = cast(dict[str, str], redis_client.config_get("busy-reply-threshold"))[
        "busy-reply-threshold"
    ]
    redis_client.config_set("busy-reply-threshold", 10)
    request = audience_pb2.GetUserAudiencesRequest(account_id="acme", mpid=1)
    busy = threading.Thread(target=redis_client.eval, args=(_BUSY_SCRIPT, 0))
    try:
        busy.start()
        # Until Redis answers BUSY to everyone else.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                redis_client.ping()
            except redis.ResponseError:
                break
        with pytest.raises(grpc.RpcError) as raised:
            audience_stub.GetUserAudiences(request, timeout=5)
    finally:
        busy.join()
        redis_client.config_set("busy-reply-threshold", threshold)

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert audience_stub.GetUserAudiences(request, timeout=5).audience_ids == []


def test_subscription_needs_a_name_and_an_action(audience_stub: Any) -> None:
    for request in (
        audience_pb2.ApplySubscriptionRequest(
            account_id="acme", connector_id="c", action=ADD, audience_id=1
        ),
        audience_pb2.ApplySubscriptionRequest(
            account_id="acme", connector_id="c", audience_id=1, audience_name="x"
        ),
    ):
        error = rpc_error(audience_stub.ApplySubscription, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_removing_a_large_audience_frees_everything_in_bounded_steps(
    audience_stub: Any, redis_client: redis.Redis
) -> None:
    subscribe(audience_stub, 7)
    subscribe(audience_stub, 8)
    members = list(range(-10_000, 10_000))
    for start in range(0, len(members), 5_000):
        change(audience_stub, 7, add=members[start : start + 5_000])
    change(audience_stub, 8, add=[5])

    unsubscribe(audience_stub, 7)

    assert audiences_of(audience_stub, 5) == [8]
    assert audiences_of(audience_stub, -10_000) == []
    wait_for_cleanup(redis_client)
    assert redis_client.keys("au:usr:*") == [b"au:usr:{acme}:5"]
    assert len(redis_client.keys("au:mem:*")) == 1
    assert count(audience_stub, 8) == 1


def test_readding_during_cleanup_keeps_the_new_memberships(
    audience_stub: Any, redis_client: redis.Redis
) -> None:
    subscribe(audience_stub, 7)
    change(audience_stub, 7, add=list(range(20_000)))

    unsubscribe(audience_stub, 7)
    subscribe(audience_stub, 7, name="Back again")
    change(audience_stub, 7, add=[3, 19_999, 50_000])

    assert audiences_of(audience_stub, 3) == [7]
    wait_for_cleanup(redis_client)
    assert audiences_of(audience_stub, 3) == [7]
    assert audiences_of(audience_stub, 4) == []
    assert count(audience_stub, 7) == 3
    assert len(redis_client.keys("au:usr:*")) == 3


def test_members_and_tombstones_land_in_the_bucket_of_their_last_12_characters(
    audience_stub: Any, redis_client: redis.Redis
) -> None:
    """The layout stored data already has: computing buckets elsewhere must not move it."""
    mpids = [-(2**63), 2**63 - 1, -5, -1, 0, 4096, -4097, -(10**11) + 1, -(10**11), 10**12 + 7]
    subscribe(audience_stub, 7)
    change(audience_stub, 7, add=mpids)
    change(audience_stub, 7, delete=[2**63 - 1, -5])

    iid = cast(bytes, redis_client.hget("au:idx:{acme}", 7)).decode()
    for mpid in mpids:
        bucket = int(str(mpid)[-12:]) % 4096
        member = redis_client.sismember(f"au:mem:{{acme}}:{iid}:{bucket}", str(mpid))
        assert member == (mpid not in (2**63 - 1, -5)), mpid
    tombstones = [name.decode() for name in cast(list[bytes], redis_client.keys("au:gone:*"))]
    buckets = sorted(int(name.rsplit(":", 1)[1]) for name in tombstones)
    assert buckets == sorted([int(str(2**63 - 1)[-12:]) % 4096, 4091])


def test_remove_of_an_unknown_audience_succeeds(audience_stub: Any) -> None:
    unsubscribe(audience_stub, 12345)


def test_every_key_of_an_account_lives_in_one_cluster_slot(
    audience_stub: Any, redis_client: redis.Redis
) -> None:
    for account in ("acme", "globex"):
        subscribe(audience_stub, 7, account=account)
        change(audience_stub, 7, add=[1, -(2**63)], account=account)
        change(audience_stub, 8, add=[2], account=account)
        change(audience_stub, 7, delete=[1], account=account)
        unsubscribe(audience_stub, 8, account=account)

    for name in cast(list[bytes], redis_client.keys("*")):
        if name in (b"au:gc-accounts", b"au:gone-accounts"):
            continue
        tag = name[name.index(b"{") + 1 : name.index(b"}")]
        assert redis.crc.key_slot(name) == redis.crc.key_slot(tag), name


def test_storage_outage_is_unavailable_and_not_serving() -> None:
    """A server whose Redis is down answers UNAVAILABLE and reports NOT_SERVING."""

    async def scenario() -> tuple[grpc.StatusCode, int]:
        settings = AudienceSettings(
            redis_url=f"redis://127.0.0.1:{free_port()}/0",
            port=0,
            metrics_port=0,
            readiness_interval_seconds=0.1,
        )
        server = await create_server(settings)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                audience = audience_pb2_grpc.AudienceServiceStub(channel)
                request = audience_pb2.GetUserAudiencesRequest(account_id="acme", mpid=1)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await audience.GetUserAudiences(request, timeout=5)
                health = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                return caught.value.code(), health.status
        finally:
            await server.stop(0)

    code, status = asyncio.run(scenario())

    assert code == grpc.StatusCode.UNAVAILABLE
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_tombstones_are_freed_in_bounded_steps_once_no_change_reads_them(
    redis_server: Any,
) -> None:
    hour = 3600 * 1000
    start = 1_767_268_800_000  # the start of an ordering generation (windows of an hour)
    assert start % hour == 0

    async def scenario() -> None:
        # Database 1: the running suite's own cleanup loop, on database 0, keeps real time.
        client = redis.asyncio.Redis(port=redis_server.port, db=1)
        now = [start]
        store = AudienceStore(client, ordering_window_seconds=3600, clock=lambda: now[0])

        async def tombstones() -> int:
            return len(await client.keys("au:gone:*"))

        await store.apply_changes("acme", "con_1", [(5, "Five", [13], [])], start)
        listed_after_adds = await client.smembers(TOMBSTONE_ACCOUNTS)
        await store.apply_changes("acme", "con_1", [(5, "Five", [], [11, 12])], start)
        written = await tombstones()
        listed_after_deletes = await client.smembers(TOMBSTONE_ACCOUNTS)

        # Read while their generation is the current or the previous one...
        now[0] = start + hour
        older_add = await store.apply_changes("acme", "con_1", [(5, "Five", [11], [])], start - 1)
        # ...and kept a margin longer, for servers whose clocks differ.
        now[0] = start + 2 * hour + CLOCK_MARGIN_MS - 1
        waiting = await store.free_old_tombstones(budget=256)
        kept = await tombstones()

        now[0] += 1
        steps = 0
        while await store.free_old_tombstones(budget=256):
            steps += 1
        freed = await tombstones()
        accounts = await client.smembers(TOMBSTONE_ACCOUNTS)
        await client.aclose()

        assert listed_after_adds == set() and listed_after_deletes == {b"acme"}
        assert written == 2
        assert older_add.stale == 1
        assert waiting == 0 and kept == 2
        # One hash a bucket, 256 a step: all steps but the last report work still waiting.
        assert steps == TOMBSTONE_HASHES // 256 - 1
        assert freed == 0 and accounts == set()

    asyncio.run(scenario())


def test_due_tombstones_are_found_among_many_listed_ones_and_earlier_listings_are_taken_over(
    redis_server: Any,
) -> None:
    """The cleanup reads what is due, a budget at a time, not every pair the account lists;
    pairs listed in the set of earlier versions are moved over and freed as well."""
    hour = 3600 * 1000
    start = 1_767_268_800_000
    generation = start // hour

    async def scenario() -> None:
        client = redis.asyncio.Redis(port=redis_server.port, db=1)
        now = [start]
        store = AudienceStore(client, ordering_window_seconds=3600, clock=lambda: now[0])
        # An earlier version's listing: a pair of the generation before, with two hashes.
        earlier = f"9999:{generation - 1}"
        await client.sadd("au:gone-gens:{acme}", earlier)
        for bucket in (0, 1):
            await client.hset(f"au:gone:{{acme}}:{earlier}:{bucket}", "1", "1")
        await client.sadd(TOMBSTONE_ACCOUNTS, "acme")
        # 600 audiences with removals in this generation: listed, not due for two more.
        await store.apply_changes(
            "acme", "con_1", [(a, f"A{a}", [], [a]) for a in range(1, 601)], start
        )

        async def free_all() -> int:
            steps = 1
            while await store.free_old_tombstones(budget=256):
                steps += 1
            return steps

        now[0] = start + hour + CLOCK_MARGIN_MS
        earlier_steps = await free_all()
        kept = len(await client.keys("au:gone:*"))
        listed = await client.zcard("au:gone-due:{acme}")
        earlier_left = await client.exists("au:gone-gens:{acme}")

        now[0] = start + 2 * hour + CLOCK_MARGIN_MS
        steps = await free_all()
        freed = len(await client.keys("au:gone:*"))
        accounts = await client.smembers(TOMBSTONE_ACCOUNTS)
        await client.aclose()

        assert (kept, listed, earlier_left) == (600, 600, 0)
        assert freed == 0 and accounts == set()
        # 4096 hashes a pair, 256 a step.
        assert earlier_steps == TOMBSTONE_HASHES // 256
        assert steps == 600 * TOMBSTONE_HASHES // 256

    asyncio.run(scenario())
