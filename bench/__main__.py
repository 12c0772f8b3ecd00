"""make bench: the suite against the physical limits of this machine, in one run.

Starts a Redis (no persistence, like the reference) and the suite as processes, measures the
references (redis-benchmark SADD; a trivial grpc.aio call), then ingestion through the
gateway, lookups over gRPC, memory, how cost grows with audience size, and the removal of a
large audience under load. Prints two tables, the measurements and each target beside its
measured value, and writes them as JSON under bench/results/.
"""

import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis

from bench import calls, grpc_load, references
from bench.bodies import AUDIENCE_POOL, membership_body, verification_body
from bench.calls import ACCOUNT
from bench.tools import find_or_install
from protos.audience.v1 import audience_pb2, audience_pb2_grpc
from services.common.embedded_redis import EmbeddedRedis, find_redis_server, free_port
from tests.processes import ProcessSuite

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
# A core of its own for every Redis the bench starts, as a Redis pod with its own CPU would
# have; everything else then shares the other cores. Unset: all processes share all cores.
REDIS_CPU = int(os.environ["BENCH_REDIS_CPU"]) if os.environ.get("BENCH_REDIS_CPU") else None
LOOKUP_AUDIENCES = list(range(1, 11))
LOOKUP_USERS = 100_000
GROWTH_SIZES = {1_000: 1001, 100_000: 1002, 1_000_000: 1003}
CLOCK = 1_767_268_800_000
SLOWLOG_ENTRIES = 100_000


@dataclass
class Report:
    machine: dict[str, Any]
    tools: dict[str, str]
    measured: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def target(self, name: str, value: float, goal: str, met: bool, unit: str = "") -> None:
        # Rounded toward the verdict, so that a value just short of its goal never prints
        # as the goal itself (0.5999 as 0.6 beside "falls short").
        toward = math.floor if goal.startswith(">") != met else math.ceil
        shown = toward(value * 1000) / 1000
        self.targets.append(
            {"target": name, "goal": goal, "measured": shown, "unit": unit, "met": met}
        )


def main() -> int:
    tools = {
        "wrk": find_or_install("wrk", "wrk"),
        "redis-benchmark": find_or_install("redis-benchmark", "redis-tools"),
    }
    report = Report(machine=_machine(), tools=tools)
    cpu_before = _cpu_times()
    if REDIS_CPU is not None:
        # Before anything starts, so that every process the bench starts inherits the rest.
        os.sched_setaffinity(0, os.sched_getaffinity(0) - {REDIS_CPU})
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    # The settings of a deployment (deploy/k8s/config.yaml), where the test suite's differ.
    suite = ProcessSuite(
        work,
        persistent=False,
        LOG_LEVEL="INFO",
        GATEWAY_KEY_CACHE_SECONDS="2",
        READINESS_INTERVAL_SECONDS="1",
    )
    suite.start()
    assert suite.redis.process is not None
    _give_redis_its_core(suite.redis.process.pid)
    try:
        api_key = suite.create_api_key(ACCOUNT)
        _run(report, suite, api_key, work, tools)
    finally:
        suite.stop()
        shutil.rmtree(work, ignore_errors=True)

    report.machine["cpu_stolen_percent"] = _stolen_percent(cpu_before, _cpu_times())
    _print(report)
    _save(report)
    return 0


