"""Checks of identifiers that every service receives."""

import re

import grpc

from services.common.rpc import abort

# Account and connector ids: 1 to 64 characters of [A-Za-z0-9._-]. They appear inside Redis
# key names, so they can never contain a hash-tag brace or a separator of their own.
ID_MAX_LENGTH = 64
_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{ID_MAX_LENGTH}}}")

AUDIENCE_ID_MAX = 2**31 - 1
# Audiences one ApplyMembershipChanges names at most, so that no call holds the audience
# service for long; the gateway sends a batch that names more in several calls.
AUDIENCES_PER_CALL_MAX = 10_000
MPID_MIN = -(2**63)
MPID_MAX = 2**63 - 1
# Items one page of a listing holds at most (ListMembers, ListAudiences); 0 asks for the
# default.
PAGE_SIZE_MAX = 10_000


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


async def require_id(context: grpc.aio.ServicerContext, field: str, value: str) -> None:
    """Abort with INVALID_ARGUMENT unless ``value`` is a well-formed account or connector id."""
    if not is_valid_id(value):
        await abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{field} must be 1 to {ID_MAX_LENGTH} characters of [A-Za-z0-9._-]",
        )


async def require_page_size(context: grpc.aio.ServicerContext, value: int) -> None:
    if not 0 <= value <= PAGE_SIZE_MAX:
        await abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 0 to {PAGE_SIZE_MAX}"
        )


async def require_audience_id(context: grpc.aio.ServicerContext, value: int) -> None:
    if not 1 <= value <= AUDIENCE_ID_MAX:
        await abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, f"audience_id must be 1 to {AUDIENCE_ID_MAX}"
        )
