"""Runs the whole suite on this machine: ``python -m services`` (``make run``).

Starts Redis (the embedded default, unless REDIS_URL points at a server), then keys,
audience, segment and the gateway, each in its own process with its logs on this terminal.
Ctrl-C, SIGTERM or closing the terminal (SIGHUP) stops them in order: the gateway first,
Redis last. If one of them dies, the others are stopped too and the exit status is 1.
"""

import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

from pydantic import Field

from services.audience.settings import AudienceSettings
from services.common import children, logs
from services.common.embedded_redis import EmbeddedRedis, EmbeddedRedisError, port_is_free
from services.common.settings import BaseServiceSettings, SettingsError
from services.gateway.settings import GatewaySettings
from services.keys.settings import KeysSettings
from services.segment.settings import SegmentSettings

_LOGGER = logging.getLogger("services.__main__")

# Start order; they stop in the reverse order.
SERVICES = ("keys", "audience", "segment", "gateway")
# The gRPC services, whose callers (the other services, audiencectl) find them at *_TARGET.
GRPC_SERVICES = ("keys", "audience", "segment")
STOP_TIMEOUT_SECONDS = 30


class RunSettings(BaseServiceSettings):
    """What the runner itself reads; each service reads and checks its own settings."""

    redis_url: str = Field("", validation_alias="REDIS_URL")
    # Where the embedded Redis keeps its data, and its port (0: a free one).
    data_dir: Path = Field(Path("var"), validation_alias="RUN_DATA_DIR")
    redis_port: int = Field(0, validation_alias="RUN_REDIS_PORT", ge=0, le=65535)


class Suite:
    def __init__(self, settings: RunSettings, env: dict[str, str]) -> None:
        self.settings = settings
        self.env = env
        # What each service will read, checked before anything starts.
        self.services = _service_settings(env)
        self.redis: EmbeddedRedis | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requested = False
        self._lock: IO[str] | None = None

    def start(self) -> None:
        """Start Redis and the services; raises RuntimeError, before starting anything, when
        another run holds the data folder or a port the services need is taken."""
        data_dir = self.settings.data_dir / "redis"
        if not self.settings.redis_url:
            self._lock_data(data_dir)
        self._check_ports()

        if not self.settings.redis_url:
            self.redis = EmbeddedRedis(
                port=self.settings.redis_port, data_dir=data_dir, end_with_parent=True
            ).start()
            self.env["REDIS_URL"] = self.redis.url
            _LOGGER.info("redis started", extra={"url": self.redis.url, "data": str(data_dir)})
        else:
            where = urlsplit(self.settings.redis_url)
            # Host and port only: a URL may carry a password.
            _LOGGER.info("using redis", extra={"host": where.hostname, "port": where.port})

        for name in SERVICES:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=children.ending_with_this_process(),
            )

    def gateway_url(self) -> str:
        gateway = self.services["gateway"]
        host = "127.0.0.1" if gateway.host in ("0.0.0.0", "::", "") else gateway.host
        return f"http://{host}:{gateway.port}"

    def wait_until_ready(self, timeout_seconds: float = 30.0) -> bool:
        url = f"{self.gateway_url()}/readyz"
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and not self.stop_requested and not self.failed():
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def failed(self) -> str:
        """The name of a service (or of the embedded Redis) that exited on its own, or ''."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        redis_process = self.redis.process if self.redis is not None else None
        if redis_process is not None and redis_process.poll() is not None:
            return "redis"
        return ""

    def how_it_ended(self, name: str) -> str:
        """How a process that ``failed()`` names ended: its exit status or its signal."""
        process = self.redis.process if name == "redis" and self.redis else self.processes[name]
        status = process.poll() if process is not None else None
        if status is None:
            return "running"
        if status < 0:
            return f"killed by {signal.Signals(-status).name}"
        return f"exit status {status}"

    def stop(self) -> None:
        for name in reversed(SERVICES):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _LOGGER.error("service did not stop in time; killing it", extra={"svc": name})
                process.kill()
                process.wait()
        if self.redis is not None:
            self.redis.stop()

    def _lock_data(self, data_dir: Path) -> None:
        """Hold a lock on the data folder for the whole run: two Redis servers on one
        append-only file would corrupt it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = (data_dir / "run.lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another run uses {data_dir}: stop it first (or set RUN_DATA_DIR)"
            ) from None

    def _check_ports(self) -> None:
        """Fail at once, naming their variables, when ports the services bind are taken."""
        taken = []
        for name, settings in self.services.items():
            ports = {f"{name.upper()}_PORT": settings.port}
            if hasattr(settings, "metrics_port"):
                ports[f"{name.upper()}_METRICS_PORT"] = settings.metrics_port
            for variable, port in ports.items():
                if port and not port_is_free(settings.host, port):
                    taken.append(f"{variable} {port}")
        if taken:
            raise RuntimeError(
                f"taken (by another make run or another program): {', '.join(taken)}; "
                "set those variables to free ports"
            )


