"""Transient faults, injected into the suite running as real processes.

Every answer during a fault must be one mParticle retries (503, or 429 when shedding) and
come within about a second; never a 2xx for a change that was not stored. Once the
dependency is back, the suite serves again by itself within two seconds. Readiness reports
not serving meanwhile; liveness does not.
"""

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
from grpc_health.v1 import health_pb2

from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from tests.conftest import fixture_json
from tests.processes import ProcessSuite

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RETRIED = {408, 429, 500, 502, 503, 504}
# What mParticle must get during a fault: an answer it retries, within a second (the
# gateway's budget is 0.75 s), and service again within two seconds of the fault ending.
ANSWER_WITHIN_SECONDS = 1.0
RECOVER_WITHIN_SECONDS = 2.0
# A lookup waits up to the service's Redis timeout (1 s) for a server that stopped answering.
STALLED_LOOKUP_WITHIN_SECONDS = 1.5


class Sender:
    """Sends one-member membership changes and remembers which were accepted."""

    def __init__(self, suite: ProcessSuite) -> None:
        self.suite = suite
        self.api_key = suite.create_api_key()
        self.accepted: set[int] = set()
        self.sent: set[int] = set()
        self._next = 1
        self._lock = threading.Lock()

    def send(self) -> tuple[httpx.Response, float]:
        with self._lock:
            mpid = self._next
            self._next += 1
            self.sent.add(mpid)
        body = fixture_json("06_membership_change_mpid_only.json", self.api_key)
        body["user_profiles"] = [
            {"mpid": str(mpid), "audiences": [{"audience_id": 7, "action": "add"}]}
        ]

        started = time.monotonic()
        response = httpx.post(f"{self.suite.gateway_url}/mparticle", json=body, timeout=10)
        elapsed = time.monotonic() - started

        assert response.status_code == 200 or response.status_code in RETRIED, response.text
        if response.status_code == 200:
            assert response.json()["suspend_subscription"] is False
            with self._lock:
                self.accepted.add(mpid)
        else:
            assert response.headers.get("retry-after")
        return response, elapsed

    def send_until_accepted(self, timeout: float) -> float:
        """Seconds until a change is accepted again."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            response, _ = self.send()
            if response.status_code == 200:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"not accepted again within {timeout} s")

    def assert_nothing_lost(self) -> None:
        """Every accepted change is stored, and nothing that was never sent."""
        stub = self.suite.stub("audience", audience_pb2_grpc.AudienceServiceStub)
        stored: set[int] = set()
        token = ""
        while True:
            page = stub.ListMembers(
                audience_pb2.ListMembersRequest(account_id="acme", audience_id=7, page_token=token)
            )
            stored.update(page.mpids)
            token = page.next_page_token
            if not token:
                break
        assert self.accepted <= stored
        assert stored <= self.sent


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[ProcessSuite]:
    running = ProcessSuite(tmp_path).start()
    yield running
    running.stop()


@pytest.fixture
def sender(suite: ProcessSuite) -> Sender:
    sender = Sender(suite)
    response, _ = sender.send()
    assert response.status_code == 200
    return sender


def wait_for(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def assert_fault_answers(sender: Sender, count: int = 3) -> None:
    for _ in range(count):
        response, elapsed = sender.send()
        assert response.status_code == 503, response.text
        assert elapsed < ANSWER_WITHIN_SECONDS


def lookup(suite: ProcessSuite, mpid: int) -> tuple[list[int] | grpc.StatusCode, float]:
    """The audiences ``mpid`` is in, or the code the lookup failed with; and how long it took."""
    stub = suite.stub("audience", audience_pb2_grpc.AudienceServiceStub)
    request = audience_pb2.GetUserAudiencesRequest(account_id="acme", mpid=mpid)
    started = time.monotonic()
    try:
        reply = stub.GetUserAudiences(request, timeout=5)
        answer: list[int] | grpc.StatusCode = list(reply.audience_ids)
    except grpc.RpcError as exc:
        answer = exc.code()
    return answer, time.monotonic() - started


def assert_lookups_unavailable(suite: ProcessSuite, mpid: int, within: float) -> None:
    for _ in range(3):
        answer, elapsed = lookup(suite, mpid)
        assert answer == grpc.StatusCode.UNAVAILABLE
        assert elapsed < within


def readyz(suite: ProcessSuite) -> int:
    return httpx.get(f"{suite.gateway_url}/readyz", timeout=5).status_code


def test_redis_stopped_and_restarted(suite: ProcessSuite, sender: Sender) -> None:
    member = min(sender.accepted)
    suite.redis.stop()

    assert_fault_answers(sender)
    assert_lookups_unavailable(suite, member, within=ANSWER_WITHIN_SECONDS)
    wait_for(lambda: suite.health("audience") == NOT_SERVING)
    wait_for(lambda: suite.health("keys") == NOT_SERVING)
    assert suite.health("audience", "liveness") == SERVING
    assert readyz(suite) == 503
    assert httpx.get(f"{suite.gateway_url}/healthz").status_code == 200

    suite.redis.start()

    wait_for(lambda: lookup(suite, member)[0] == [7], timeout=RECOVER_WITHIN_SECONDS)
    assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
    wait_for(lambda: readyz(suite) == 200, timeout=2)
    sender.assert_nothing_lost()


def test_redis_paused_with_sigstop(suite: ProcessSuite, sender: Sender) -> None:
    assert suite.redis.process is not None
    member = min(sender.accepted)
    os.kill(suite.redis.process.pid, signal.SIGSTOP)
    try:
        # Not ready within the check's interval (0.2 s here) and its bound (0.5 s), not
        # after the Redis client's own timeouts and retries (3 s and more).
        wait_for(lambda: readyz(suite) == 503, timeout=1.5)
        assert_fault_answers(sender)
        assert_lookups_unavailable(suite, member, within=STALLED_LOOKUP_WITHIN_SECONDS)
        wait_for(lambda: suite.health("audience") == NOT_SERVING)
    finally:
        os.kill(suite.redis.process.pid, signal.SIGCONT)

    wait_for(lambda: lookup(suite, member)[0] == [7], timeout=RECOVER_WITHIN_SECONDS)
    assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
    sender.assert_nothing_lost()


def test_redis_busy_with_debug_sleep(suite: ProcessSuite, sender: Sender) -> None:
    client = redis.Redis.from_url(suite.redis.url)
    sleeper = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", "2"))
    sleeper.start()
    time.sleep(0.1)

    assert_fault_answers(sender, count=1)

    sleeper.join()
    assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
    sender.assert_nothing_lost()
    client.close()


@pytest.mark.parametrize(
    ("fault", "undo"),
    [
        (("CONFIG", "SET", "maxmemory", "1"), ("CONFIG", "SET", "maxmemory", "0")),
        (("REPLICAOF", "127.0.0.1", "1"), ("REPLICAOF", "NO", "ONE")),
    ],
    ids=["out_of_memory", "read_only_replica"],
)
def test_redis_refusing_writes(
    suite: ProcessSuite, sender: Sender, fault: tuple[str, ...], undo: tuple[str, ...]
) -> None:
    client = redis.Redis.from_url(suite.redis.url)
    client.execute_command(*fault)
    try:
        assert_fault_answers(sender)
    finally:
        client.execute_command(*undo)

    assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
    sender.assert_nothing_lost()
    assert "Traceback" not in suite.log("audience") + suite.log("keys")
    client.close()


def test_redis_loading_its_data(suite: ProcessSuite, sender: Sender) -> None:
    client = redis.Redis.from_url(suite.redis.url)
    # Values of 1 kB, uncompressed: a loading server answers (LOADING) every 2 MB it reads.
    client.execute_command("DEBUG", "POPULATE", 30_000, "filler", 1000)
    client.config_set("rdbcompression", "no")
    client.bgrewriteaof()
    wait_for(lambda: not client.info("persistence")["aof_rewrite_in_progress"], timeout=60)
    client.close()
    suite.redis.stop()

    # 200 µs a key: the restarted server is loading for about six seconds.
    suite.redis.extra_args += ("--key-load-delay", "200")
    suite.redis.launch()
    probe = redis.Redis.from_url(suite.redis.url, socket_timeout=0.5)

    def loading() -> bool:
        try:
            probe.ping()
        except (redis.exceptions.BusyLoadingError, redis.exceptions.TimeoutError):
            return True
        except redis.exceptions.ConnectionError:
            pass
        return False

    wait_for(loading, timeout=10)
    answered_while_loading = 0
    while loading():
        response, elapsed = sender.send()
        if not loading():
            break
        assert response.status_code == 503, response.text
        assert elapsed < ANSWER_WITHIN_SECONDS
        answered_while_loading += 1
        time.sleep(0.1)
    loaded_at = time.monotonic()

    assert answered_while_loading >= 3
    sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS)
    assert time.monotonic() - loaded_at < RECOVER_WITHIN_SECONDS
    sender.assert_nothing_lost()
    probe.close()


def test_audience_service_killed_and_restarted(suite: ProcessSuite, sender: Sender) -> None:
    suite.signal("audience", signal.SIGKILL)
    suite.processes["audience"].wait(5)

    assert_fault_answers(sender)
    assert readyz(suite) == 503

    suite.start_service("audience")
    wait_for(lambda: suite.health("audience") == SERVING, timeout=15)

    assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
    sender.assert_nothing_lost()


def test_keys_service_killed_and_restarted(suite: ProcessSuite, sender: Sender) -> None:
    suite.signal("keys", signal.SIGKILL)
    suite.processes["keys"].wait(5)

    assert_fault_answers(sender)

    suite.start_service("keys")
    wait_for(lambda: suite.health("keys") == SERVING, timeout=15)

    assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
    sender.assert_nothing_lost()


def test_overload_is_shed_with_429_at_once(tmp_path: Path) -> None:
    suite = ProcessSuite(tmp_path, GATEWAY_MAX_IN_FLIGHT="2").start()
    try:
        sender = Sender(suite)
        assert suite.redis.process is not None
        os.kill(suite.redis.process.pid, signal.SIGSTOP)
        slow = [threading.Thread(target=sender.send) for _ in range(2)]
        for thread in slow:
            thread.start()
        time.sleep(0.3)

        response, elapsed = sender.send()

        assert response.status_code == 429
        assert response.json()["error"]["code"] == "overloaded"
        assert response.headers["retry-after"]
        assert elapsed < 0.5
        os.kill(suite.redis.process.pid, signal.SIGCONT)
        for thread in slow:
            thread.join()
        assert sender.send_until_accepted(timeout=RECOVER_WITHIN_SECONDS) < RECOVER_WITHIN_SECONDS
        sender.assert_nothing_lost()
    finally:
        suite.stop()
