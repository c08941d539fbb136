"""The README's run command: `medsettle serve` on its embedded defaults starts a private redis-server,
loads the demo data, serves, runs the demo, and stops cleanly on SIGTERM; its data survives a restart."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "gateway.cli"]


def test_serve_runs_the_demo_on_embedded_defaults(tmp_path: Path) -> None:
    for run in (1, 2):  # the second run finds the first run's data (AOF) and still passes
        result = subprocess.run(
            [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--demo", "--exit-after-demo", "--metrics-port", "0"],  # noqa: E501
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "== demo passed" in result.stdout, run
        assert "[FAILED]" not in result.stdout
    assert (tmp_path / "redis" / "appendonlydir").exists() or any((tmp_path / "redis").glob("*.aof"))


def test_sigterm_stops_gateway_and_its_redis(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    redis_port = None
    for line in proc.stdout:
        match = re.search(r"redis://127.0.0.1:(\d+)", line)
        if match:
            redis_port = int(match.group(1))
        if "serving" in line:
            break
    assert redis_port is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", redis_port), timeout=1):
        pass  # the embedded redis-server is gone too


def test_load_refuses_a_bad_file_and_writes_nothing(tmp_path: Path) -> None:
    from adapters.embedded_redis import EmbeddedRedis

    persons = json.loads((Path(__file__).resolve().parents[1] / "citydata" / "persons.json").read_text())
    persons[3]["enrolments"][0]["scheme"] = "military"
    bad = tmp_path / "persons.json"
    bad.write_text(json.dumps(persons, ensure_ascii=False))
    with EmbeddedRedis(tmp_path) as server:
        result = subprocess.run(
            [*CLI, "load", "--redis", server.url, "--persons", str(bad)],
            capture_output=True,
            text=True,
            check=False,
        )
        import redis

        assert redis.Redis.from_url(server.url).dbsize() == 0
    assert result.returncode == 2
    assert (
        "persons.json: [3].enrolments[0].scheme: 'military' is not one of: employee, resident"
        in result.stderr
    )
