"""The two ways the gateway reads a membership change agree: the fast typed decoder and
the lenient path that checks each profile and entry on its own."""

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import firehose

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
PROFILES = st.fixed_dictionaries(
    {"mpid": MPIDS},
    optional={
        "audiences": st.one_of(st.none(), st.lists(ENTRIES, max_size=4)),
        "user_identities": st.just([{"type": "email", "encoding": "raw", "value": "a@b.c"}]),
    },
)
MESSAGES = st.fixed_dictionaries(
    {
        "type": st.just(firehose.MEMBERSHIP),
        "account": st.just({"account_id": 1, "account_settings": {"apiKey": "k"}}),
        "user_profiles": st.one_of(st.none(), st.lists(PROFILES, max_size=6)),
    },
    optional={"id": st.just("x"), "timestamp_ms": st.sampled_from([1, 2**63 - 1, -1, "5"])},
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
    )


@settings(max_examples=300, deadline=None)
@given(MESSAGES)
def test_fast_and_lenient_paths_agree_when_both_read_a_message(message: dict) -> None:
    body = orjson.dumps(message, option=orjson.OPT_PASSTHROUGH_SUBCLASS)

    fast = firehose._read_membership_fast(body)

    if fast is not None:
        assert summary(fast.envelope, fast.membership, fast.batch) == lenient(body)


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
