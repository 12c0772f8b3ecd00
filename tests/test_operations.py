"""Operating the suite as real processes: request ids across services, logs without
secrets, metrics under faults, and an orderly SIGTERM under continuous traffic."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from protos.segment.v1 import segment_pb2, segment_pb2_grpc
from services.common.grpc_server import RECANCEL_SECONDS, STOP_MARGIN_SECONDS, GrpcServer
from tests.conftest import REPO, fixture_json
from tests.processes import ProcessSuite

GRACE_SECONDS = 5.0
RETRIED = {429, 500, 502, 503, 504}


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[ProcessSuite]:
    running = ProcessSuite(tmp_path, SHUTDOWN_GRACE_SECONDS=str(GRACE_SECONDS)).start()
    yield running
    running.stop()


def log_lines(suite: ProcessSuite, service: str) -> list[dict]:
    return [json.loads(line) for line in suite.log(service).splitlines() if line.startswith("{")]


def test_a_request_id_reaches_every_service_and_no_secret_is_logged(suite: ProcessSuite) -> None:
    api_key = suite.create_api_key()
    body = fixture_json("05_membership_change_multi_user.json", api_key)

    response = httpx.post(
        f"{suite.gateway_url}/mparticle", json=body, headers={"X-Request-Id": "trace-42"}
    )
    segment = suite.stub("segment", segment_pb2_grpc.SegmentServiceStub)
    segment.ListSegments(
        segment_pb2.ListSegmentsRequest(account_id="acme"), metadata=[("x-request-id", "trace-43")]
    )
    generated = httpx.post(f"{suite.gateway_url}/mparticle", json=body).headers["x-request-id"]
    time.sleep(0.2)

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42"
    assert len(generated) >= 16
    for service, request_id, message in (
        ("gateway", "trace-42", "request"),
        ("keys", "trace-42", "rpc"),
        ("audience", "trace-42", "rpc"),
        ("segment", "trace-43", "rpc"),
        ("audience", "trace-43", "rpc"),
        ("gateway", generated, "request"),
        ("audience", generated, "rpc"),
    ):
        lines = [
            line
            for line in log_lines(suite, service)
            if line.get("request_id") == request_id and line["message"] == message
        ]
        assert lines, (service, request_id)
        assert all(line.get("account") == "acme" for line in lines)
    everything = "".join(suite.log(s) for s in ("gateway", "keys", "audience", "segment"))
    assert api_key not in everything
    assert api_key[len("ak_") + 12 + 1 :] not in everything
    for mpid in ("4107729618823040185", "6529143021980561334", "733018846211"):
        assert mpid not in everything


def test_a_summary_line_reads_like_every_other_line() -> None:
    """Once configured, the summary lines of requests take a faster path than ``logging``
    records: the same fields, in the same order and form, and the same level filter."""
    script = """
import logging
from services.common import logs
logs.configure("probe", "INFO")
logs.request_id.set("trace-7")
logging.getLogger("probe.here").info("done", extra={"status": 200})
logs.request_line("probe.here", logging.INFO, "done", status=200)
logs.request_line("probe.here", logging.DEBUG, "hidden", status=200)
logs.request_line("probe.here", logging.ERROR, "failed", status=500)
"""
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout

    record, line, failed = [json.loads(text) for text in output.splitlines()]
    assert list(line) == list(record)
    assert {**line, "time": ""} == {**record, "time": ""}
    assert line["request_id"] == "trace-7"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", line["time"])
    assert (failed["level"], failed["message"], failed["status"]) == ("ERROR", "failed", 500)


def test_a_summary_line_that_cannot_be_written_does_not_fail_the_request() -> None:
    script = """
