"""The test stack: a real Redis, the three gRPC services on port 0 and the gateway over real
HTTP, all started once per session. Each test gets an empty Redis."""

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
import uvicorn
from pydantic import SecretStr

from protos.audience.v1 import audience_pb2_grpc
from protos.keys.v1 import keys_pb2, keys_pb2_grpc
from protos.segment.v1 import segment_pb2, segment_pb2_grpc
from services.audience.server import create_server as create_audience_server
from services.audience.settings import AudienceSettings
from services.common.embedded_redis import EmbeddedRedis
from services.common.grpc_server import GrpcServer
from services.gateway.server import create_server as create_gateway_server
from services.gateway.settings import GatewaySettings
from services.keys.server import create_server as create_keys_server
from services.keys.settings import KeysSettings
from services.segment.server import create_server as create_segment_server
from services.segment.settings import SegmentSettings

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(
    os.environ.get("MPARTICLE_FIXTURES", REPO.parent / "shared" / "fixtures" / "mparticle")
)
FIXTURE_KEY = "test-key-0000-not-a-real-secret"
MPARTICLE_TOKEN = "test-mparticle-token"
# A gateway waits up to its grace (10 s) for connections still open, then the gRPC servers
# stop one after the other.
STOP_SECONDS = 30


def pytest_configure(config: pytest.Config) -> None:
    if not FIXTURES.is_dir():
        raise pytest.UsageError(
            f"the shared mParticle fixtures are not at {FIXTURES}: "
            "set MPARTICLE_FIXTURES to their folder"
        )


def fixture_json(name: str, api_key: str | None = None) -> dict[str, Any]:
    """A request from the shared fixtures, with its placeholder key replaced by ``api_key``."""
    text = (FIXTURES / name).read_text()
    if api_key is not None:
        text = text.replace(FIXTURE_KEY, api_key)
    return json.loads(text)


@dataclass
class Stack:
    """The running suite, served from an event loop in a background thread."""

    redis_url: str
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    servers: dict[str, GrpcServer] = field(default_factory=dict)
    gateway_port: int = 0
    _gateways: list[tuple[uvicorn.Server, "asyncio.Task[None]"]] = field(default_factory=list)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self._start())

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.servers[service].port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    async def _start(self) -> None:
        common: dict[str, Any] = {
            "redis_url": self.redis_url,
            "port": 0,
            "metrics_port": 0,
            "readiness_interval_seconds": 0.2,
        }
        self.servers["keys"] = await create_keys_server(KeysSettings(**common))
        self.servers["audience"] = await create_audience_server(
            AudienceSettings(**common, cleanup_idle_seconds=0.05)
        )
        self.servers["segment"] = await create_segment_server(
            SegmentSettings(**common, audience_target=self.target("audience"))
        )
        for server in self.servers.values():
            await server.start()

        self.gateway_port = await self._start_gateway()

    def start_gateway(self, **settings: Any) -> str:
        """Another gateway on the same services, with other settings; returns its URL."""
        return f"http://127.0.0.1:{self.run(self._start_gateway(**settings))}"

    async def _start_gateway(self, **overrides: Any) -> int:
        settings = GatewaySettings(
            port=0,
            keys_target=self.target("keys"),
            audience_target=self.target("audience"),
            mparticle_token=SecretStr(MPARTICLE_TOKEN),
            **overrides,
        )
        gateway = create_gateway_server(settings)
        self._gateways.append((gateway, asyncio.create_task(gateway.serve())))
        while not gateway.started:  # noqa: ASYNC110 - uvicorn sets only a flag
            await asyncio.sleep(0.01)
        return gateway.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        stopping = asyncio.run_coroutine_threadsafe(self._stop(), self.loop)
        try:
            stopping.result(STOP_SECONDS)
        except TimeoutError:
            raise AssertionError(f"the stack did not stop:\n{self._tasks_text()}") from None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _stop(self) -> None:
        # Together: each gateway may wait its grace for a connection a test left open.
        for gateway, _ in self._gateways:
            gateway.should_exit = True
        await asyncio.gather(*(task for _, task in self._gateways))
        for server in reversed(self.servers.values()):
            await server.stop(1)

    def _tasks_text(self) -> str:
        """Where each task of the stack's loop waits, for a stop that did not end."""
        lines = []
        for task in asyncio.all_tasks(self.loop):
            lines.append(repr(task))
            # Down the chain of awaited coroutines; compiled ones (gRPC's) show no frame.
            awaited: Any = task.get_coro()
            while awaited is not None:
                frame = getattr(awaited, "cr_frame", None)
                if frame is not None:
                    code = frame.f_code
                    lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_name}")
                awaited = getattr(awaited, "cr_await", None)
        return "\n".join(lines)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture(scope="session")
def stack(redis_server: EmbeddedRedis) -> Iterator[Stack]:
    running = Stack(redis_server.url)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def empty_redis(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that uses Redis starts and ends with an empty database."""
    if "redis_server" not in request.fixturenames:
        yield
        return
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushall()
    yield
    client.flushall()
    client.close()


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Token {MPARTICLE_TOKEN}", "Content-Type": "application/json"}
    with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=10) as client:
        yield client


def _channel_fixture(service: str, stub_class: Any) -> Any:
    @pytest.fixture
    def fixture(stack: Stack) -> Iterator[Any]:
        with grpc.insecure_channel(stack.target(service)) as channel:
            yield stub_class(channel)

    return fixture


keys_stub = _channel_fixture("keys", keys_pb2_grpc.KeyServiceStub)
audience_stub = _channel_fixture("audience", audience_pb2_grpc.AudienceServiceStub)
segment_stub = _channel_fixture("segment", segment_pb2_grpc.SegmentServiceStub)


@dataclass(frozen=True)
class Tenant:
    account_id: str
    connector_id: str
    api_key: str


@pytest.fixture
def tenant(keys_stub: Any, segment_stub: Any) -> Tenant:
    """An account with one connector and an API key for it, made through the services."""
    connector = segment_stub.CreateConnector(
        segment_pb2.CreateConnectorRequest(account_id="acme", name="Web")
    ).connector
    created = keys_stub.CreateKey(
        keys_pb2.CreateKeyRequest(account_id="acme", connector_id=connector.connector_id)
    )
    return Tenant("acme", connector.connector_id, created.plaintext)
