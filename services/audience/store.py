"""Audiences and memberships in Redis.

Every key of an account carries the hash tag ``{<account>}``, so each script and pipeline
stays within one Redis Cluster hash slot; accounts spread across a cluster's shards. Scripts
declare one key (``KEYS[1]``, which routes them to the account's slot) and build the names
of the others, all in that slot.

  au:idx:{A}               hash   audience id -> incarnation id (live audiences only)
  au:live:{A}              hash   incarnation id -> audience id
  au:seq:{A}               string last incarnation id issued
  au:meta:{A}:<aid>        hash   iid, name, description, connector (last), connectors
                                  (space-separated), subscribed, members, created, updated
                                  (ms), settings (JSON), and source times (ms): hw (newest
                                  change), dhw (newest removal of a member), subts
  au:mem:{A}:<iid>:<b>     set    MPIDs of one bucket (0-4095) of an audience's members
  au:usr:{A}:<mpid>        hash   incarnation id of each audience the MPID is in -> source
                                  time (ms) of the change that added it
  au:gone:{A}:<iid>:<g>:<b> hash  MPID -> source time (ms) of its removal from the audience,
                                  for removals applied in ordering generation g; b is the
                                  MPID's bucket
  au:gone-due:{A}          zset   "<iid>:<g>" for each incarnation and generation that has
                                  tombstones, scored by g
  au:gone-gens:{A}         set    the same, as earlier versions listed them (emptied into
                                  au:gone-due by the cleanup)
  au:gone-pos:{A}          hash   "<iid>:<g>" -> next tombstone hash to free
  au:gone-accounts         set    accounts that may have tombstones (single-key use)
  au:removed:{A}           hash   audience id -> source time (ms) of its last removal (kept
                                  when the audience is added again)
  au:gc:{A}                list   incarnations of removed audiences waiting for cleanup
  au:gcpos:{A}             hash   incarnation id -> next bucket to clean
  au:gc-accounts           set    accounts whose au:gc list is not empty (single-key use)

An incarnation id is issued each time an audience id (re)appears. Removing an audience
drops its incarnation from ``au:live`` at once, so lookups stop returning it, while its
member sets are freed in bounded steps; an audience re-added meanwhile gets a new
incarnation and cannot be touched by that cleanup.

Member sets are split in 4096 buckets so that each stays small enough for Redis's intset
encoding (8 bytes an MPID) up to a few million members. An MPID's bucket is the last 12
digits of its decimal string, sign included when there are fewer, modulo 4096
(``_with_buckets``); it is computed here and sent beside the MPID, as Lua's number conversions
cost Redis more than the commands they serve.

Ordering: a change carries its source time (mParticle's timestamp_ms). A change older than
the last change applied to the same membership is ignored. For a membership that exists,
this always holds (its add's source time is kept beside it); after a removal, it holds as
long as the removal was applied less than one ordering window ago (it may hold for up to
two): tombstones live in generations of one window each, read while their generation is
the current or the previous one; a background loop frees the older ones
(``free_old_tombstones``), so that no write pays for an expiry.
"""

import base64
import binascii
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast

import orjson
import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

from services.common.redis_pipelined import PipelinedConnection

BUCKETS = 4096
# A source time further ahead of our clock than this is taken as "now" (see the servicer).
MAX_CLOCK_SKEW_MS = 5 * 60 * 1000
# Membership changes applied by one script call: a few milliseconds of Redis time at most,
# so that other commands never wait long behind one.
APPLY_STEP = 500
CLEANUP_ACCOUNTS = "au:gc-accounts"
TOMBSTONE_ACCOUNTS = "au:gone-accounts"
# Tombstones of one audience and generation are spread over this many hashes, one per
# bucket, so that each stays short: a small hash is a list that HGET scans, and most
# lookups are misses.
TOMBSTONE_HASHES = BUCKETS
# A generation's tombstones are kept this long past the end of the next generation, for
# servers whose clocks differ by as much.
CLOCK_MARGIN_MS = 60 * 1000


@dataclass(frozen=True)
class AudienceRecord:
    audience_id: int
    name: str
    description: str
    connector_id: str
    connector_ids: list[str]
    subscribed: bool
    member_count: int
    created_at_ms: int
    updated_at_ms: int
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChangeResult:
    added: int
    removed: int
    stale: int


@dataclass(frozen=True)
class MemberPage:
    mpids: list[int]
    next_page_token: str


@dataclass(frozen=True)
class AudiencePage:
    audiences: list[AudienceRecord]
    next_page_token: str


class BadPageToken(ValueError):
    pass


