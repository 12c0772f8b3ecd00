"""The lookups the benchmark offers, as factories the load generator's processes import."""

from collections.abc import Callable
from typing import Any

import grpc

from protos.audience.v1 import audience_pb2, audience_pb2_grpc

ACCOUNT = "bench"
DISTINCT_REQUESTS = 20_000


def user_audiences(users: list[int], channel: grpc.aio.Channel) -> Callable[[int], Any]:
    stub = audience_pb2_grpc.AudienceServiceStub(channel)
    requests = [
        audience_pb2.GetUserAudiencesRequest(account_id=ACCOUNT, mpid=m)
        for m in users[:DISTINCT_REQUESTS]
    ]
    return lambda n: (stub.GetUserAudiences, requests[n % len(requests)])


def check_membership(
    audience_id: int, users: list[int], channel: grpc.aio.Channel
) -> Callable[[int], Any]:
    stub = audience_pb2_grpc.AudienceServiceStub(channel)
    requests = [
        audience_pb2.CheckMembershipRequest(account_id=ACCOUNT, audience_id=audience_id, mpid=m)
        for m in users[:DISTINCT_REQUESTS]
    ]
    return lambda n: (stub.CheckMembership, requests[n % len(requests)])
