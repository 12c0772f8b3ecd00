"""API keys in Redis. Only an HMAC-SHA256 of each key's secret is kept.

Keys (``{}`` is a Redis Cluster hash tag; no command spans two slots):
  ks:key:{<key id>}       hash: account, connector, digest, created, last_used, revoked
  ks:account:{<account>}  sorted set: key id -> created (ms)
"""

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import cast

import redis.asyncio

KEY_PATTERN = re.compile(r"ak_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")

# last_used is written at most this often per key, to keep validation a read.
TOUCH_INTERVAL_MS = 60_000


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    account_id: str
    connector_id: str
    created_at_ms: int
    last_used_at_ms: int
    revoked_at_ms: int

    @property
    def prefix(self) -> str:
        return f"ak_{self.key_id}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _key_name(key_id: str) -> str:
    return f"ks:key:{{{key_id}}}"


def _account_name(account_id: str) -> str:
    return f"ks:account:{{{account_id}}}"


class KeyStore:
    def __init__(self, client: redis.asyncio.Redis, hash_secret: bytes) -> None:
        self._redis = client
        self._hash_secret = hash_secret

    async def create(self, account_id: str, connector_id: str) -> tuple[KeyRecord, str]:
        """Issue a key; returns its record and the plaintext, which is not kept."""
        key_id = secrets.token_hex(6)
        while await self._redis.exists(_key_name(key_id)):
            key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = _now_ms()

        # The index entry goes first: a key that exists is always listed, so it can be found
        # and revoked even if the second write fails.
        await self._redis.zadd(_account_name(account_id), {key_id: now})
        await self._redis.hset(
            _key_name(key_id),
            mapping={
                "account": account_id,
                "connector": connector_id,
                "digest": self._digest(secret),
                "created": now,
                "last_used": 0,
                "revoked": 0,
            },
        )

        record = KeyRecord(key_id, account_id, connector_id, now, 0, 0)
        return record, f"ak_{key_id}_{secret}"

    async def authenticate(self, plaintext: str) -> KeyRecord | None:
        """The active key ``plaintext`` is, or None when it is malformed, unknown or revoked."""
        match = KEY_PATTERN.fullmatch(plaintext)
        if match is None:
            return None

        key_id, secret = match.groups()
        fields = await self._fields(_key_name(key_id))
        digest = fields.get(b"digest", b"").decode()
        if not hmac.compare_digest(digest, self._digest(secret)):
            return None

        record = _record(key_id, fields)
        if record.revoked_at_ms:
            return None

        now = _now_ms()
        if now - record.last_used_at_ms >= TOUCH_INTERVAL_MS:
            await self._redis.hset(_key_name(key_id), "last_used", now)
        return record

    async def revoke(self, account_id: str, key_id: str) -> KeyRecord | None:
        """Revoke an account's key; None when the account has no such key."""
        name = _key_name(key_id)
        fields = await self._fields(name)
        if fields.get(b"account", b"").decode() != account_id:
            return None

        record = _record(key_id, fields)
        if record.revoked_at_ms:
            return record

        await self._redis.hset(name, "revoked", _now_ms())
        return _record(key_id, await self._fields(name))

    async def list(self, account_id: str) -> list[KeyRecord]:
        """An account's keys, newest first."""
        listed = cast(list[bytes], await self._redis.zrevrange(_account_name(account_id), 0, -1))
        key_ids = [k.decode() for k in listed]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key_id in key_ids:
                pipe.hgetall(_key_name(key_id))
            rows = await pipe.execute()
        return [_record(k, fields) for k, fields in zip(key_ids, rows, strict=True) if fields]

    async def _fields(self, name: str) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self._redis.hgetall(name))

    def _digest(self, secret: str) -> str:
        return hmac.new(self._hash_secret, secret.encode(), hashlib.sha256).hexdigest()


def _record(key_id: str, fields: dict[bytes, bytes]) -> KeyRecord:
    return KeyRecord(
        key_id=key_id,
        account_id=fields.get(b"account", b"").decode(),
        connector_id=fields.get(b"connector", b"").decode(),
        created_at_ms=int(fields.get(b"created", 0)),
        last_used_at_ms=int(fields.get(b"last_used", 0)),
        revoked_at_ms=int(fields.get(b"revoked", 0)),
    )
