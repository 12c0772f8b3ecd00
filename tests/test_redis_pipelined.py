"""The shared, pipelined Redis connection of the lookups, against real Redis servers."""

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.exceptions

from services.common.embedded_redis import EmbeddedRedis
from services.common.redis_pipelined import PipelinedConnection


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A server of the test's own, to stop, pause and restart."""
    with EmbeddedRedis() as server:
        yield server


def test_each_caller_gets_the_reply_to_its_own_command(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> list[bytes]:
        connection = PipelinedConnection(redis_server.url)
        try:
            return await asyncio.gather(*(connection.execute("ECHO", f"n{i}") for i in range(2000)))
        finally:
            await connection.aclose()

    assert asyncio.run(scenario()) == [f"n{i}".encode() for i in range(2000)]


def test_an_error_reply_is_raised_and_the_next_command_still_answered(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    redis_client.set("text", "not a number")

    async def scenario() -> tuple[tuple[object, ...], int]:
        connection = PipelinedConnection(redis_server.url)
        try:
            replies = await asyncio.gather(
                connection.execute("INCR", "text"),
                connection.execute("EVALSHA", "0" * 40, 0),
                connection.execute("INCR", "counter"),
                return_exceptions=True,
            )
            return tuple(replies), await connection.execute("INCR", "counter")
        finally:
            await connection.aclose()

    (wrong_type, no_script, counted), after = asyncio.run(scenario())

    assert isinstance(wrong_type, redis.exceptions.ResponseError)
    assert "not an integer" in str(wrong_type)
    assert isinstance(no_script, redis.exceptions.ResponseError)
    assert str(no_script).startswith("NOSCRIPT")
    assert (counted, after) == (1, 2)


_BUSY_FOR_200_MS = """
local started = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - started[1]) * 1000000 + (now[2] - started[2]) > 200000 then
    return 'done'
  end
end
"""


def test_a_caller_that_gives_up_leaves_the_others_their_own_replies(
    redis_server: EmbeddedRedis,
) -> None:
    async def scenario() -> tuple[bytes, bytes]:
        connection = PipelinedConnection(redis_server.url)
        try:
            busy = asyncio.create_task(connection.execute("EVAL", _BUSY_FOR_200_MS, 0))
            abandoned = asyncio.create_task(connection.execute("ECHO", "abandoned"))
            await asyncio.sleep(0.05)
            abandoned.cancel()
            mine = await connection.execute("ECHO", "mine")
            return await busy, mine
        finally:
            await connection.aclose()

    assert asyncio.run(scenario()) == (b"done", b"mine")


def test_a_restarted_server_is_reached_again_without_help(own_redis: EmbeddedRedis) -> None:
    async def scenario() -> None:
        connection = PipelinedConnection(own_redis.url, timeout_seconds=0.5)
        try:
            assert await connection.execute("SET", "k", "before") == b"OK"

            own_redis.stop()
            with pytest.raises(redis.exceptions.ConnectionError):
                await connection.execute("GET", "k")
            with pytest.raises(redis.exceptions.ConnectionError):
                await connection.execute("GET", "k")

            own_redis.start()
            assert await connection.execute("GET", "k") is None  # nothing persisted
            assert await connection.execute("SET", "k", "after") == b"OK"
        finally:
            await connection.aclose()

    asyncio.run(scenario())


def test_a_paused_server_times_out_every_waiting_command_then_serves_again(
    own_redis: EmbeddedRedis,
) -> None:
    assert own_redis.process is not None
    pid = own_redis.process.pid

    async def scenario() -> None:
        connection = PipelinedConnection(own_redis.url, timeout_seconds=0.3)
        try:
            await connection.execute("PING")

            os.kill(pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                answers = await asyncio.gather(
                    *(connection.execute("PING") for _ in range(50)), return_exceptions=True
                )
                waited = time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)

            assert all(isinstance(a, redis.exceptions.TimeoutError) for a in answers), answers
            assert waited < 2
            assert await connection.execute("PING") == b"PONG"
        finally:
            await connection.aclose()

    asyncio.run(scenario())


def test_commands_nobody_waits_for_do_not_queue_up_behind_a_paused_server(
    own_redis: EmbeddedRedis,
) -> None:
    """Callers whose deadlines are shorter than the timeout give up first: once a command
    has waited the whole timeout, the next one drops the connection at once instead of
    queueing behind it."""
    assert own_redis.process is not None
    pid = own_redis.process.pid

    async def scenario() -> tuple[float, bytes]:
        connection = PipelinedConnection(own_redis.url, timeout_seconds=1.0)
        try:
            await connection.execute("PING")

            os.kill(pid, signal.SIGSTOP)
            try:
                for _ in range(20):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(connection.execute("INCR", "abandoned"), 0.02)
                await asyncio.sleep(0.8)  # the first of them has now waited over a second
                started = time.monotonic()
                with pytest.raises(redis.exceptions.TimeoutError):
                    await connection.execute("PING")
                failed_after = time.monotonic() - started
            finally:
                os.kill(pid, signal.SIGCONT)

            return failed_after, await connection.execute("PING")
        finally:
            await connection.aclose()

    failed_after, pong = asyncio.run(scenario())

    assert failed_after < 0.5  # not the whole second of the timeout
    assert pong == b"PONG"


def test_the_url_chooses_the_password_and_the_database(own_redis: EmbeddedRedis) -> None:
    port = own_redis.port
    redis.Redis(host="127.0.0.1", port=port).config_set("requirepass", "s3cret")

    async def scenario() -> None:
        connection = PipelinedConnection(f"redis://:s3cret@127.0.0.1:{port}/3")
        try:
            await connection.execute("SET", "where", "db3")
        finally:
            await connection.aclose()

        refused = PipelinedConnection(f"redis://:wrong@127.0.0.1:{port}/0")
        with pytest.raises(redis.exceptions.ConnectionError, match="refused AUTH"):
            await refused.execute("PING")

    asyncio.run(scenario())

    check = redis.Redis(host="127.0.0.1", port=port, password="s3cret", db=3)
    assert check.get("where") == b"db3"
    check.close()


def test_a_unix_socket_url_is_followed(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    with EmbeddedRedis(extra_args=("--unixsocket", str(socket_path))):

        async def scenario() -> bytes:
            connection = PipelinedConnection(f"unix://{socket_path}?db=2")
            try:
                await connection.execute("SET", "where", "db2")
                return await connection.execute("GET", "where")
            finally:
                await connection.aclose()

        assert asyncio.run(scenario()) == b"db2"


def test_a_tls_url_is_left_to_the_pooled_client() -> None:
    with pytest.raises(ValueError, match="SSLConnection"):
        PipelinedConnection("rediss://127.0.0.1:6380/0")


class _Proxy:
    """A TCP relay to Redis that can turn the connections it holds into black holes: bytes
    are taken and never passed on, and nothing is closed, as when a server dies behind an
    address that a replacement takes over. Connections made afterwards reach Redis."""

    def __init__(self, redis_port: int) -> None:
        self._redis_port = redis_port
        self._held: list[asyncio.StreamWriter] = []
        self._swallowing: set[int] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def swallow_open_connections(self) -> None:
        self._swallowing = {id(writer) for writer in self._held}

    async def close(self) -> None:
        self._server.close()
        for writer in self._held:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._redis_port
        )
        self._held += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if id(writer) not in self._swallowing:
                    sink.write(data)

        await asyncio.gather(
            pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True
        )


def test_a_connection_that_went_silent_is_replaced_though_every_caller_gives_up_first(
    redis_server: EmbeddedRedis,
) -> None:
    async def scenario() -> float:
        proxy = _Proxy(redis_server.port)
        await proxy.start()
        connection = PipelinedConnection(f"redis://127.0.0.1:{proxy.port}/0")
        try:
            assert await connection.execute("PING") == b"PONG"

            proxy.swallow_open_connections()
            started = time.monotonic()
            while time.monotonic() - started < 10:
                try:
                    # Each caller's deadline is shorter than the connection's timeout.
                    await asyncio.wait_for(connection.execute("PING"), 0.2)
                    return time.monotonic() - started
                except (TimeoutError, redis.exceptions.TimeoutError):
                    pass
            raise AssertionError("never answered again")
        finally:
            await connection.aclose()
            await proxy.close()

    assert asyncio.run(scenario()) < 2


def test_a_server_that_refuses_the_connection_is_a_connection_error(
    own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses a client over maxclients with an error it sends before any command."""
    admin = redis.Redis(host="127.0.0.1", port=own_redis.port)
    admin.config_set("maxclients", 1)

    async def scenario() -> None:
        connection = PipelinedConnection(own_redis.url)
        try:
            for _ in range(10):
                with pytest.raises(redis.exceptions.ConnectionError):
                    await connection.execute("PING")
        finally:
            await connection.aclose()

    try:
        asyncio.run(scenario())
    finally:
        admin.config_set("maxclients", 10000)
        admin.close()

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
