"""Reading mParticle Firehose messages (see PROTOCOL.md), with pydantic.

The envelope of a message must be readable, or the whole message is refused with a 4xx.
Inside a membership change, each user profile and each of its audience entries is checked
on its own: a bad one is skipped and counted, and the good ones beside it are kept, since
mParticle never retries a 4xx and refusing the batch would lose them all.

Unknown fields are ignored everywhere, as mParticle adds fields over time.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from services.common.validation import AUDIENCE_ID_MAX, MPID_MAX, MPID_MIN
from services.gateway.errors import ApiError

REGISTRATION = "module_registration_request"
SUBSCRIPTION = "audience_subscription_request"
MEMBERSHIP = "audience_membership_change_request"

_DECIMAL = re.compile(r"-?[0-9]{1,20}")


def _whole_number(value: Any) -> int:
    """An integer given as a JSON integer or a decimal string; never a bool or a float."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    raise ValueError("must be an integer or a decimal string")


def _mpid(value: Any) -> int:
    number = _whole_number(value)
    if not MPID_MIN <= number <= MPID_MAX:
        raise ValueError("must be within the signed 64-bit range")
    return number


def _setting_value(value: Any) -> str:
    """Account and audience settings are strings; scalars of other types are read as text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ValueError("must be a string")


Mpid = Annotated[int, BeforeValidator(_mpid)]
AudienceId = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=AUDIENCE_ID_MAX)]
SettingValue = Annotated[str, BeforeValidator(_setting_value)]
OptionalText = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=_Message)


class Envelope(_Message):
    type: str
    id: str | None = None
    timestamp_ms: Annotated[int, BeforeValidator(_whole_number)] | None = None
    firehose_version: str | None = None


class Account(_Message):
    account_id: Annotated[int, BeforeValidator(_whole_number)] | None = None
    account_settings: dict[str, SettingValue] = {}


class SubscriptionRequest(_Message):
    account: Account
    audience_id: AudienceId
    audience_name: OptionalText = ""
    audience_description: OptionalText = ""
    audience_subscription_settings: dict[str, SettingValue] | None = None
    action: Literal["add", "update", "remove"]


class MembershipRequest(_Message):
    account: Account
    user_profiles: list[Any] | None = None


class AudienceEntry(TypedDict):
    audience_id: AudienceId
    audience_name: NotRequired[OptionalText]
    action: Literal["add", "delete", "attribute_update"]


class UserProfile(TypedDict):
    mpid: Mpid
    audiences: NotRequired[list[Any] | None]


_PROFILES = TypeAdapter(list[UserProfile])
_PROFILE = TypeAdapter(UserProfile)
_ENTRIES = TypeAdapter(list[AudienceEntry])
_ENTRY = TypeAdapter(AudienceEntry)


@dataclass
class MembershipBatch:
    """A membership change request reduced to the last change per (audience, MPID)."""

    # audience id -> MPID -> True for "add", False for "delete"
    latest: dict[int, dict[int, bool]] = field(default_factory=dict)
    # audience id -> the last name the batch gave it
    names: dict[int, str] = field(default_factory=dict)
    entries: int = 0
    skipped_profiles: int = 0
    skipped_entries: int = 0
    # JSON path of the first thing skipped, for the log.
    first_problem: str = ""


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError 400."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits; the standard parser keeps them so that such
        # a value fails on its own field instead of failing the whole batch.
        document = _parse_json_slowly(body)

    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object", "$")
    return document


def _parse_json_slowly(body: bytes) -> Any:
    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=refuse_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body must be UTF-8", "$") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}", "$") from None


def read_envelope(document: dict[str, Any]) -> Envelope:
    if "type" not in document:
        raise ApiError(400, "missing_type", "the message has no type", "$.type")
    return _validate(Envelope, document)


def read_subscription(document: dict[str, Any]) -> SubscriptionRequest:
    return _validate(SubscriptionRequest, document)


def read_membership(document: dict[str, Any]) -> tuple[MembershipRequest, MembershipBatch]:
    request = _validate(MembershipRequest, document)
    profiles = request.user_profiles or []
    _refuse_legacy_shape(profiles)

    batch = MembershipBatch()
    try:
        valid = list(enumerate(_PROFILES.validate_python(profiles)))
    except ValidationError:
        valid = _valid_profiles_one_by_one(profiles, batch)

    for index, profile in valid:
        _collect(index, profile, batch)
    return request, batch


def _refuse_legacy_shape(profiles: list[Any]) -> None:
    """Profiles from before Firehose 2.0 carried added_audiences and removed_audiences."""
    for index, profile in enumerate(profiles):
        if isinstance(profile, dict) and (
            "added_audiences" in profile or "removed_audiences" in profile
        ):
            raise ApiError(
                400,
                "unsupported_format",
                "added_audiences and removed_audiences are the pre-2.0 Firehose format; "
                "send audiences[] with an action",
                f"$.user_profiles[{index}]",
            )


def _valid_profiles_one_by_one(
    profiles: list[Any], batch: MembershipBatch
) -> list[tuple[int, UserProfile]]:
    valid = []
    for index, raw in enumerate(profiles):
        try:
            valid.append((index, _PROFILE.validate_python(raw)))
        except ValidationError as exc:
            batch.skipped_profiles += 1
            batch.first_problem = batch.first_problem or _path(exc, f"$.user_profiles[{index}]")
    return valid


def _collect(index: int, profile: UserProfile, batch: MembershipBatch) -> None:
    raw_entries = profile.get("audiences") or []
    try:
        entries = _ENTRIES.validate_python(raw_entries)
    except ValidationError:
        entries = _valid_entries_one_by_one(raw_entries, batch, f"$.user_profiles[{index}]")

    mpid = profile["mpid"]
    for entry in entries:
        batch.entries += 1
        action = entry["action"]
        if action == "attribute_update":
            continue

        audience_id = entry["audience_id"]
        batch.latest.setdefault(audience_id, {})[mpid] = action == "add"
        name = entry.get("audience_name")
        if name:
            batch.names[audience_id] = name


def _valid_entries_one_by_one(
    raw_entries: list[Any], batch: MembershipBatch, where: str
) -> list[AudienceEntry]:
    valid = []
    for index, raw in enumerate(raw_entries):
        try:
            valid.append(_ENTRY.validate_python(raw))
        except ValidationError as exc:
            batch.skipped_entries += 1
            batch.first_problem = batch.first_problem or _path(exc, f"{where}.audiences[{index}]")
    return valid


def _validate(model: type[M], document: dict[str, Any]) -> M:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise ApiError(400, "invalid_field", _describe(exc.errors()[0]), _path(exc, "$")) from None


def _describe(error: Any) -> str:
    field_name = ".".join(str(p) for p in error["loc"]) or "message"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{field_name}: {message}"


def _path(exc: ValidationError, prefix: str) -> str:
    """The JSON path of the first error in ``exc``, below ``prefix``."""
    path = prefix
    for part in exc.errors()[0]["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
