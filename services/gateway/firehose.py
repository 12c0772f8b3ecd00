"""Reading mParticle Firehose messages (see PROTOCOL.md), with pydantic.

The envelope of a message must be readable, or the whole message is refused with a 4xx.
Inside a membership change, each user profile and each of its audience entries is checked
on its own: a bad one is skipped and counted, and the good ones beside it are kept, since
mParticle never retries a 4xx and refusing the batch would lose them all.

Unknown fields are ignored everywhere, as mParticle adds fields over time, and so are
values of the wrong type where nothing depends on them (other account settings, the
Firehose version). Display text is cut to a bounded length rather than refused.
"""

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NotRequired, Protocol, TypeVar

import msgspec
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from services.common.validation import AUDIENCE_ID_MAX, MPID_MAX, MPID_MIN
from services.gateway.errors import ApiError
from services.gateway.memory import lenient_parse_cost, parse_cost, split_cost

REGISTRATION = "module_registration_request"
SUBSCRIPTION = "audience_subscription_request"
MEMBERSHIP = "audience_membership_change_request"

MAX_NAME_LENGTH = 1024
MAX_DESCRIPTION_LENGTH = 4096
MAX_SETTINGS = 100
MAX_SETTING_LENGTH = 4096
TIMESTAMP_MAX = 2**63 - 1

_DECIMAL = re.compile(r"-?[0-9]{1,20}")
# A surrogate code point left alone in a decoded string (pairs decode to one character).
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def _timestamp(value: Any) -> int | None:
    """Source time in epoch ms; one that is missing, malformed or out of range is unknown
    (None, read as "now"), which costs ordering for that message but never its data."""
    try:
        number = _whole_number(value)
    except ValueError:
        return None
    return number if 0 <= number <= TIMESTAMP_MAX else None


def _text(value: Any) -> str | None:
    """A scalar as text (settings are strings on the wire; booleans arrive as "true")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


# Unicode categories of characters that show nothing: separators, controls and formats
# (such as the zero-width space and the byte order mark).
_INVISIBLE = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def _is_blank(text: str) -> bool:
    """Whether ``text`` (not empty) would show nothing."""
    if text.isspace():
        return True
    return not text.isprintable() and all(unicodedata.category(c) in _INVISIBLE for c in text)


def _display_text(limit: int) -> BeforeValidator:
    """Text cut to ``limit``; a value of no text type, or that shows nothing, reads as none."""

    def read(value: Any) -> str:
        text = _text(value)
        return "" if text is None or (text and _is_blank(text)) else text[:limit]

    return BeforeValidator(read)


def _lenient_settings(value: Any) -> Any:
    """Keep the scalar settings, as text; drop values of other types instead of failing.
    Null is read as no settings (the field is optional)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        return value
    texts = {k: _text(v) for k, v in value.items()}
    return {k: v for k, v in texts.items() if v is not None}


def _bounded_settings(value: Any) -> Any:
    settings = _lenient_settings(value)
    if isinstance(settings, dict):
        if len(settings) > MAX_SETTINGS:
            raise ValueError(f"at most {MAX_SETTINGS} settings")
        if any(
            len(k) > MAX_SETTING_LENGTH or len(v) > MAX_SETTING_LENGTH for k, v in settings.items()
        ):
            raise ValueError(
                f"setting names and values are at most {MAX_SETTING_LENGTH} characters"
            )
    return settings


def _optional_text(value: Any) -> str | None:
    return _text(value)


Mpid = Annotated[int, BeforeValidator(_mpid)]
AudienceId = Annotated[int, BeforeValidator(_whole_number), Field(ge=1, le=AUDIENCE_ID_MAX)]
Name = Annotated[str, _display_text(MAX_NAME_LENGTH)]
Description = Annotated[str, _display_text(MAX_DESCRIPTION_LENGTH)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=_Message)


class Envelope(_Message):
    type: str
    id: Annotated[str | None, BeforeValidator(_optional_text)] = None
    timestamp_ms: Annotated[int | None, BeforeValidator(_timestamp)] = None
    firehose_version: Annotated[str | None, BeforeValidator(_optional_text)] = None


class Account(_Message):
    account_settings: Annotated[dict[str, str], BeforeValidator(_lenient_settings)] = {}


class SubscriptionRequest(_Message):
    account: Account
    audience_id: AudienceId
    audience_name: Name = ""
    audience_description: Description = ""
    audience_subscription_settings: Annotated[
        dict[str, str] | None, BeforeValidator(_bounded_settings)
    ] = None
    action: Literal["add", "update", "remove"]


class MembershipRequest(_Message):
    account: Account
    user_profiles: list[Any] | None = None


