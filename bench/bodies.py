"""Membership change requests built as ../shared/fixtures/mparticle/large_batch_generator.md
describes: 1-3 audiences per profile from a pool of five, actions 70 % add, 25 % delete,
5 % attribute_update, MPIDs drawn from the whole signed 64-bit range (boundary values
first), 0-4 user identities and 0-2 device identities per profile."""

import random
import uuid
from dataclasses import dataclass

import orjson

USER_IDENTITY_TYPES = [
    "other",
    "customer",
    "facebook",
    "twitter",
    "google",
    "microsoft",
    "yahoo",
    "email",
    "other2",
    "other3",
    "other4",
    "other5",
    "other6",
    "other7",
    "other8",
    "other9",
    "other10",
    "mobile_number",
    "phone_number_2",
    "phone_number_3",
]
DEVICE_IDENTITY_TYPES = [
    "android_id",
    "google_advertising_id",
    "ios_advertising_id",
    "ios_vendor_id",
    "google_cloud_messaging_token",
    "apple_push_notification_token",
    "roku_advertising_id",
    "microsoft_advertising_id",
    "microsoft_publisher_id",
    "fire_advertising_id",
    "roku_publisher_id",
]
AUDIENCE_POOL = [(90000 + i * 101, f"Bench audience {i}") for i in range(5)]
BOUNDARY_MPIDS = ["9223372036854775807", "-9223372036854775808", "-1", "1"]


@dataclass(frozen=True)
class Body:
    content: bytes
    # Membership changes it carries (add and delete; attribute_update changes nothing).
    changes: int


def membership_body(
    rng: random.Random,
    api_key: str,
    profiles: int,
    *,
    timestamp_ms: int = 1767268800000,
    audiences: list[tuple[int, str]] = AUDIENCE_POOL,
    audiences_per_profile: tuple[int, int] = (1, 3),
    boundary_mpids: bool = True,
) -> Body:
    users = []
    changes = 0
    for i in range(profiles):
        if boundary_mpids and i < len(BOUNDARY_MPIDS):
            mpid = BOUNDARY_MPIDS[i]
        else:
            mpid = str(rng.randint(-(2**63), 2**63 - 1))
        entries = []
        count = rng.randint(*audiences_per_profile)
        for audience_id, name in rng.sample(audiences, min(count, len(audiences))):
            action = rng.choices(["add", "delete", "attribute_update"], [70, 25, 5])[0]
            entry = {"audience_id": audience_id, "audience_name": name, "action": action}
            if action == "attribute_update":
                entry["user_attributes"] = [{"key": "tier", "value": "gold", "action": "upsert"}]
            else:
                changes += 1
            entries.append(entry)
        users.append(
            {
                "mpid": mpid,
                "user_identities": [
                    _identity(rng, t, i) for t in _some(rng, USER_IDENTITY_TYPES, 4)
                ],
                "device_identities": [
                    _identity(rng, t, i) for t in _some(rng, DEVICE_IDENTITY_TYPES, 2)
                ],
                "audiences": entries,
            }
        )

    message = {
        "type": "audience_membership_change_request",
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp_ms": timestamp_ms,
        "firehose_version": "3.2.0",
        "account": {"account_id": 48213, "account_settings": {"apiKey": api_key}},
        "user_profiles": users,
    }
    return Body(orjson.dumps(message), changes)


def verification_body(api_key: str) -> bytes:
    return orjson.dumps(
        {
            "type": "audience_membership_change_request",
            "id": str(uuid.uuid4()),
            "timestamp_ms": 1767268800000,
            "firehose_version": "3.2.0",
            "account": {"account_id": 48213, "account_settings": {"apiKey": api_key}},
        }
    )


def _some(rng: random.Random, types: list[str], most: int) -> list[str]:
    return rng.sample(types, rng.randint(0, most))


def _identity(rng: random.Random, identity_type: str, i: int) -> dict[str, str]:
    if identity_type == "email":
        if rng.random() < 0.5:
            return {"type": "email", "encoding": "raw", "value": f"user{i}@example.com"}
        return {"type": "email", "encoding": "sha256", "value": f"{rng.getrandbits(256):064x}"}
    return {"type": identity_type, "encoding": "raw", "value": f"{identity_type}-{i}"}
