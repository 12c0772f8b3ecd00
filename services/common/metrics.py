"""Prometheus metrics every gRPC service exports, and the HTTP server that exposes them.

Each service process has its own registry (the library's default); the gateway serves its
metrics on its own HTTP port at /metrics, each gRPC service on a separate metrics port.
"""

from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import Counter, Histogram

# Latency buckets, in seconds, from 0.5 ms to 5 s: lookups sit at the low end, large
# membership batches toward the top.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

RPCS_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed, by service, method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
RPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, by service and method.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
REDIS_ERRORS = Counter(
    "redis_errors_total",
    "Redis errors that failed an RPC, by error class.",
    ["error"],
)


def serve(host: str, port: int) -> WSGIServer:
    """Serve /metrics on host:port (0 picks a free port: read ``server_port``)."""
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    return server
