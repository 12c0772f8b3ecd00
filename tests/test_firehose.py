"""The three ways the gateway reads a membership change agree: the fast typed decoder, the
per-profile path that splits the body and reads each profile on its own, and the lenient
path that reads the whole body as Python objects; and the lenient path's memory stays that
of the message's own objects."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import firehose, memory

MPIDS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.sampled_from(["007", "-0", "0", "9223372036854775807", "-9223372036854775808"]),
    # Values only the lenient path reads, by skipping their profile:
    st.sampled_from(["9223372036854775808", "1e3", "", " 1", "+1", "1\n", 1.5, True, None]),
)
ENTRIES = st.fixed_dictionaries(
    {
        "audience_id": st.one_of(st.integers(1, 5), st.sampled_from([0, "3", 2**31])),
        "action": st.sampled_from(["add", "delete", "attribute_update", "ADD"]),
    },
    optional={"audience_name": st.one_of(st.text(max_size=5), st.just("x" * 1030), st.none())},
)
PROFILES: st.SearchStrategy[Any] = st.one_of(
    st.fixed_dictionaries(
        {"mpid": MPIDS},
        optional={
            "audiences": st.one_of(st.none(), st.lists(ENTRIES, max_size=4)),
            "user_identities": st.just([{"type": "email", "encoding": "raw", "value": "a@b.c"}]),
            # The pre-2.0 shape, skipped where audiences is absent or null.
            "added_audiences": st.just([{"audience_id": 1}]),
        },
    ),
    st.sampled_from([{}, [], "x", None, {"mpid": "1", "audiences": "x"}]),
)
MESSAGES = st.fixed_dictionaries(
    {
        "type": st.just(firehose.MEMBERSHIP),
        "account": st.just({"account_id": 1, "account_settings": {"apiKey": "k"}}),
        "user_profiles": st.one_of(st.none(), st.lists(PROFILES, max_size=6)),
    },
    optional={
        "id": st.just("x"),
        "timestamp_ms": st.sampled_from([1, 2**63 - 1, -1, "5", 10**70, 7 * (10**500 // 9)]),
    },
)


def lenient(body: bytes) -> tuple[Any, ...]:
    try:
        membership, batch = firehose.read_membership(firehose.parse_json(body))
    except firehose.ApiError as error:
        return ("error", error.status)
    envelope = firehose.read_envelope(firehose.parse_json(body))
    return summary(envelope, membership, batch)


def summary(envelope: Any, membership: Any, batch: Any) -> tuple[Any, ...]:
    return (
        envelope.timestamp_ms,
        dict(membership.account.account_settings),
        batch.latest,
        batch.names,
        batch.entries,
        batch.skipped_profiles,
        batch.skipped_entries,
        batch.first_problem,
    )


class Ledger:
    """A memory budget without a limit that keeps its accounts."""

    def __init__(self) -> None:
        self.taken: list[int] = []
        self.given_back: list[int] = []

    def take(self, size: int) -> None:
        self.taken.append(size)

    def give_back(self, size: int) -> None:
        self.given_back.append(size)


def by_profile(body: bytes, ledger: Ledger | None = None) -> tuple[Any, ...] | None:
    try:
        message = firehose._read_membership_by_profile(body, ledger or firehose.UNBOUNDED)
    except firehose.ApiError as error:
        return ("error", error.status)
    if message is None:
        return None
    return summary(message.envelope, message.membership, message.batch)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_fast_and_lenient_paths_agree_when_both_read_a_message(message: dict) -> None:
    # The standard encoder writes integers of any size, as a sender may.
    body = json.dumps(message).encode()

    fast = firehose._read_membership_fast(body)

    if fast is not None:
        assert summary(fast.envelope, fast.membership, fast.batch) == lenient(body)


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_the_per_profile_and_lenient_paths_agree(message: dict) -> None:
    # The standard encoder writes integers of any size, as a sender may.
    body = json.dumps(message).encode()

    assert by_profile(body) == lenient(body)


def test_one_bad_profile_among_many_is_the_only_one_read_as_python_objects() -> None:
    """Its cost is taken while it is read, then given back; the envelope's values, kept
    until the answer, are paid for as they are read."""
    good = [{"mpid": str(i), "audiences": [{"audience_id": 1, "action": "add"}]} for i in range(9)]
    bad = {"mpid": "1e3", "audiences": [{"audience_id": 1, "action": "add"}]}
    body = orjson.dumps({"type": firehose.MEMBERSHIP, "account": {}, "user_profiles": [*good, bad]})
    ledger = Ledger()

    read = by_profile(body, ledger)

    assert read == lenient(body)
    profile_cost = memory.lenient_parse_cost(orjson.dumps(bad))
    envelope_costs = [
        memory.lenient_parse_cost(orjson.dumps(firehose.MEMBERSHIP)),
        memory.lenient_parse_cost(b"{}"),
    ]
    assert sorted(ledger.taken) == sorted([*envelope_costs, profile_cost])
    assert ledger.given_back == [profile_cost]


def test_a_split_body_pays_for_what_it_builds() -> None:
    """Values of the envelope and profiles that are not objects are read as Python objects
    too: a body of millions of them is refused by the budget, not built."""
    flood = b",".join([b'"ab"'] * 100_000)
    envelope = b'{"type":"%s","account":{},"firehose_version":[%s],"user_profiles":[1,%s]}' % (
        firehose.MEMBERSHIP.encode(),
        flood,
        b",".join([b"1"] * 100_000),
    )
    ledger = Ledger()

    firehose.read_message(envelope, ledger)

    # The split (a slot a list item) and the envelope's list, as the lenient path counts it.
    assert sum(ledger.taken) - sum(ledger.given_back) >= memory.split_cost(envelope) + (
        memory.lenient_parse_cost(b"[" + flood + b"]")
    )


# Strings Python's int() reads, or that look like digits, which no MPID may be.
@pytest.mark.parametrize(
    "mpid", ["-", "--1", "1_0", "\u0661", "\u00b2", "0x1", "0" * 21, "-" + "0" * 21, "1 "]
)
def test_a_string_that_is_not_a_plain_decimal_is_skipped_on_both_paths(mpid: str) -> None:
    good = {"mpid": "5", "audiences": [{"audience_id": 1, "action": "add"}]}
    bad = {"mpid": mpid, "audiences": [{"audience_id": 1, "action": "add"}]}
    message = {"type": firehose.MEMBERSHIP, "account": {}, "user_profiles": [good, bad]}
    body = orjson.dumps(message)

    fast = firehose._read_membership_fast(body)

    assert fast is None or summary(fast.envelope, fast.membership, fast.batch) == lenient(body)
    assert lenient(body)[2] == {1: {5: True}}


def test_a_well_formed_batch_takes_the_fast_path() -> None:
    body = orjson.dumps(
        {
            "type": firehose.MEMBERSHIP,
            "account": {"account_settings": {"apiKey": "k"}},
            "timestamp_ms": 5,
            "user_profiles": [
                {
                    "mpid": "-9223372036854775808",
                    "audiences": [{"audience_id": 1, "action": "add"}],
                },
                {"mpid": 7, "audiences": [{"audience_id": 1, "action": "delete"}]},
            ],
        }
    )

    fast = firehose._read_membership_fast(body)

    assert fast is not None and fast.batch is not None
    assert fast.batch.latest == {1: {-(2**63): True, 7: False}}
    assert summary(fast.envelope, fast.membership, fast.batch) == lenient(body)


# Reads a body of 3M empty audience entries or profiles in a fresh interpreter and prints how
# much its peak resident memory grew meanwhile, in kilobytes.
_READ_JUNK = """
import resource, sys
from services.gateway import firehose

junk = ",".join(["{}"] * 3_000_000)
profiles = '[{"mpid":"1","audiences":[%s]}]' % junk if sys.argv[1] == "entries" else f"[{junk}]"
body = ('{"type":"%s","account":{"account_settings":{"apiKey":"k"}},"user_profiles":%s}'
        % (firehose.MEMBERSHIP, profiles)).encode()
del junk, profiles
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
message = firehose.read_message(body)
assert message.batch is not None and message.batch.latest == {}, message.batch
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("junk", ["entries", "profiles"])
def test_millions_of_empty_items_do_not_take_gigabytes(junk: str) -> None:
    """Reading 9 MB of "{}" builds their objects (about 250 MB), not also a description of
    each one's errors (1 to 2 GB more)."""
    read = subprocess.run(
        [sys.executable, "-c", _READ_JUNK, junk],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )

    assert int(read.stdout) < 600_000, f"peak memory grew by {int(read.stdout) // 1000} MB"