_SETTINGS: dict[str, type[BaseServiceSettings]] = {
    "keys": KeysSettings,
    "audience": AudienceSettings,
    "segment": SegmentSettings,
    "gateway": GatewaySettings,
}


def _service_settings(env: dict[str, str]) -> dict[str, Any]:
    """The settings each service will read from ``env``; raises SettingsError."""
    # REDIS_URL is set by the runner itself when it starts the embedded Redis; until then a
    # placeholder that names no server lets the other settings be checked.
    environ = {"REDIS_URL": "redis://embedded-redis.invalid/0"} | env
    return {name: cls.from_env(environ) for name, cls in _SETTINGS.items()}


def _with_local_targets(env: dict[str, str]) -> dict[str, str]:
    """``env`` with each gRPC service's address for its callers taken from the port it is
    given (``KEYS_PORT=51051`` alone moves the keys service and its callers), unless set."""
    targets = {}
    for name in GRPC_SERVICES:
        port = env.get(f"{name.upper()}_PORT")
        if port and f"{name.upper()}_TARGET" not in env:
            targets[f"{name.upper()}_TARGET"] = f"127.0.0.1:{port}"
    return env | targets


def _non_default_targets(env: dict[str, str]) -> str:
    """What audiencectl needs to be told, in another terminal, to find this suite."""
    defaults = {
        f"{name.upper()}_TARGET": f"127.0.0.1:{_SETTINGS[name].model_fields['port'].default}"
        for name in GRPC_SERVICES
    }
    moved = {
        variable: env[variable]
        for variable, default in defaults.items()
        if variable in env and env[variable] != default
    }
    return " ".join(f"{variable}={target}" for variable, target in moved.items())


def main() -> int:
    parent = os.getppid()
    env = _with_local_targets(dict(os.environ))
    try:
        settings = RunSettings.from_env()
        suite = Suite(settings, env)
    except SettingsError as exc:
        sys.exit(f"run: {exc}")

    logs.configure("run", settings.log_level)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        suite.stop_requested = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)

    try:
        suite.start()
    except (EmbeddedRedisError, RuntimeError) as exc:
        _LOGGER.error(str(exc))
        return 1

    status = 0
    try:
        if suite.wait_until_ready():
            url = suite.gateway_url()
            ready: dict[str, str] = {"gateway": f"{url}/mparticle"}
            if moved := _non_default_targets(env):
                ready["audiencectl_env"] = moved
            _LOGGER.info("suite ready; Ctrl-C stops it", extra=ready)
        elif not suite.stop_requested and not suite.failed():
            _LOGGER.warning(
                "the suite is not ready yet: GET /readyz names the part that is not, and "
                "the services' lines above say why (Redis at REDIS_URL, a *_TARGET...)"
            )
        while not suite.stop_requested:
            if os.getppid() != parent:
                # make (or the terminal) went away without passing a signal on.
                _LOGGER.warning("the parent process is gone; stopping the suite")
                break
            failed = suite.failed()
            if failed:
                _LOGGER.error(
                    "a service exited; stopping the suite",
                    extra={"svc": failed, "ended": suite.how_it_ended(failed)},
                )
                status = 1
                break
            time.sleep(0.2)
    finally:
        suite.stop()
    _LOGGER.info("suite stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
