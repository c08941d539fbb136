"""The system under test for the load tools: a redis-server with AOF on in a temporary folder, the demo
city data and synthetic persons loaded, and `medsettle serve --workers N` on a free port."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adapters.embedded_redis import EmbeddedRedis, free_port
from loadtest.synthetic import write_persons

CLI = [sys.executable, "-m", "gateway.cli"]
CITYDATA = Path(__file__).resolve().parent.parent / "citydata"


@dataclass(frozen=True, slots=True)
class Stack:
    redis_url: str
    port: int
    server: subprocess.Popen[str]  # the serve supervisor; the gateway processes are its children
    tmp: Path


@contextmanager
def running_stack(persons: int, workers: int) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d)) as redis_server:
        tmp = Path(d)
        load = [*CLI, "load", "--redis", redis_server.url]
        subprocess.run([*load, "--dir", str(CITYDATA)], check=True, capture_output=True)
        people = write_persons(tmp / "persons.json", persons)
        subprocess.run([*load, "--persons", str(people)], check=True, capture_output=True)
        port = free_port()
        server = subprocess.Popen(
            [*CLI, "serve", "--redis", redis_server.url, "--listen", f"127.0.0.1:{port}",
             "--workers", str(workers), "--metrics-port", "-1", "--log-level", "WARNING",
             "--data-dir", str(tmp / "serve")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        for line in server.stdout:
            if "serving" in line:
                break
        try:
            yield Stack(redis_server.url, port, server, tmp)
        finally:
            server.terminate()
            server.wait(timeout=60)
