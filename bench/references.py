"""The physical limits of this machine, measured in the same run: raw Redis (redis-benchmark)
and a trivial unary gRPC call (a bare grpc.aio server's health check)."""

import csv
import io
import multiprocessing
import shlex
import subprocess
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import asyncio_runner

# 2M SADDs, 64 pipelined on each of 50 connections, keys and members drawn from 1M.
SADD_ARGUMENTS = (
    "-n 2000000 -r 1000000 -P 64 -c 50 -q --csv sadd bench:ref:__rand_int__ __rand_int__"
)


def redis_sadd_rate(redis_benchmark: str, port: int) -> float:
    """SADD per second with 64 pipelined commands on each of 50 connections, over 1M keys."""
    command = [redis_benchmark, "-p", str(port), *shlex.split(SADD_ARGUMENTS)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rows = list(csv.reader(io.StringIO(output)))
    return float(rows[1][1])


def start_trivial_server(port: int) -> BaseProcess:
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_trivial, args=(port,), daemon=True
    )
    process.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return process


def trivial_calls(channel: grpc.aio.Channel) -> Callable[[int], tuple[Any, Any]]:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest()
    return lambda n: (stub.Check, request)


def _serve_trivial(port: int) -> None:
    async def serve() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio_runner.run(serve())
