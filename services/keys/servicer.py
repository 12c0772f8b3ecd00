import grpc
from prometheus_client import Counter

from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from services.common import logs
from services.common.rpc import abort
from services.common.validation import require_id
from services.keys.store import KeyRecord, KeyStore

KEY_VALIDATIONS = Counter(
    "keys_validations_total", "API key validations, by outcome (valid or rejected).", ["outcome"]
)


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, store: KeyStore) -> None:
        self._store = store

    async def CreateKey(
        self, request: keys_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.CreateKeyResponse:
        await require_id(context, "account_id", request.account_id)
        await require_id(context, "connector_id", request.connector_id)

        record, plaintext = await self._store.create(request.account_id, request.connector_id)
        return keys_pb2.CreateKeyResponse(key=_to_proto(record), plaintext=plaintext)

    async def ValidateKey(
        self, request: keys_pb2.ValidateKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ValidateKeyResponse:
        record = await self._store.authenticate(request.plaintext)
        if record is None:
            KEY_VALIDATIONS.labels("rejected").inc()
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "invalid API key")

        KEY_VALIDATIONS.labels("valid").inc()
        logs.account.set(record.account_id)
        return keys_pb2.ValidateKeyResponse(
            account_id=record.account_id, connector_id=record.connector_id, key_id=record.key_id
        )

    async def RevokeKey(
        self, request: keys_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.RevokeKeyResponse:
        await require_id(context, "account_id", request.account_id)

        record = await self._store.revoke(request.account_id, request.key_id)
        if record is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "the account has no such key")
        return keys_pb2.RevokeKeyResponse(key=_to_proto(record))

    async def ListKeys(
        self, request: keys_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ListKeysResponse:
        await require_id(context, "account_id", request.account_id)

        records = await self._store.list(request.account_id)
        return keys_pb2.ListKeysResponse(keys=[_to_proto(r) for r in records])


def _to_proto(record: KeyRecord) -> keys_pb2.Key:
    return keys_pb2.Key(
        key_id=record.key_id,
        account_id=record.account_id,
        connector_id=record.connector_id,
        prefix=record.prefix,
        created_at_ms=record.created_at_ms,
        last_used_at_ms=record.last_used_at_ms,
        revoked_at_ms=record.revoked_at_ms,
    )
