"""The system under test for the load tools: a redis-server with AOF on in a temporary folder, the demo
city data and synthetic persons loaded, and `medsettle serve --workers N` on a free port, over mTLS with
the development PKI it creates in its data folder (stack.certs), or plaintext with insecure=True.

A load generator acts for a handful of institutions at rates no real one reaches, so the stack lifts the
per-institution edge limits (LOAD_LIMITS); the limits have their own tests (tests/security)."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapters.embedded_redis import EmbeddedRedis
from gateway.edge.tls import ClientTls, channel
from loadtest.synthetic import write_persons

CLI = [sys.executable, "-m", "gateway.cli"]
CITYDATA = Path(__file__).resolve().parent.parent / "citydata"
LOAD_LIMITS = [
    "requests_per_s_max=1000000", "requests_burst_max=1000000", "calls_in_flight_max=100000",
    "process_calls_in_flight_max=100000", "eligibility_per_card_per_min_max=1000000",
    "person_misses_per_min_max=1000000",
]  # fmt: skip


# one index key per run of a load tool: `load` and `serve` must hash card numbers alike
INDEX_KEY_HEX = secrets.token_hex(32)


def secret_env(redis_url: str) -> dict[str, str]:
    """What a load tool's `medsettle load` and `serve` get in their environment."""
    return {"MEDSETTLE_REDIS_URL": redis_url, "MEDSETTLE_INDEX_KEY": INDEX_KEY_HEX}


def limit_flags(limits: list[str] = LOAD_LIMITS) -> list[str]:
    return [f"--limit={item}" for item in limits]


@dataclass(frozen=True, slots=True)
class Stack:
    redis_url: str  # the admin user's: never printed
    port: int
    server: subprocess.Popen[str]  # the serve supervisor; the gateway processes are its children
    tmp: Path
    certs: Path | None  # None: plaintext

    def tls(self, institution: str) -> ClientTls | None:
        return None if self.certs is None else ClientTls.for_institution(self.certs, institution)

    def channel(self, institution: str) -> grpc.aio.Channel:
        """An asyncio channel presenting `institution`'s client certificate."""
        return channel(f"127.0.0.1:{self.port}", self.tls(institution))


@contextmanager
def running_stack(
    persons: int,
    workers: int,
    insecure: bool = False,
    limits: list[str] = LOAD_LIMITS,
    wrapper: list[str] | None = None,
    stop_signal: int = signal.SIGTERM,
    extra_args: list[str] | None = None,
) -> Iterator[Stack]:
    """`wrapper` runs serve under another command (a profiler: stop it with SIGINT so it writes its
    output). The Redis URL reaches serve in its environment: it holds the admin password."""
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d)) as redis_server:
        tmp = Path(d)
        env = {**os.environ, **secret_env(redis_server.url)}  # the password and the index key never in argv
        load = [*CLI, "load"]
        subprocess.run([*load, "--dir", str(CITYDATA)], check=True, capture_output=True, env=env)
        people = write_persons(tmp / "persons.json", persons)
        subprocess.run([*load, "--persons", str(people)], check=True, capture_output=True, env=env)
        server = subprocess.Popen(
            [*(wrapper or []), *CLI, "serve", "--listen", "127.0.0.1:0",
             "--workers", str(workers), "--metrics-port", "-1", "--log-level", "WARNING",
             "--data-dir", str(tmp / "serve"), *limit_flags(limits), *(["--insecure"] if insecure else []),
             *(extra_args or [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        try:
            port = ready_port(server)
            yield Stack(redis_server.url, port, server, tmp, None if insecure else tmp / "serve" / "certs")
        finally:
            server.send_signal(stop_signal)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def ready_port(server: subprocess.Popen[str]) -> int:
    """The port serve reports once its processes answer (port 0 was asked: serve picks a free one)."""
    assert server.stdout is not None
    port = None
    for line in server.stdout:
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        if match:
            port = int(match.group(1))
        if "serving" in line and port is not None:
            return port
    raise RuntimeError(f"medsettle serve did not start (exit status {server.wait()})")