def _run(report: Report, suite: ProcessSuite, api_key: str, work: Path, tools: dict) -> None:
    client = redis.Redis.from_url(suite.redis.url)
    audience = suite.stub("audience", audience_pb2_grpc.AudienceServiceStub)
    rng = random.Random(20261203)

    # raw Redis: redis-benchmark against a server of the same binary and settings as the
    # suite's, measured again just before each ingestion run (the machine's pace drifts).
    reference_redis = EmbeddedRedis().start()
    assert reference_redis.process is not None
    _give_redis_its_core(reference_redis.process.pid)

    def sadd_reference() -> float:
        _step("references: redis-benchmark SADD")
        rate = references.redis_sadd_rate(tools["redis-benchmark"], reference_redis.port)
        redis.Redis.from_url(reference_redis.url).flushall()
        return rate

    report.measured["redis_sadd_per_second"] = sadd_reference()

    _step("references: trivial gRPC call")
    trivial_port = free_port()
    trivial = references.start_trivial_server(trivial_port)
    trivial_target = f"127.0.0.1:{trivial_port}"
    trivial_max = grpc_load.saturate(trivial_target, references.trivial_calls, SECONDS / 2)
    report.measured["grpc_trivial_max_per_second"] = trivial_max.rate

    _step("ingestion through the gateway")
    for profiles in (1000, 100, 1):
        sadd = report.measured["redis_sadd_per_second"] if profiles == 1000 else sadd_reference()
        result = _ingest(suite, api_key, work, rng, profiles, tools["wrk"], cpu=profiles == 1000)
        result["redis_sadd_per_second_just_before"] = sadd
        report.measured[f"ingest_{profiles}"] = result
    reference_redis.stop()
    verification = _wrk(suite, work, [verification_body(api_key)], 1, SECONDS / 2, tools["wrk"])
    report.measured["verification"] = verification

    _step("memory: 1M memberships (10 audiences x 100k users)")
    # From an empty database, so that the keyspace's own growth is that of these keys only
    # (a resize of a table sized by what ingestion left behind would dwarf them).
    client.flushall()
    api_key = suite.create_api_key(ACCOUNT)
    before = client.info("memory")["used_memory"]
    users = _load_lookup_data(audience, rng)
    memory = (client.info("memory")["used_memory"] - before) / (len(users) * 10)
    report.measured["bytes_per_membership"] = memory
    report.measured["ordering"] = _ordering_memory(client, audience, rng, users)

    _step("lookups over gRPC")
    target = f"127.0.0.1:{suite.ports['audience']}"
    lookups = {
        "user_audiences": partial(calls.user_audiences, users),
        "check_membership": partial(calls.check_membership, LOOKUP_AUDIENCES[0], users),
    }
    for name, factory in lookups.items():
        # The reference again, just before: the machine's state drifts over a run.
        trivial_top = grpc_load.saturate(trivial_target, references.trivial_calls, SECONDS / 2)
        top = grpc_load.saturate(target, factory, SECONDS / 2)
        half = grpc_load.at_rate(target, factory, SECONDS / 2, top.rate / 2)
        trivial_half = grpc_load.at_rate(
            trivial_target, references.trivial_calls, SECONDS / 2, top.rate / 2
        )
        report.measured[f"lookup_{name}"] = {
            "max_per_second": top.rate,
            "trivial_max_per_second": trivial_top.rate,
            "half_rate": top.rate / 2,
            "p50_us": half.percentile(50),
            "p99_us": half.percentile(99),
            "trivial_p99_us_at_same_rate": trivial_half.percentile(99),
            "errors": top.errors + half.errors,
        }
    trivial.terminate()

    _step("growth: audiences of 1k, 100k and 1M members")
    growth = {}
    for size, audience_id in GROWTH_SIZES.items():
        # Each size alone in the database, so that only the audience's size differs.
        client.flushall()
        api_key = suite.create_api_key(ACCOUNT)
        members = _load_audience(audience, rng, audience_id, size)
        factory = partial(calls.check_membership, audience_id, members[:100_000])
        lookup = grpc_load.at_rate(target, factory, SECONDS / 3, 500)
        ingest = _ingest(
            suite, api_key, work, rng, 1000, tools["wrk"], audiences=[(audience_id, "Growth")]
        )
        growth[size] = {
            "lookup_p99_us": lookup.percentile(99),
            "ingest_memberships_per_second": ingest["memberships_per_second"],
            "clean": lookup.errors == 0 and _clean(ingest),
        }
    report.measured["growth"] = growth

    _step("removing the 1M-member audience while ingestion runs")
    report.measured["removal"] = _remove_under_load(suite, client, api_key, work, rng, tools["wrk"])
    _judge(report)