def _tag(account_id: str) -> str:
    return "{" + account_id + "}"


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class AudienceStore:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        ordering_window_seconds: int = 3600,
        clock: Callable[[], int] = now_ms,
        pipelined: PipelinedConnection | None = None,
    ) -> None:
        """``clock`` gives the time in ms (tests move it to step through generations).

        ``pipelined``, when given, carries the scripts of the hot paths (the lookups, and the
        steps of membership changes), which cost the service less on it than on ``client``.
        """
        self._redis = client
        self._pipelined = pipelined
        self._window_ms = ordering_window_seconds * 1000
        self._clock = clock
        # The generation each account was last listed in TOMBSTONE_ACCOUNTS for, by us.
        self._listed_tombstones: dict[str, int] = {}
        self._apply = client.register_script(_script("apply_changes"))
        self._subscribe = client.register_script(_script("subscribe"))
        self._unsubscribe = client.register_script(_script("unsubscribe"))
        self._cleanup_step = client.register_script(_script("cleanup_step"))
        self._user_audiences = client.register_script(_script("user_audiences"))
        self._is_member = client.register_script(_script("is_member"))
        self._tombstone_cleanup = client.register_script(_script("tombstone_cleanup"))

    async def subscribe(
        self,
        account_id: str,
        connector_id: str,
        audience_id: int,
        name: str,
        description: str,
        settings: dict[str, str],
        source_time_ms: int,
    ) -> tuple[AudienceRecord | None, bool]:
        """Create or update an audience; returns it (None if removed since) and whether the
        change was applied (False when a newer one was applied before)."""
        tag = _tag(account_id)
        applied, flat = await self._subscribe(
            keys=[f"au:idx:{tag}"],
            args=[
                tag,
                now_ms(),
                connector_id,
                audience_id,
                name,
                description,
                orjson.dumps(settings, option=orjson.OPT_SORT_KEYS),
                source_time_ms,
            ],
        )
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return (_record(audience_id, fields) if fields else None), bool(applied)

    async def unsubscribe(self, account_id: str, audience_id: int, source_time_ms: int) -> bool:
        """Remove an audience now; its memberships are freed by ``cleanup``. Returns False
        when a newer subscription change was applied before."""
        tag = _tag(account_id)
        applied, pending = await self._unsubscribe(
            keys=[f"au:idx:{tag}", f"au:gc:{tag}"], args=[tag, audience_id, source_time_ms]
        )
        if pending:
            await self._redis.sadd(CLEANUP_ACCOUNTS, account_id)
        return bool(applied)

    async def apply_changes(
        self,
        account_id: str,
        connector_id: str,
        changes: list[tuple[int, str, Sequence[int], Sequence[int]]],
        source_time_ms: int,
    ) -> ChangeResult:
        """Apply (audience id, name, added MPIDs, deleted MPIDs) tuples, each change ignored
        if a newer change to its membership was applied before.

        Each step of at most APPLY_STEP changes is atomic, so that Redis is never blocked
        for long; if a later step fails, the earlier ones stay applied, and applying the
        batch again changes nothing more than applying it once.
        """
        tag = _tag(account_id)
        added = removed = stale = 0
        for step in _steps(changes, APPLY_STEP):
            now = self._clock()
            generation = now // self._window_ms
            args: list[str | int] = [
                tag,
                now,
                connector_id,
                len(step),
                source_time_ms,
                generation,
                # Tombstones written before this generation began carry source times no
                # later than its start plus the clock skew the service accepts.
                generation * self._window_ms + MAX_CLOCK_SKEW_MS,
            ]
            for audience_id, name, adds, deletes in step:
                args += (audience_id, name, _with_buckets(adds), _with_buckets(deletes))

            counts = await self._run(self._apply, [f"au:idx:{tag}"], *args)
            added, removed, stale = added + counts[0], removed + counts[1], stale + counts[2]

            wrote_tombstones = counts[3] == 1
            if wrote_tombstones and self._listed_tombstones.get(account_id) != generation:
                # After the step, so that the cleanup, which drops an account once all its
                # tombstones are freed, cannot drop it between the two.
                await self._redis.sadd(TOMBSTONE_ACCOUNTS, account_id)
                self._listed_tombstones[account_id] = generation
        return ChangeResult(added=added, removed=removed, stale=stale)

    async def user_audiences(self, account_id: str, mpid: int) -> list[int]:
        tag = _tag(account_id)
        ids = await self._run(self._user_audiences, [f"au:usr:{tag}:{mpid}", f"au:live:{tag}"])
        return sorted(int(i) for i in ids if i is not None)

    async def is_member(self, account_id: str, audience_id: int, mpid: int) -> bool:
        tag = _tag(account_id)
        found = await self._run(
            self._is_member, [f"au:idx:{tag}", f"au:usr:{tag}:{mpid}"], audience_id
        )
        return bool(found)

    async def _run(self, script: AsyncScript, keys: list[str], *args: str | int) -> Any:
        """Run a hot path's script on the pipelined connection, else on the pooled client.

        Each such script may run twice (it either changes nothing or changes the same
        again): when the connection is lost after the command was sent, the pooled client
        sends it again, as it does on its own connections.
        """
        if self._pipelined is not None:
            try:
                return await self._pipelined.execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except (redis.exceptions.ConnectionError, redis.exceptions.ResponseError):
                # Not loaded yet, a server restarting, a connection lost: the pooled client
                # loads the script, retries, and raises each error as its own type.
                pass
        return await script(keys=keys, args=list(args))

    async def get(self, account_id: str, audience_id: int) -> AudienceRecord | None:
        name = f"au:meta:{_tag(account_id)}:{audience_id}"
        fields = cast(dict[bytes, bytes], await self._redis.hgetall(name))
        return _record(audience_id, fields) if fields else None

    async def audiences_page(
        self, account_id: str, page_size: int, page_token: str
    ) -> AudiencePage:
        """About ``page_size`` live audiences of the account, ordered by audience id within
        the page. The pages follow the index's HSCAN: every audience that lives through the
        whole listing is on at least one page, and may be on two."""
        tag = _tag(account_id)
        cursor, found = await self._redis.hscan(
            f"au:idx:{tag}", _decode_scan_token(page_token), count=page_size
        )
        audience_ids = sorted(int(a) for a in found)

        async with self._redis.pipeline(transaction=False) as pipe:
            for audience_id in audience_ids:
                pipe.hgetall(f"au:meta:{tag}:{audience_id}")
            rows = await pipe.execute()
        records = [_record(a, f) for a, f in zip(audience_ids, rows, strict=True) if f]
        return AudiencePage(records, _encode_scan_token(cursor))

    async def members_page(
        self, account_id: str, audience_id: int, page_size: int, page_token: str
    ) -> MemberPage | None:
        """One page of an audience's members; None when the audience is unknown."""
        tag = _tag(account_id)
        found = cast(bytes | None, await self._redis.hget(f"au:idx:{tag}", audience_id))
        if found is None:
            return None

        iid = found.decode()
        bucket, after = _decode_token(page_token, iid)
        mpids: list[int] = []
        while bucket < BUCKETS:
            window = range(bucket, min(bucket + 256, BUCKETS))
            async with self._redis.pipeline(transaction=False) as pipe:
                for b in window:
                    pipe.smembers(f"au:mem:{tag}:{iid}:{b}")
                rows = await pipe.execute()

            for b, members in zip(window, rows, strict=True):
                ordered = sorted(int(m) for m in members)
                if after is not None:
                    ordered = [m for m in ordered if m > after]
                    after = None
                room = page_size - len(mpids)
                if len(ordered) > room:
                    mpids += ordered[:room]
                    return MemberPage(mpids, _encode_token(iid, b, mpids[-1]))
                mpids += ordered
                if len(mpids) == page_size and b + 1 < BUCKETS:
                    return MemberPage(mpids, _encode_token(iid, b + 1, None))
            bucket = window.stop

        return MemberPage(mpids, "")

    async def cleanup(self, *, member_budget: int = 500, bucket_budget: int = 256) -> int:
        """Do one bounded step of freeing removed audiences; returns steps still pending
        for the account it worked on (0 when there was nothing to do)."""
        account = cast(bytes | None, await self._redis.srandmember(CLEANUP_ACCOUNTS))
        if account is None:
            return 0

        account_id = account.decode()
        tag = _tag(account_id)
        pending = await self._cleanup_step(
            keys=[f"au:gc:{tag}"], args=[tag, member_budget, bucket_budget]
        )
        if pending == 0:
            await self._redis.srem(CLEANUP_ACCOUNTS, account_id)
            # A removal may have queued work between the step and the SREM.
            if await self._redis.llen(f"au:gc:{tag}"):
                await self._redis.sadd(CLEANUP_ACCOUNTS, account_id)
                return 1
        return pending

    async def free_old_tombstones(self, budget: int = 256, accounts: int = 16) -> int:
        """Free at most ``budget`` tombstone hashes of generations no change reads any more,
        in each of up to ``accounts`` accounts; returns how many (incarnation, generation)
        pairs still wait in them."""
        pending = 0
        oldest_read = (self._clock() - CLOCK_MARGIN_MS) // self._window_ms - 1
        listed_accounts = await self._redis.srandmember(TOMBSTONE_ACCOUNTS, accounts)
        for account in cast(list[bytes], listed_accounts):
            account_id = account.decode()
            tag = _tag(account_id)
            waiting, listed = await self._tombstone_cleanup(
                keys=[f"au:gone-due:{tag}", f"au:gone-gens:{tag}"],
                args=[tag, oldest_read, budget, TOMBSTONE_HASHES],
            )
            pending += waiting
            if listed == 0:
                await self._redis.srem(TOMBSTONE_ACCOUNTS, account_id)
                # A step may have written tombstones between the script and the SREM.
                if await self._redis.zcard(f"au:gone-due:{tag}"):
                    await self._redis.sadd(TOMBSTONE_ACCOUNTS, account_id)
                self._listed_tombstones.pop(account_id, None)
        return pending


