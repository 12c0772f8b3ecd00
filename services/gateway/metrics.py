"""The gateway's Prometheus metrics, served at GET /metrics."""

from prometheus_client import Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS

REQUESTS = Counter(
    "gateway_requests_total",
    "HTTP requests answered, by route, mParticle message type and status.",
    ["route", "message_type", "status"],
)
REQUEST_SECONDS = Histogram(
    "gateway_request_duration_seconds",
    "Time to answer an HTTP request, by route and mParticle message type.",
    ["route", "message_type"],
    buckets=LATENCY_BUCKETS,
)
SHED = Counter(
    "gateway_requests_shed_total",
    "Requests answered 429 because too many, or too large bodies, were in flight.",
)
KEYS_REJECTED = Counter(
    "gateway_keys_rejected_total",
    "Requests whose API key was missing, unknown or revoked, by mParticle message type.",
    ["message_type"],
)
SKIPPED = Counter(
    "gateway_skipped_total",
    "Unreadable parts of membership changes skipped, by kind (profile or entry).",
    ["kind"],
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Failed gRPC calls to the services, by upstream and status code.",
    ["upstream", "code"],
)
MEMBERSHIP_CHANGES = Counter(
    "gateway_membership_changes_total",
    "Membership changes forwarded to the audience service, by action (add or delete).",
    ["action"],
)