import logging, os
from services.common import logs
logs.configure("probe", "INFO")
os.close(1)
logs.request_line("probe.here", logging.INFO, "done", status=200)
print("served", file=__import__("sys").stderr)
"""
    finished = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True
    )

    assert (finished.returncode, finished.stderr) == (0, "served\n")


def test_log_level_is_set_by_configuration(tmp_path: Path) -> None:
    suite = ProcessSuite(tmp_path, LOG_LEVEL="WARNING").start()
    try:
        httpx.post(
            f"{suite.gateway_url}/mparticle",
            json=fixture_json("01_module_registration_request.json"),
        )
        time.sleep(0.2)
    finally:
        suite.stop()

    levels = {line["level"] for s in ("gateway", "keys") for line in log_lines(suite, s)}
    assert levels <= {"WARNING", "ERROR", "CRITICAL"}


def test_a_redis_password_kept_apart_from_the_url_is_used_and_never_logged(
    tmp_path: Path,
) -> None:
    """REDIS_PASSWORD (from the Secret on Kubernetes) beside a REDIS_URL without one: every
    path logs in with it, the audience service's shared connection included."""
    password = "pw-" + os.urandom(8).hex()
    suite = ProcessSuite(tmp_path, persistent=False, REDIS_PASSWORD=password)
    suite.redis.password = password
    suite.start()
    try:
        key = suite.create_api_key()
        for name in ("02_audience_subscription_add.json", "05_membership_change_multi_user.json"):
            reply = httpx.post(f"{suite.gateway_url}/mparticle", json=fixture_json(name, key))
            assert reply.status_code == 200, reply.text

        audience = suite.stub("audience", audience_pb2_grpc.AudienceServiceStub)
        found = audience.GetUserAudiences(
            audience_pb2.GetUserAudiencesRequest(account_id="acme", mpid=-6529143021980561334)
        )
        segment = suite.stub("segment", segment_pb2_grpc.SegmentServiceStub)
        listed = segment.ListSegments(segment_pb2.ListSegmentsRequest(account_id="acme"))
        # No client fell back on another after being refused (NOAUTH).
        server = redis.Redis(port=suite.redis.port, password=password)
        refused = server.info("errorstats")
        server.close()
    finally:
        suite.stop()

    assert list(found.audience_ids) == [90211, 90318]
    assert "errorstat_NOAUTH" not in refused
    assert {s.audience_id for c in listed.connectors for s in c.segments} == {90211, 90318}
    for service in ("keys", "audience", "segment", "gateway"):
        assert password not in suite.log(service)


def test_redis_errors_and_shed_requests_are_counted(tmp_path: Path) -> None:
    suite = ProcessSuite(tmp_path, GATEWAY_MAX_IN_FLIGHT="1").start()
    try:
        api_key = suite.create_api_key()
        body = fixture_json("06_membership_change_mpid_only.json", api_key)
        suite.redis.stop()
        outcomes = []

        def post() -> None:
            outcomes.append(httpx.post(f"{suite.gateway_url}/mparticle", json=body).status_code)

        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gateway = httpx.get(f"{suite.gateway_url}/metrics").text
        keys = httpx.get(f"http://127.0.0.1:{suite.metrics_ports['keys']}/metrics").text
    finally:
        suite.stop()

    assert set(outcomes) <= {429, 503} and 503 in outcomes
    shed = outcomes.count(429)
    assert f"gateway_requests_shed_total {float(shed)}" in gateway
    errors = re.search(r'^redis_errors_total\{error="ConnectionError"\} (\S+)$', keys, re.M)
    assert errors and float(errors.group(1)) >= 1


