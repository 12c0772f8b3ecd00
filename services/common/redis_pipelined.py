"""One Redis connection shared by every coroutine of a process, for the commands of hot paths.

The pooled redis-py client gives each command a connection of its own and hands the reply
back through its pool, retry, timeout and parser layers: on the audience service's lookups
that costs about 150 µs of the process's CPU a call, against about 35 µs here, and on a
membership change of 190 changes about a fifth of the service's time (docs/performance.md).

Here the commands of all callers go out on one connection in the order they are made,
hiredis parses the replies, and each reply is handed to the caller whose command it
answers, in the same order. Nothing else: no retries and no script loading. A caller that
gets ``ConnectionError`` or ``ResponseError`` (a script Redis has not loaded yet, a server
still loading its data) asks the pooled client instead, which knows what to do about each.
"""

import asyncio
import collections
from typing import Any

import hiredis
import redis.asyncio
import redis.exceptions


class PipelinedConnection:
    def __init__(self, url: str, *, password: str = "", timeout_seconds: float = 1.0) -> None:
        """A connection to ``url`` (``redis://`` or ``unix://``), opened at the first command,
        logging in with ``password`` when the URL carries none.

        Each command, connecting included, gives up after ``timeout_seconds``. The connection
        is then closed, and so it is when a command finds one sent before it still waiting
        after that long (its caller having given up sooner), so that a stalled server
        cannot collect an ever longer queue of commands nobody waits for.
        """
        # redis-py reads the URL, so that both clients understand it alike.
        pool = redis.asyncio.ConnectionPool.from_url(url, password=password or None)
        if pool.connection_class not in (
            redis.asyncio.Connection,
            redis.asyncio.UnixDomainSocketConnection,
        ):
            raise ValueError(f"not a redis:// or unix:// URL: {pool.connection_class.__name__}")
        self._options = pool.connection_kwargs
        self._timeout = timeout_seconds
        self._protocol: _ReplyProtocol | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *args: str | bytes | int) -> Any:
        """Send one command and return its reply as hiredis reads it (bytes, not text).

        Raises redis-py's ``TimeoutError`` past the timeout, ``ConnectionError`` when the
        server cannot be reached or the connection is lost, and ``ResponseError`` for an
        error reply.
        """
        try:
            async with asyncio.timeout(self._timeout):
                protocol = self._protocol
                if protocol is None or protocol.closed:
                    protocol = await self._connect()
                if protocol.longest_wait() > self._timeout:
                    raise TimeoutError
                # hiredis's type stub describes a tuple of one item only.
                reply = await protocol.send(hiredis.pack_command(args))  # type: ignore[arg-type]
        except TimeoutError:
            # The commands behind it would wait as long: they fail with it.
            error = redis.exceptions.TimeoutError("Redis did not answer in time")
            self._close(error)
            raise error from None
        except OSError as exc:
            raise redis.exceptions.ConnectionError(f"cannot reach Redis: {exc}") from exc

        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    async def aclose(self) -> None:
        """Close the connection; commands waiting for a reply get ``ConnectionError``."""
        self._close(redis.exceptions.ConnectionError("connection to Redis closed"))

    def _close(self, error: Exception) -> None:
        if self._protocol is not None:
            self._protocol.close(error)
            self._protocol = None

    async def _connect(self) -> "_ReplyProtocol":
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol

            loop = asyncio.get_running_loop()
            options = self._options
            if "path" in options:
                _, protocol = await loop.create_unix_connection(_ReplyProtocol, options["path"])
            else:
                host, port = options.get("host", "localhost"), options.get("port", 6379)
                _, protocol = await loop.create_connection(_ReplyProtocol, host, port)

            try:
                await _handshake(protocol, options)
            except BaseException:
                protocol.close(redis.exceptions.ConnectionError("connection to Redis closed"))
                raise
            self._protocol = protocol
            return protocol


async def _handshake(protocol: "_ReplyProtocol", options: dict[str, Any]) -> None:
    """Log in and choose the database, as the URL asks, then wait for a PING's answer.

    The connection is used only once Redis has answered: while it does not (paused, or a
    replaced server whose old address still accepts connections), the callers wait for the
    one connecting and send nothing, instead of queueing commands that nobody will wait for.
    """
    commands: list[tuple[Any, ...]] = []
    if options.get("password"):
        user = options.get("username")
        commands.append(("AUTH", *([user] if user else []), options["password"]))
    if options.get("db"):
        commands.append(("SELECT", options["db"]))
    commands.append(("PING",))

    for command in commands:
        reply = await protocol.send(hiredis.pack_command(command))
        if isinstance(reply, redis.exceptions.ResponseError):
            # A wrong password or database is not transient: say what failed, not why.
            raise redis.exceptions.ConnectionError(f"Redis refused {command[0]}")


class _ReplyProtocol(asyncio.Protocol):
    """Writes commands as they come; hands each reply to the oldest command still waiting."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=redis.exceptions.ResponseError)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        # When each waiting command was sent (the event loop's clock).
        self._sent_at: collections.deque[float] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._error: Exception | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, packed: bytes) -> "asyncio.Future[Any]":
        if self.closed or self._transport is None:
            raise ConnectionResetError("connection closed")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append(waiter)
        self._sent_at.append(loop.time())
        self._transport.write(packed)
        return waiter

    def longest_wait(self) -> float:
        """Seconds the oldest command still waiting has waited (0 when none waits)."""
        if not self._sent_at:
            return 0.0
        return asyncio.get_running_loop().time() - self._sent_at[0]

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError:
                self.close(redis.exceptions.ConnectionError("Redis sent an unreadable reply"))
                return
            if reply is False:
                return
            if not self._waiting:
                # Redis speaks first only to refuse the connection (too many clients).
                error = f"Redis sent a reply nobody asked for: {str(reply)[:200]}"
                self.close(redis.exceptions.ConnectionError(error))
                return
            waiter = self._waiting.popleft()
            self._sent_at.popleft()
            # A caller that gave up (timed out or cancelled) left its waiter done.
            if not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        error = self._error or redis.exceptions.ConnectionError("connection to Redis lost")
        self._sent_at.clear()
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def close(self, error: Exception) -> None:
        """Drop the connection; the commands still waiting get ``error``."""
        self._error = self._error or error
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