class AudienceEntry(TypedDict):
    audience_id: AudienceId
    audience_name: NotRequired[Name]
    action: Literal["add", "delete", "attribute_update"]


class UserProfile(TypedDict):
    mpid: Mpid
    audiences: NotRequired[list[Any] | None]


# Profiles are read one at a time, each kept or skipped. A profile's entries are tried as a
# whole list first; at its first bad entry they are read one by one. Without fail_fast, the
# first try would describe every bad entry, hundreds of bytes each: a few megabytes of "{}"
# entries would take gigabytes.
_PROFILE = TypeAdapter(UserProfile)
_ENTRIES = TypeAdapter(Annotated[list[AudienceEntry], Field(fail_fast=True)])
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


@dataclass(frozen=True)
class Message:
    """A request read in full: its envelope and, for the types handled, its content."""

    envelope: Envelope
    subscription: SubscriptionRequest | None = None
    membership: MembershipRequest | None = None
    batch: MembershipBatch | None = None


class Memory(Protocol):
    """The share of the gateway's memory budget a request holds (memory.Reservation)."""

    def take(self, size: int) -> None: ...

    def give_back(self, size: int) -> None: ...


class _Unbounded:
    def take(self, size: int) -> None:
        pass

    def give_back(self, size: int) -> None:
        pass


# For callers that keep no budget (tests, tools).
UNBOUNDED: Memory = _Unbounded()


def read_message(body: bytes, memory: Memory = UNBOUNDED) -> Message:
    """Parse and check a request body; raises ApiError (4xx) when it cannot be read.

    ``memory`` already holds what the typed decoder takes (``memory.parse_cost``); any other
    way of reading the body takes what it costs from it first (ApiError 413 or 429 when the
    budget cannot give it).
    """
    fast = _read_membership_fast(body)
    if fast is not None:
        return fast

    splitting = split_cost(body)
    memory.take(splitting)
    by_profile = _read_membership_by_profile(body, memory)
    if by_profile is not None:
        return by_profile
    memory.give_back(splitting)

    memory.take(lenient_parse_cost(body) - parse_cost(body))
    document = parse_json(body)
    envelope = read_envelope(document)

    if envelope.type == SUBSCRIPTION:
        return Message(envelope, subscription=_validate(SubscriptionRequest, document))
    if envelope.type == MEMBERSHIP:
        membership, batch = read_membership(document)
        return Message(envelope, membership=membership, batch=batch)
    return Message(envelope)


# The fast path: a well-formed membership change, decoded straight into typed structs by
# msgspec, which skips the fields nobody reads (identities, attributes) without building
# them. Anything it does not accept as is (a bad MPID, an over-long name, a loose type, the
# legacy shape...) goes to the per-profile path below, which checks each part on its own. On
# input both accept, both give the same result (tests/test_firehose.py). A large batch decodes
# into thousands of structs; none can be part of a reference cycle, so they are kept out of
# the cyclic garbage collector (gc=False), which would otherwise scan them over and over.

# A decimal string is checked in _collect_fast: a pattern here would cost a regular
# expression a profile, a third of the decoding.
_FastMpid = str | Annotated[int, msgspec.Meta(ge=MPID_MIN, le=MPID_MAX)]


class _FastEntry(msgspec.Struct, gc=False):
    audience_id: Annotated[int, msgspec.Meta(ge=1, le=AUDIENCE_ID_MAX)]
    action: Literal["add", "delete", "attribute_update"]
    audience_name: Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)] = ""


class _FastProfile(msgspec.Struct, gc=False):
    mpid: _FastMpid
    audiences: list[_FastEntry] | None = None
    added_audiences: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    removed_audiences: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _FastAccount(msgspec.Struct):
    account_settings: dict[str, str] = {}


class _FastMembership(msgspec.Struct):
    type: Literal["audience_membership_change_request"]
    account: _FastAccount
    id: str | None = None
    timestamp_ms: Annotated[int, msgspec.Meta(ge=0, le=TIMESTAMP_MAX)] | None = None
    firehose_version: str | None = None
    user_profiles: list[_FastProfile] | None = None


_FAST_DECODER = msgspec.json.Decoder(_FastMembership)


class _NotFast(Exception):
    """The message needs the lenient path."""


def _read_membership_fast(body: bytes) -> Message | None:
    try:
        # msgspec checks the UTF-8 of what it reads only; the lenient path refuses the rest.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None

    try:
        decoded = _FAST_DECODER.decode(text)
        batch = MembershipBatch()
        _collect_fast(decoded.user_profiles or [], batch)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, _NotFast):
        return None

    envelope = Envelope.model_construct(
        type=decoded.type,
        id=decoded.id,
        timestamp_ms=decoded.timestamp_ms,
        firehose_version=decoded.firehose_version,
    )
    account = Account.model_construct(account_settings=decoded.account.account_settings)
    membership = MembershipRequest.model_construct(account=account, user_profiles=None)
    return Message(envelope, membership=membership, batch=batch)