class Traffic:
    """Sends membership changes from several threads until stopped; sorts every outcome."""

    def __init__(self, suite: ProcessSuite, threads: int = 4) -> None:
        self.suite = suite
        self.api_key = suite.create_api_key()
        self.outcomes: Counter[str] = Counter()
        self.accepted: set[int] = set()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._sending = threading.Event()
        self._sending.set()
        self._lock = threading.Lock()
        self._next = 1
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> "Traffic":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def hold(self) -> None:
        """Stop sending new requests, as a load balancer does once an endpoint is removed."""
        self._sending.clear()
        time.sleep(0.3)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sending.wait(0.05):
                continue
            with self._lock:
                mpid = self._next
                self._next += 1
            body = fixture_json("06_membership_change_mpid_only.json", self.api_key)
            body["user_profiles"] = [
                {"mpid": str(mpid), "audiences": [{"audience_id": 7, "action": "add"}]}
            ]
            try:
                response = httpx.post(f"{self.suite.gateway_url}/mparticle", json=body, timeout=10)
            except httpx.ConnectError:
                self.outcomes["refused"] += 1
                time.sleep(0.05)
                continue
            except httpx.HTTPError as exc:
                self.failures.append(f"{mpid}: {exc!r}")
                continue

            if response.status_code == 200:
                self.outcomes["ok"] += 1
                with self._lock:
                    self.accepted.add(mpid)
            elif response.status_code in RETRIED and response.headers.get("retry-after"):
                self.outcomes["retried"] += 1
            else:
                self.failures.append(f"{mpid}: {response.status_code} {response.text}")


def stop_and_time(suite: ProcessSuite, service: str) -> tuple[int, float]:
    started = time.monotonic()
    suite.signal(service, signal.SIGTERM)
    code = suite.processes[service].wait(GRACE_SECONDS + 10)
    return code, time.monotonic() - started


def slow_upload(suite: ProcessSuite, api_key: str, result: list[httpx.Response]) -> None:
    """A request whose body trickles in over a second: in flight while the gateway stops."""
    body = fixture_json("06_membership_change_mpid_only.json", api_key)
    body["user_profiles"] = [{"mpid": "-42", "audiences": [{"audience_id": 7, "action": "add"}]}]
    content = json.dumps(body).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 32):
            yield content[start : start + 32]
            time.sleep(1.0 / (len(content) / 32))

    result.append(httpx.post(f"{suite.gateway_url}/mparticle", content=chunks(), timeout=10))


def test_sigterm_under_traffic_loses_nothing_and_exits_0(suite: ProcessSuite) -> None:
    exits = {}
    with Traffic(suite) as traffic:
        time.sleep(0.5)
        for service in ("keys", "audience", "segment"):
            exits[service] = stop_and_time(suite, service)
            suite.start_service(service)
            suite.wait_ready()
            time.sleep(0.5)

        traffic.hold()
        slow: list[httpx.Response] = []
        uploader = threading.Thread(target=slow_upload, args=(suite, traffic.api_key, slow))
        uploader.start()
        time.sleep(0.3)
        exits["gateway"] = stop_and_time(suite, "gateway")
        uploader.join()

    assert traffic.failures == []
    assert traffic.outcomes["ok"] > 20
    assert [r.status_code for r in slow] == [200]
    for service, (code, seconds) in exits.items():
        assert code == 0, (service, suite.log(service)[-2000:])
        assert seconds < GRACE_SECONDS, service
    suite.start_service("gateway")
    suite.wait_ready()
    assert traffic.accepted | {-42} <= stored_members(suite)


def stored_members(suite: ProcessSuite, audience_id: int = 7) -> set[int]:
    stub = suite.stub("audience", audience_pb2_grpc.AudienceServiceStub)
    members: set[int] = set()
    token = ""
    while True:
        page = stub.ListMembers(
            audience_pb2.ListMembersRequest(
                account_id="acme", audience_id=audience_id, page_token=token
            )
        )
        members.update(page.mpids)
        token = page.next_page_token
        if not token:
            return members


