"""Connectors in Redis.

sg:con:{A}    hash  connector id -> JSON {"name", "created" (ms)}
sg:name:{A}   hash  connector name -> connector id (names are unique per account)
"""

import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import cast

import orjson
import redis.asyncio


@dataclass(frozen=True)
class ConnectorRecord:
    connector_id: str
    account_id: str
    name: str
    created_at_ms: int


class NameTaken(Exception):
    pass


def _script(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def _keys(account_id: str) -> list[str]:
    tag = "{" + account_id + "}"
    return [f"sg:con:{tag}", f"sg:name:{tag}"]


class ConnectorStore:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._redis = client
        self._create = client.register_script(_script("create_connector"))
        self._delete = client.register_script(_script("delete_connector"))

    async def create(self, account_id: str, name: str) -> ConnectorRecord:
        """Raises NameTaken when the account has a connector of that name."""
        record = ConnectorRecord(
            connector_id="con_" + secrets.token_hex(8),
            account_id=account_id,
            name=name,
            created_at_ms=time.time_ns() // 1_000_000,
        )
        payload = orjson.dumps({"name": record.name, "created": record.created_at_ms})

        if not await self._create(
            keys=_keys(account_id), args=[record.connector_id, name, payload]
        ):
            raise NameTaken(name)
        return record

    async def get(self, account_id: str, connector_id: str) -> ConnectorRecord | None:
        raw = cast(bytes | None, await self._redis.hget(_keys(account_id)[0], connector_id))
        return _record(account_id, connector_id, raw) if raw else None

    async def list(self, account_id: str) -> list[ConnectorRecord]:
        """An account's connectors, ordered by name."""
        rows = cast(dict[bytes, bytes], await self._redis.hgetall(_keys(account_id)[0]))
        records = [_record(account_id, k.decode(), v) for k, v in rows.items()]
        return sorted(records, key=lambda r: (r.name.casefold(), r.name, r.connector_id))

    async def delete(self, account_id: str, connector_id: str) -> bool:
        return bool(await self._delete(keys=_keys(account_id), args=[connector_id]))


def _record(account_id: str, connector_id: str, raw: bytes) -> ConnectorRecord:
    fields = orjson.loads(raw)
    return ConnectorRecord(connector_id, account_id, fields["name"], fields["created"])