def _collect_fast(profiles: Sequence[_FastProfile], batch: MembershipBatch) -> None:
    """Adds the profiles' changes to ``batch``; raises _NotFast, before adding anything of
    that profile, at the first profile the fast path does not take as is."""
    latest, names = batch.latest, batch.names
    entries = 0
    for profile in profiles:
        audiences = profile.audiences
        if audiences is None and (profile.added_audiences, profile.removed_audiences) != (
            msgspec.UNSET,
            msgspec.UNSET,
        ):
            raise _NotFast

        mpid = profile.mpid
        if isinstance(mpid, str):
            digits = mpid[1:] if mpid[:1] == "-" else mpid
            # What _DECIMAL matches: ASCII digits only, as int() would take others too.
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 20):
                raise _NotFast
            mpid = int(mpid)
            if not MPID_MIN <= mpid <= MPID_MAX:
                raise _NotFast

        if not audiences:
            continue
        entries += len(audiences)
        for entry in audiences:
            action = entry.action
            if action == "attribute_update":
                continue
            audience_id = entry.audience_id
            members = latest.get(audience_id)
            if members is None:
                members = latest[audience_id] = {}
            members[mpid] = action == "add"
            name = entry.audience_name
            # An audience's entries repeat its name: only a new one is checked.
            if name and names.get(audience_id) != name and not _is_blank(name):
                names[audience_id] = name
    batch.entries += entries


# The per-profile path: a membership change the fast path refused, most often for one bad
# profile among good ones. msgspec splits it without building its values: the envelope's
# fields and each profile stay slices of the body. The envelope is read by the lenient rules,
# each profile by the fast decoder or, failing that, by the lenient rules on its own, so
# that memory stays that of the typed decoder rather than of the whole batch as Python
# objects. A body msgspec cannot split (not JSON, a lone surrogate, profiles that are not a
# list) takes the lenient path.


class _SplitMembership(msgspec.Struct):
    type: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    id: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    timestamp_ms: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    firehose_version: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    account: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    user_profiles: list[msgspec.Raw] | None = None


_SPLIT_DECODER = msgspec.json.Decoder(_SplitMembership)
_PROFILE_DECODER = msgspec.json.Decoder(_FastProfile)
_OBJECT_START = ord("{")
# Read once the type says it is a membership change.
_ENVELOPE_FIELDS = ("id", "timestamp_ms", "firehose_version", "account")


def _read_membership_by_profile(body: bytes, memory: Memory) -> Message | None:
    try:
        # The whole body must be UTF-8, the parts that nobody reads included.
        text = body.decode("utf-8").removeprefix("\ufeff")
        split = _SPLIT_DECODER.decode(text)
    except (UnicodeDecodeError, msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if isinstance(split.type, msgspec.UnsetType):
        return None
    document = {"type": _read_value(split.type, memory)}
    if document["type"] != MEMBERSHIP:
        return None

    for name in _ENVELOPE_FIELDS:
        if not isinstance(raw := getattr(split, name), msgspec.UnsetType):
            document[name] = _read_value(raw, memory)
    envelope = read_envelope(document)
    request = _validate(MembershipRequest, document)
    batch = MembershipBatch()
    _collect_profiles(split.user_profiles or [], batch, memory)
    return Message(envelope, membership=request, batch=batch)


def _read_value(raw: msgspec.Raw, memory: Memory) -> Any:
    """One JSON value of the body as the lenient path reads it, its cost taken from
    ``memory`` for as long as the request is served."""
    text = bytes(raw)
    memory.take(lenient_parse_cost(text))
    return _parse_value(text)


def _parse_value(text: bytes) -> Any:
    """One JSON value, read as the lenient path reads the whole body."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _parse_json_slowly(text)


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ApiError 400."""
    # JSON texts may start with a byte order mark, which parsers may ignore (RFC 8259, 8.1).
    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses integers beyond 64 bits, lone surrogates and deep nesting; the
        # standard parser reads the first two, so that such a value fails on its own field
        # instead of failing the whole batch.
        document = _parse_json_slowly(body)

    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object", "$")
    return document


def _parse_json_slowly(body: bytes) -> Any:
    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        document = json.loads(
            body.decode("utf-8"), parse_constant=refuse_constant, parse_int=_bounded_int
        )
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the body must be UTF-8", "$") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply", "$") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}", "$") from None
    return _replace_lone_surrogates(document)


