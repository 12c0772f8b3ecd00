"""The suite as real processes (Redis, the three gRPC services, the gateway), for tests that
stop, pause, kill and restart them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from protos.segment.v1 import segment_pb2, segment_pb2_grpc
from services.common.embedded_redis import EmbeddedRedis, free_port
from tests.conftest import REPO

SERVICES = ("keys", "audience", "segment", "gateway")


def _debug_command_args(binary: str) -> tuple[str, ...]:
    """Redis 7 refuses DEBUG (used here to pause and fill the server) unless enabled."""
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    major = int(version.split("v=")[1].split(".")[0])
    return ("--enable-debug-command", "yes") if major >= 7 else ()


class ProcessSuite:
    def __init__(self, data_dir: Path, *, persistent: bool = True, **env: str) -> None:
        self.redis = EmbeddedRedis(data_dir=data_dir / "redis" if persistent else None)
        self.redis.extra_args = _debug_command_args(self.redis.binary)
        self.ports = {name: free_port() for name in SERVICES}
        self.metrics_ports = {name: free_port() for name in SERVICES if name != "gateway"}
        self.logs = data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._channels: list[grpc.Channel] = []
        self.env = {k: v for k, v in os.environ.items() if k != "MPARTICLE_TOKEN"}
        self.env.update(
            KEYS_PORT=str(self.ports["keys"]),
            AUDIENCE_PORT=str(self.ports["audience"]),
            SEGMENT_PORT=str(self.ports["segment"]),
            GATEWAY_PORT=str(self.ports["gateway"]),
            KEYS_TARGET=f"127.0.0.1:{self.ports['keys']}",
            AUDIENCE_TARGET=f"127.0.0.1:{self.ports['audience']}",
            KEYS_METRICS_PORT=str(self.metrics_ports["keys"]),
            AUDIENCE_METRICS_PORT=str(self.metrics_ports["audience"]),
            SEGMENT_METRICS_PORT=str(self.metrics_ports["segment"]),
            READINESS_INTERVAL_SECONDS="0.2",
            SHUTDOWN_GRACE_SECONDS="5",
            # Every request asks the keys service, so that its faults show.
            GATEWAY_KEY_CACHE_SECONDS="0",
        )
        self.env.update(env)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def start(self) -> "ProcessSuite":
        try:
            self.redis.start()
            self.env["REDIS_URL"] = self.redis.url
            for name in SERVICES:
                self.start_service(name)
            self.wait_ready()
        except BaseException:
            # Leave nothing running behind a suite that failed to start.
            self.stop()
            raise
        return self

    def start_service(self, name: str) -> None:
        previous = self.processes.get(name)
        if previous is not None:
            # Reap a process a test killed, before its handle is replaced.
            previous.wait(15)

        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def signal(self, name: str, signum: int) -> None:
        self.processes[name].send_signal(signum)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
            try:
                gateway_ready = httpx.get(f"{self.gateway_url}/readyz", timeout=1).is_success
            except httpx.HTTPError:
                gateway_ready = False
            # The gateway's readiness covers keys and audience, not segment.
            if gateway_ready and self.health("segment") == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
        raise AssertionError("the suite did not become ready")

    def health(self, name: str, service: str = "") -> int:
        """The gRPC health status a service reports (-1 when it cannot be reached)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports[name]}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1
                )
            except grpc.RpcError:
                return -1
            return reply.status

    def stub(self, name: str, stub_class: Any) -> Any:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.ports[name]}")
        self._channels.append(channel)
        return stub_class(channel)

    def create_api_key(self, account: str = "acme") -> str:
        segment = self.stub("segment", segment_pb2_grpc.SegmentServiceStub)
        connector = segment.CreateConnector(
            segment_pb2.CreateConnectorRequest(account_id=account, name="Web")
        ).connector
        keys = self.stub("keys", keys_pb2_grpc.KeyServiceStub)
        return keys.CreateKey(
            keys_pb2.CreateKeyRequest(account_id=account, connector_id=connector.connector_id)
        ).plaintext

    def stop(self) -> dict[str, int | None]:
        """Stop every process (SIGTERM, then SIGKILL after 15 s); returns exit codes."""
        for channel in self._channels:
            channel.close()
        codes: dict[str, int | None] = {}
        for name in reversed(SERVICES):
            process = self.processes.get(name)
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes[name] = process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes[name] = None
        if self.redis.process is not None and self.redis.process.poll() is None:
            os.kill(self.redis.process.pid, signal.SIGCONT)
        self.redis.stop()
        return codes