def test_sigterm_lets_every_call_in_flight_finish(suite: ProcessSuite) -> None:
    """Calls held up by a paused Redis are in flight when SIGTERM arrives: each completes,
    calls that arrive afterwards are refused, and the service exits 0 within its grace."""
    api_key = suite.create_api_key()
    keys = suite.stub("keys", keys_pb2_grpc.KeyServiceStub)
    audience = suite.stub("audience", audience_pb2_grpc.AudienceServiceStub)
    segment = suite.stub("segment", segment_pb2_grpc.SegmentServiceStub)
    calls = {
        "keys": lambda: keys.ValidateKey(keys_pb2.ValidateKeyRequest(plaintext=api_key), timeout=5),
        "audience": lambda: audience.ApplyMembershipChanges(
            audience_pb2.ApplyMembershipChangesRequest(
                account_id="acme",
                connector_id="con_0000000000000000",
                audiences=[audience_pb2.AudienceChanges(audience_id=8, add_mpids=[-7, 7])],
            ),
            timeout=5,
        ),
        "segment": lambda: segment.ListSegments(
            segment_pb2.ListSegmentsRequest(account_id="acme"), timeout=5
        ),
    }
    assert suite.redis.process is not None
    redis_pid = suite.redis.process.pid

    for service, call in calls.items():
        results: list[object] = []
        os.kill(redis_pid, signal.SIGSTOP)
        in_flight = threading.Thread(target=_record_outcome, args=(call, results))
        in_flight.start()
        time.sleep(0.3)
        started = time.monotonic()
        suite.signal(service, signal.SIGTERM)
        time.sleep(0.3)
        late = _outcome(call)
        os.kill(redis_pid, signal.SIGCONT)
        in_flight.join()
        code = suite.processes[service].wait(GRACE_SECONDS + 10)

        assert not isinstance(results[0], grpc.StatusCode), (service, results[0])
        assert late == grpc.StatusCode.UNAVAILABLE, service
        assert code == 0, (service, suite.log(service)[-2000:])
        assert time.monotonic() - started < GRACE_SECONDS, service
        suite.start_service(service)
        suite.wait_ready()

    assert {-7, 7} <= stored_members(suite, audience_id=8)


def _record_outcome(call: Any, results: list[object]) -> None:
    results.append(_outcome(call))


def _outcome(call: Any) -> object:
    """The call's answer, or its status code when it failed."""
    try:
        return call()
    except grpc.RpcError as error:
        return error.code()


# A service whose last step of stopping never finishes, run by the same entrypoint as ours.
_STUCK_SERVICE = """
import asyncio

from services.common.grpc_server import GrpcServer, run_service
from services.common.settings import BaseServiceSettings


async def release_that_never_returns() -> None:
    await asyncio.Event().wait()


async def build(settings: BaseServiceSettings) -> GrpcServer:
    async def ready() -> bool:
        return True

    return GrpcServer(
        "stuck", "127.0.0.1:0", [], readiness=ready, on_stop=[release_that_never_returns]
    )


run_service("stuck", BaseServiceSettings, build)
"""


def test_a_stop_stuck_past_its_grace_exits_1_and_logs_where_it_waited() -> None:
    grace = 0.5
    with subprocess.Popen(
        [sys.executable, "-c", _STUCK_SERVICE],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "SHUTDOWN_GRACE_SECONDS": str(grace)},
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if json.loads(line)["message"] == "serving":
                break

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(grace + STOP_MARGIN_SECONDS + 10)
        elapsed = time.monotonic() - started
        lines = [json.loads(line) for line in process.stdout]

    assert code == 1
    assert grace + STOP_MARGIN_SECONDS <= elapsed < grace + STOP_MARGIN_SECONDS + 5
    stuck = [line for line in lines if line["message"] == "stop did not finish in time"]
    assert len(stuck) == 1, lines
    assert stuck[0]["level"] == "ERROR"
    assert "release_that_never_returns" in stuck[0]["exc_info"]
    assert not [line for line in lines if line["message"] == "stopped"]


def test_a_stop_ends_a_background_loop_that_carried_on_after_its_cancellation() -> None:
    # On Python 3.11 a cancellation can be lost inside redis-py (CPython gh-86296); here a
    # loop drops its first one on purpose, as a Redis command finishing at that moment does.
    cancellations = 0

    async def loop_that_drops_one_cancellation() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise

    async def scenario() -> None:
        async def ready() -> bool:
            return True

        server = GrpcServer(
            "loop",
            "127.0.0.1:0",
            [],
            readiness=ready,
            background=[loop_that_drops_one_cancellation],
        )
        await server.start()
        await asyncio.sleep(0)

        await asyncio.wait_for(server.stop(0), 10 * RECANCEL_SECONDS + 5)

    asyncio.run(scenario())
    assert cancellations == 2
