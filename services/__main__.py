"""Runs the whole suite on this machine: ``python -m services`` (``make run``).

Starts Redis (the embedded default, unless REDIS_URL points at a server), then keys,
audience, segment and the gateway, each in its own process with its logs on this terminal.
Ctrl-C or SIGTERM stops them in order: the gateway first, Redis last. If one of them dies,
the others are stopped too and the exit status is 1.
"""

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from services.common import logs
from services.common.embedded_redis import EmbeddedRedis, EmbeddedRedisError

_LOGGER = logging.getLogger("services.__main__")

# Start order; they stop in the reverse order.
SERVICES = ("keys", "audience", "segment", "gateway")
STOP_TIMEOUT_SECONDS = 30


class Suite:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.redis: EmbeddedRedis | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requested = False

    def start(self) -> None:
        if not self.env.get("REDIS_URL"):
            data_dir = Path(self.env.get("RUN_DATA_DIR", "var")) / "redis"
            port = int(self.env.get("RUN_REDIS_PORT", "0"))
            self.redis = EmbeddedRedis(port=port, data_dir=data_dir).start()
            self.env["REDIS_URL"] = self.redis.url
            _LOGGER.info("redis started", extra={"url": self.redis.url, "data": str(data_dir)})

        for name in SERVICES:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def gateway_url(self) -> str:
        host = self.env.get("GATEWAY_HOST", "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.env.get('GATEWAY_PORT', '8080')}"

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
        """The name of a service that exited on its own, or ''."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return ""

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


def main() -> int:
    logs.configure("run", os.environ.get("LOG_LEVEL", "INFO"))
    suite = Suite(dict(os.environ))

    def request_stop(signum: int, frame: FrameType | None) -> None:
        suite.stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        suite.start()
    except EmbeddedRedisError as exc:
        _LOGGER.error(str(exc))
        return 1

    status = 0
    try:
        if suite.wait_until_ready():
            url = suite.gateway_url()
            _LOGGER.info("suite ready; Ctrl-C stops it", extra={"gateway": f"{url}/mparticle"})
        while not suite.stop_requested:
            failed = suite.failed()
            if failed:
                _LOGGER.error("a service exited; stopping the suite", extra={"svc": failed})
                status = 1
                break
            time.sleep(0.2)
    finally:
        suite.stop()
    _LOGGER.info("suite stopped")
    return status


if __name__ == "__main__":
    sys.exit(main())