def _ingest(
    suite: ProcessSuite,
    api_key: str,
    work: Path,
    rng: random.Random,
    profiles: int,
    wrk: str,
    *,
    audiences: list[tuple[int, str]] = AUDIENCE_POOL,
    cpu: bool = False,
) -> dict[str, Any]:
    """wrk with 8 connections posting fresh membership changes of ``profiles`` profiles."""
    count = max(50, min(20_000, int(600_000 / profiles)))
    per_profile = (1, 1) if len(audiences) == 1 else (1, 3)
    bodies = [
        membership_body(
            rng,
            api_key,
            profiles,
            timestamp_ms=CLOCK + int(time.time() * 1000) + i,
            audiences=audiences,
            audiences_per_profile=per_profile,
            boundary_mpids=False,
        )
        for i in range(count)
    ]
    changes = sum(b.changes for b in bodies) / len(bodies)

    usage = _cpu_seconds(suite) if cpu else {}
    result = _wrk(suite, work, [b.content for b in bodies], 8, SECONDS, wrk)
    # Only answers that stored their changes count; an error fails the targets (_judge).
    answered = result["requests"] - result["non_2xx"]
    result["memberships_per_second"] = answered / (result["duration_us"] / 1e6) * changes
    result["changes_per_request"] = changes
    if cpu:
        spent = {k: v - usage[k] for k, v in _cpu_seconds(suite).items()}
        memberships = result["requests"] * changes
        result["cpu_us_per_membership"] = {k: v * 1e6 / memberships for k, v in spent.items()}
    return result


def _wrk(
    suite: ProcessSuite, work: Path, bodies: list[bytes], connections: int, seconds: float, wrk: str
) -> dict[str, Any]:
    path = work / "bodies.txt"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    threads = min(2, connections)
    env = dict(
        os.environ, BENCH_BODIES=str(path), BENCH_THREADS=str(threads), BENCH_AUTHORIZATION=""
    )
    output = subprocess.run(
        [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(REPO / "bench" / "post_bodies.lua"),
            suite.gateway_url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(row for row in output.splitlines() if row.startswith("BENCH "))
    result = json.loads(line.removeprefix("BENCH "))
    result["requests_per_second"] = result["requests"] / (result["duration_us"] / 1e6)
    result["connections"] = connections
    return result


def _cpu_seconds(suite: ProcessSuite) -> dict[str, float]:
    pids = {name: process.pid for name, process in suite.processes.items()}
    assert suite.redis.process is not None
    pids["redis"] = suite.redis.process.pid
    ticks = os.sysconf("SC_CLK_TCK")
    usage = {}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        usage[name] = (int(fields[11]) + int(fields[12])) / ticks
    return usage


def _apply(audience: Any, changes: list[audience_pb2.AudienceChanges]) -> None:
    audience.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id=ACCOUNT, connector_id="con_bench", audiences=changes, timestamp_ms=CLOCK
        ),
        timeout=120,
    )


def _load_lookup_data(audience: Any, rng: random.Random) -> list[int]:
    users = [rng.randint(-(2**63), 2**63 - 1) for _ in range(LOOKUP_USERS)]
    for start in range(0, len(users), 10_000):
        chunk = users[start : start + 10_000]
        _apply(
            audience,
            [
                audience_pb2.AudienceChanges(audience_id=a, audience_name=f"A{a}", add_mpids=chunk)
                for a in LOOKUP_AUDIENCES
            ],
        )
    return users


def _ordering_memory(
    client: redis.Redis, audience: Any, rng: random.Random, users: list[int]
) -> dict[str, float]:
    """What ordering costs: the add's source time kept beside each membership (a user's hash
    against the same hash without times), and a tombstone per removal (removals of MPIDs that
    were never members, which store nothing else)."""
    tag = "{" + ACCOUNT + "}"
    sample = users[:200]
    with_times = without_times = 0

    def usage(key: str) -> int:
        used = client.memory_usage(key, samples=0)
        assert used is not None, key
        return int(used)

    for mpid in sample:
        key = f"au:usr:{tag}:{mpid}"
        fields = client.hkeys(key)
        client.hset("bench:bare", mapping=dict.fromkeys(fields, ""))
        with_times += usage(key)
        without_times += usage("bench:bare")
        client.delete("bench:bare")
    stamp = (with_times - without_times) / (len(sample) * len(LOOKUP_AUDIENCES))

    strangers = [rng.randint(-(2**63), 2**63 - 1) for _ in range(100_000)]
    before = client.info("memory")["used_memory"]
    audience.ApplyMembershipChanges(
        audience_pb2.ApplyMembershipChangesRequest(
            account_id=ACCOUNT,
            connector_id="con_bench",
            audiences=[
                audience_pb2.AudienceChanges(
                    audience_id=LOOKUP_AUDIENCES[0], delete_mpids=strangers
                )
            ],
            timestamp_ms=CLOCK + 1,
        ),
        timeout=120,
    )
    tombstone = (client.info("memory")["used_memory"] - before) / len(strangers)
    return {"stamp_bytes_per_membership": stamp, "bytes_per_tombstone": tombstone}