Changes = list[tuple[int, str, Sequence[int], Sequence[int]]]


def _with_buckets(mpids: Sequence[int]) -> str:
    """The words apply_changes.lua reads: each MPID followed by its bucket, the last 12
    characters of its decimal string read as a number, modulo 4096 (so "-5" is in 4091).

    4096 divides 10**12, so the last 12 digits leave the remainder of the whole number:
    the bucket is the MPID's own remainder, or that of its absolute value once the minus
    sign is no longer among the last 12 characters.
    """
    return " ".join([f"{m} {(-m if m <= -(10**11) else m) % BUCKETS}" for m in mpids])


def _steps(changes: Changes, size: int) -> Iterator[Changes]:
    """Split changes into steps of at most ``size`` memberships, keeping their order."""
    step: Changes = []
    room = size
    for audience_id, name, adds, deletes in changes:
        # Positions in the lists, so that each step copies only what it takes.
        added = deleted = 0
        while added < len(adds) or deleted < len(deletes):
            take_adds = adds[added : added + room]
            take_deletes = deletes[deleted : deleted + room - len(take_adds)]
            step.append((audience_id, name, take_adds, take_deletes))
            added, deleted = added + len(take_adds), deleted + len(take_deletes)
            room -= len(take_adds) + len(take_deletes)
            if room == 0:
                yield step
                step, room = [], size
    if step:
        yield step