def _bounded_int(digits: str) -> int | str:
    """A JSON integer; one too long for any field is kept as its text, so that it fails
    (or is ignored) on its own field, where Python would refuse to convert it at all."""
    return int(digits) if len(digits) <= 64 else digits


def _replace_lone_surrogates(document: Any) -> Any:
    """Strings with an escaped lone surrogate (\\ud800) cannot be sent on as UTF-8; each such
    character becomes U+FFFD, so the value fails or passes on its own merits."""
    if isinstance(document, str):
        return _SURROGATE.sub("\ufffd", document)
    if not isinstance(document, dict | list):
        return document

    stack = [document]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if isinstance(value, str):
                node[key] = _SURROGATE.sub("\ufffd", value)
            elif isinstance(value, dict | list):
                stack.append(value)
        if isinstance(node, dict):
            for key in [k for k in node if _SURROGATE.search(k)]:
                node[_SURROGATE.sub("\ufffd", key)] = node.pop(key)
    return document


def read_envelope(document: dict[str, Any]) -> Envelope:
    if "type" not in document:
        raise ApiError(400, "missing_type", "the message has no type", "$.type")
    return _validate(Envelope, document)


def read_membership(document: dict[str, Any]) -> tuple[MembershipRequest, MembershipBatch]:
    request = _validate(MembershipRequest, document)
    batch = MembershipBatch()
    _collect_profiles(request.user_profiles or [], batch)
    return request, batch


def _collect_profiles(
    profiles: Sequence[Any], batch: MembershipBatch, memory: Memory = UNBOUNDED
) -> None:
    """Adds each profile's changes to ``batch``, or skips and counts it. A profile is a
    Python value, or a slice of the body (msgspec.Raw) that the fast decoder tries first;
    one it refuses is read by the lenient rules, its cost taken from ``memory`` while it is.

    Profiles from before Firehose 2.0 carried added_audiences and removed_audiences. They
    are skipped too; a message made only of them is refused, never silently ignored.
    """
    legacy = 0
    for index, profile in enumerate(profiles):
        if not isinstance(profile, msgspec.Raw):
            legacy += _collect_one(index, profile, batch)
            continue
        if memoryview(profile)[0] != _OBJECT_START:
            # Not an object, so neither a profile nor a legacy one: skipped unread.
            batch.skipped_profiles += 1
            batch.first_problem = batch.first_problem or f"$.user_profiles[{index}]"
            continue
        try:
            _collect_fast((_PROFILE_DECODER.decode(profile),), batch)
            continue
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, _NotFast):
            text = bytes(profile)

        # Its objects are freed once it is read; what it adds to the batch is the typed
        # decoder's share.
        cost = lenient_parse_cost(text)
        memory.take(cost)
        try:
            legacy += _collect_one(index, _parse_value(text), batch)
        finally:
            memory.give_back(cost)

    if legacy and legacy == len(profiles):
        raise ApiError(
            400,
            "unsupported_format",
            "added_audiences and removed_audiences are the pre-2.0 Firehose format; "
            "send audiences[] with an action",
            "$.user_profiles[0]",
        )


def _collect_one(index: int, profile: Any, batch: MembershipBatch) -> int:
    """Adds one profile, read as a Python value, to ``batch``, or skips and counts it;
    returns 1 when it is in the legacy shape, else 0."""
    if _is_legacy(profile):
        batch.skipped_profiles += 1
        batch.first_problem = batch.first_problem or f"$.user_profiles[{index}]"
        return 1

    try:
        valid = _PROFILE.validate_python(profile)
    except ValidationError as exc:
        batch.skipped_profiles += 1
        batch.first_problem = batch.first_problem or _path(exc, f"$.user_profiles[{index}]")
        return 0
    _collect(index, valid, batch)
    return 0


def _is_legacy(profile: Any) -> bool:
    """A profile in the pre-2.0 shape: legacy lists, and ``audiences`` absent or null
    (beside a list of audiences, the legacy keys are unknown fields, and ignored)."""
    return (
        isinstance(profile, dict)
        and profile.get("audiences") is None
        and ("added_audiences" in profile or "removed_audiences" in profile)
    )


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


# Pydantic's wording for these speaks of Python types (and names our classes).
_PLAIN_MESSAGES = {"model_type": "must be a JSON object", "dict_type": "must be a JSON object"}


def _describe(error: Any) -> str:
    field_name = ".".join(str(p) for p in error["loc"]) or "message"
    message = _PLAIN_MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
    return f"{field_name}: {message}"


def _path(exc: ValidationError, prefix: str) -> str:
    """The JSON path of the first error in ``exc``, below ``prefix``."""
    path = prefix
    for part in exc.errors()[0]["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