def _load_audience(audience: Any, rng: random.Random, audience_id: int, size: int) -> list[int]:
    members = [rng.randint(-(2**63), 2**63 - 1) for _ in range(size)]
    for start in range(0, size, 100_000):
        chunk = members[start : start + 100_000]
        _apply(
            audience,
            [
                audience_pb2.AudienceChanges(
                    audience_id=audience_id, audience_name=f"G{size}", add_mpids=chunk
                )
            ],
        )
    return members


def _remove_under_load(
    suite: ProcessSuite, client: redis.Redis, api_key: str, work: Path, rng: random.Random, wrk: str
) -> dict[str, Any]:
    # Both record from 1 ms, so that the slowest command shows even when it is within 10 ms;
    # the slow log keeps the run's entries (by default only the latest 128), up to a few
    # hundred MB of them (at most 32 arguments of 128 bytes an entry).
    client.config_set("slowlog-log-slower-than", 1_000)
    client.config_set("slowlog-max-len", SLOWLOG_ENTRIES)
    client.config_set("latency-monitor-threshold", 1)
    client.slowlog_reset()
    client.execute_command("LATENCY", "RESET")

    removal = {
        "type": "audience_subscription_request",
        "id": "8f0c2b8e-0f5e-4c1a-9d7b-1f2e3d4c5b6a",
        "timestamp_ms": CLOCK + int(time.time() * 1000),
        "firehose_version": "3.2.0",
        "account": {"account_id": 1, "account_settings": {"apiKey": api_key}},
        "audience_id": GROWTH_SIZES[1_000_000],
        "audience_name": "Growth",
        "action": "remove",
    }

    def remove_soon() -> None:
        time.sleep(1)
        httpx.post(f"{suite.gateway_url}/mparticle", json=removal, timeout=10)

    remover = threading.Thread(target=remove_soon)
    remover.start()
    started = time.monotonic()
    ingest = _ingest(suite, api_key, work, rng, 1000, wrk)
    remover.join()
    tag = "{" + ACCOUNT + "}"
    while client.llen(f"au:gc:{tag}") and time.monotonic() - started < 300:
        time.sleep(0.2)

    # LATENCY first: reading thousands of slow log entries is itself a command of several
    # milliseconds, which the latency monitor would record as the run's slowest.
    latest = client.execute_command("LATENCY", "LATEST")
    slow = client.slowlog_get(-1)
    return {
        "ingest_memberships_per_second": ingest["memberships_per_second"],
        "ingest_clean": _clean(ingest),
        "cleanup_seconds": time.monotonic() - started,
        "cleanup_finished": client.llen(f"au:gc:{tag}") == 0,
        "slowest_command_us": max((entry["duration"] for entry in slow), default=0),
        "commands_over_1ms": len(slow),
        "slowlog_full": len(slow) >= SLOWLOG_ENTRIES,
        "slowest_commands": [
            {"us": e["duration"], "command": e["command"][:80].decode(errors="replace")}
            for e in sorted(slow, key=lambda e: e["duration"], reverse=True)[:5]
        ],
        # LATENCY LATEST rows: event, time of the latest, its latency, the highest (ms).
        "latency_events_max_ms": {row[0].decode(): row[3] for row in latest},
    }


def _clean(run: dict[str, Any]) -> bool:
    """Whether a wrk run got a 2xx for every request, with no socket error or timeout."""
    return run["non_2xx"] == run["socket_errors"] == run["timeouts"] == 0