def _record(audience_id: int, fields: dict[bytes, bytes]) -> AudienceRecord:
    def text(name: bytes) -> str:
        return fields.get(name, b"").decode()

    def number(name: bytes) -> int:
        return int(fields.get(name, 0))

    return AudienceRecord(
        audience_id=audience_id,
        name=text(b"name"),
        description=text(b"description"),
        connector_id=text(b"connector"),
        connector_ids=text(b"connectors").split(),
        subscribed=text(b"subscribed") == "1",
        member_count=number(b"members"),
        created_at_ms=number(b"created"),
        updated_at_ms=number(b"updated"),
        settings=orjson.loads(fields[b"settings"]) if fields.get(b"settings") else {},
    )


_SCAN_TOKEN_PREFIX = "audiences:"


def _encode_scan_token(cursor: int) -> str:
    """The token of the page after the one HSCAN's ``cursor`` ended; none at the end."""
    return _opaque(f"{_SCAN_TOKEN_PREFIX}{cursor}") if cursor else ""


def _decode_scan_token(token: str) -> int:
    """The HSCAN cursor a token resumes from."""
    if not token:
        return 0
    try:
        raw = _unopaque(token)
        cursor = int(raw.removeprefix(_SCAN_TOKEN_PREFIX))
    except ValueError:
        raise BadPageToken("malformed page_token") from None
    if not raw.startswith(_SCAN_TOKEN_PREFIX) or not 0 < cursor < 2**64:
        raise BadPageToken("page_token belongs to another listing")
    return cursor


def _encode_token(iid: str, bucket: int, after: int | None) -> str:
    return _opaque(f"{iid}:{bucket}:{'' if after is None else after}")


def _decode_token(token: str, iid: str) -> tuple[int, int | None]:
    """The (bucket, last MPID returned) a token resumes from."""
    if not token:
        return 0, None
    try:
        token_iid, bucket, after = _unopaque(token).split(":")
        position = int(bucket), (int(after) if after else None)
    except ValueError:
        raise BadPageToken("malformed page_token") from None
    if token_iid != iid or not 0 <= position[0] < BUCKETS:
        raise BadPageToken("page_token belongs to another listing")
    return position


def _opaque(raw: str) -> str:
    """A page token's text as callers see it: URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _unopaque(token: str) -> str:
    """The text of a page token; ValueError when it is not one of ours."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("not a page token") from exc
