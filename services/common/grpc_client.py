"""Channels for calls between services: the request id travels with every call."""

from collections.abc import Callable
from typing import Any

import grpc

from services.common import logs
from services.common.interceptors import REQUEST_ID_HEADER


class _RequestIdInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        request_id = logs.request_id.get()
        if request_id:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
            metadata.add(REQUEST_ID_HEADER, request_id)
            client_call_details = client_call_details._replace(metadata=metadata)
        return await continuation(client_call_details, request)


def channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to ``target`` ("host:port" or any gRPC target string).

    Calls on it fail fast while the peer is down (no wait-for-ready), so a caller can turn
    that into a retried answer at once. Calls are spread over every address the target
    resolves to (``dns:///<headless service>:<port>`` on Kubernetes).
    """
    return grpc.aio.insecure_channel(
        target,
        interceptors=[_RequestIdInterceptor()],
        options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # Reconnect quickly once a restarted peer is back.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1_000),
        ],
    )