def _judge(report: Report) -> None:
    m = report.measured
    for profiles, goal in ((1000, 0.35), (100, 0.18)):
        ingest = m[f"ingest_{profiles}"]
        ratio = ingest["memberships_per_second"] / ingest["redis_sadd_per_second_just_before"]
        report.target(
            f"ingestion, {profiles} profiles/request, x redis SADD",
            ratio,
            f">= {goal}",
            ratio >= goal and _clean(ingest),
            "x",
        )
    p99 = m["ingest_1000"]["p99_us"] / 1000
    report.target(
        "1,000-profile request p99 at 8 concurrent",
        p99,
        "< 100 ms",
        p99 < 100 and _clean(m["ingest_1000"]),
        "ms",
    )
    p99 = m["verification"]["p99_us"] / 1000
    report.target(
        "verification request p99", p99, "< 10 ms", p99 < 10 and _clean(m["verification"]), "ms"
    )
    for name in ("user_audiences", "check_membership"):
        lookup = m[f"lookup_{name}"]
        clean = lookup["errors"] == 0
        ratio = lookup["max_per_second"] / lookup["trivial_max_per_second"]
        report.target(
            f"lookup {name} max rate, x trivial gRPC", ratio, ">= 0.6", ratio >= 0.6 and clean, "x"
        )
        ratio = lookup["p99_us"] / lookup["trivial_p99_us_at_same_rate"]
        report.target(
            f"lookup {name} p99 at half load, x trivial p99",
            ratio,
            "<= 1.5",
            ratio <= 1.5 and clean,
            "x",
        )
    memory = m["bytes_per_membership"]
    report.target("Redis memory per membership", memory, "<= 64 B", memory <= 64, "B")
    growth = m["growth"]
    small, large = growth[1_000], growth[1_000_000]
    clean = small["clean"] and large["clean"]
    ratio = large["ingest_memberships_per_second"] / small["ingest_memberships_per_second"]
    report.target(
        "ingestion rate, 1M-member vs 1k-member audience",
        ratio,
        ">= 0.75 (flat)",
        ratio >= 0.75 and clean,
        "x",
    )
    ratio = large["lookup_p99_us"] / small["lookup_p99_us"]
    report.target(
        "lookup p99, 1M-member vs 1k-member audience",
        ratio,
        "<= 1.5 (flat)",
        ratio <= 1.5 and clean,
        "x",
    )
    removal = m["removal"]
    slowest = max(
        removal["slowest_command_us"] / 1000, *removal["latency_events_max_ms"].values(), 0
    )
    report.target(
        "slowest Redis command while removing 1M members under load",
        slowest,
        "<= 10 ms",
        slowest <= 10 and removal["cleanup_finished"] and removal["ingest_clean"],
        "ms",
    )


def _give_redis_its_core(pid: int) -> None:
    if REDIS_CPU is None:
        return
    for thread in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(thread.name), {REDIS_CPU})


def _machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    version = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "redis": version.split(" ")[2].removeprefix("v=") if version else "",
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds_per_measurement": SECONDS,
        "redis_cpu": REDIS_CPU,
    }


def _cpu_times() -> list[int]:
    """The machine's CPU time so far, by kind (the "cpu" line of /proc/stat, in ticks)."""
    return [int(ticks) for ticks in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def _stolen_percent(before: list[int], after: list[int]) -> float:
    """The share of CPU time a hypervisor gave to other guests ("steal", the 8th field):
    on a shared machine, what makes two runs differ."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    # guest and guest_nice (fields 9 and 10) are counted in user and nice already.
    return 100 * spent[7] / max(sum(spent[:8]), 1)


def _step(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _print(report: Report) -> None:
    m = report.measured
    machine = report.machine
    print(
        f"\nMachine: {machine['cores']} cores, {machine['cpu']}, "
        f"{machine['cpu_stolen_percent']:.0f} % of CPU time stolen by the hypervisor; "
        f"Python {machine['python']}, Redis {machine['redis']}; started {machine['when']}; "
        f"{machine['seconds_per_measurement']:g} s an ingestion run; "
        f"{_layout(machine)}; "
        f"tools: {report.tools}"
    )
    print(
        f"References: redis-benchmark SADD {m['redis_sadd_per_second']:,.0f}/s; "
        f"trivial gRPC call {m['grpc_trivial_max_per_second']:,.0f}/s\n"
    )
    print(_table(report))


def _layout(machine: dict[str, Any]) -> str:
    if machine.get("redis_cpu") is None:
        return "all processes share all cores"
    return f"Redis alone on CPU {machine['redis_cpu']}, everything else on the others"


def _table(report: Report) -> str:
    m = report.measured
    lines = ["| measurement | value |", "|---|---|"]
    for profiles in (1000, 100, 1):
        r = m[f"ingest_{profiles}"]
        unit = "profile" if profiles == 1 else "profiles"
        lines.append(
            f"| ingestion, {profiles} {unit}/request (8 conn.) | "
            f"{r['memberships_per_second']:,.0f} memberships/s (SADD just before: "
            f"{r['redis_sadd_per_second_just_before']:,.0f}/s), "
            f"{r['requests_per_second']:,.0f} req/s, p50 {r['p50_us'] / 1000:.1f} ms, "
            f"p99 {r['p99_us'] / 1000:.1f} ms |"
        )
    v = m["verification"]
    lines.append(
        f"| verification request (1 conn.) | p50 {v['p50_us'] / 1000:.2f} ms, "
        f"p99 {v['p99_us'] / 1000:.2f} ms |"
    )
    for name in ("user_audiences", "check_membership"):
        r = m[f"lookup_{name}"]
        lines.append(
            f"| lookup {name} | max {r['max_per_second']:,.0f}/s (trivial call just "
            f"before: {r['trivial_max_per_second']:,.0f}/s); at "
            f"{r['half_rate']:,.0f}/s p50 {r['p50_us'] / 1000:.2f} ms, p99 "
            f"{r['p99_us'] / 1000:.2f} ms (trivial call: "
            f"{r['trivial_p99_us_at_same_rate'] / 1000:.2f} ms) |"
        )
    lines.append(
        f"| Redis memory per membership (1M, both directions) | "
        f"{m['bytes_per_membership']:.1f} B, of which the add's source time "
        f"{m['ordering']['stamp_bytes_per_membership']:.1f} B |"
    )
    lines.append(
        f"| Redis memory per tombstone (a removal, kept one to two ordering windows) | "
        f"{m['ordering']['bytes_per_tombstone']:.1f} B |"
    )
    for size, g in m["growth"].items():
        lines.append(
            f"| audience of {size:,} members | ingestion "
            f"{g['ingest_memberships_per_second']:,.0f} memberships/s; lookup p99 "
            f"{g['lookup_p99_us'] / 1000:.2f} ms |"
        )
    r = m["removal"]
    slowest = (
        f"{r['slowest_command_us'] / 1000:.2f} ms" if r["slowest_command_us"] else "under 1 ms"
    )
    latency = ", ".join(f"{k} {v} ms" for k, v in r["latency_events_max_ms"].items()) or "none"
    lines.append(
        f"| removing 1M members under load | slowest command (SLOWLOG) {slowest}, "
        f"{r['commands_over_1ms']:,}{'+' if r['slowlog_full'] else ''} over 1 ms; "
        f"LATENCY events from 1 ms: {latency}; "
        f"cleanup {r['cleanup_seconds']:.1f} s; "
        f"ingestion meanwhile {r['ingest_memberships_per_second']:,.0f}/s |"
    )
    cpu = m["ingest_1000"]["cpu_us_per_membership"]
    lines.append(
        "| CPU per membership (1,000 profiles/request) | "
        + ", ".join(f"{k} {v:.1f} µs" for k, v in cpu.items())
        + " |"
    )
    lines += ["", "| target | goal | measured | |", "|---|---|---|---|"]
    for t in report.targets:
        verdict = "pass" if t["met"] else "falls short"
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']}{t['unit']} | {verdict} |")
    return "\n".join(lines)


def _save(report: Report) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": report.machine,
        "tools": report.tools,
        "measured": report.measured,
        "targets": report.targets,
        "table": _table(report),
    }
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(document, indent=2, default=str)
    (RESULTS / f"{stamp}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print(f"\nwritten to {RESULTS / f'{stamp}.json'}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
