"""The README's run command: `medsettle serve` on its embedded defaults starts a private redis-server,
loads the demo data, serves, runs the demo, and stops cleanly on SIGTERM; its data survives a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "gateway.cli"]


def test_serve_runs_the_demo_on_embedded_defaults(tmp_path: Path) -> None:
    for run in (1, 2):  # the second run finds the first run's data (AOF) and still passes
        result = subprocess.run(
            [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--demo", "--exit-after-demo", "--metrics-port", "0", "--workers", "2"],  # noqa: E501
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "== demo passed" in result.stdout, run
        assert "[FAILED]" not in result.stdout
    audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    events = [a["event"] for a in audit]
    assert events.count("settle") == 4 and events.count("reverse") == 2  # two demo runs
    assert (tmp_path / "redis" / "appendonlydir").exists() or any((tmp_path / "redis").glob("*.aof"))
    # and what the two demos did is what the policy allows, in Redis, the accounts and the ledger
    audited = subprocess.run([*CLI, "audit", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "no differences" in audited.stdout and " 0 live settlements" not in audited.stdout
    # the statement finds the folder's ledger by itself, like audit, backup and close-month
    month = next(a["ts"][:7] for a in audit if a["event"] == "settle")
    shown = subprocess.run([*CLI, "statement", "institutions", "--month", month, "--data-dir", str(tmp_path)],
                           capture_output=True, text=True)  # fmt: skip
    assert shown.returncode == 0 and "H50010300001" in shown.stdout, shown.stdout + shown.stderr


def test_two_processes_serve_one_port_count_together_and_stop_together(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--metrics-port", "0",
         "--workers", "2", "--no-worker"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    found: dict[str, int] = {}
    for line in proc.stdout:
        for key, pattern in (("redis", r"redis://127.0.0.1:(\d+)"), ("grpc", r"listening on 127.0.0.1:(\d+)"),
                             ("metrics", r"metrics on http://127.0.0.1:(\d+)")):  # fmt: skip
            match = re.search(pattern, line)
            if match:
                found[key] = int(match.group(1))
        if "serving" in line:
            break
    demo = subprocess.run(
        [*CLI, "demo", "--target", f"127.0.0.1:{found['grpc']}", "--certs", str(tmp_path / "certs")],
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stdout[-2000:]
    # the folder's commands while its serve runs: they use its Redis, not a second server on its AOF
    audited = subprocess.run([*CLI, "audit", "--data-dir", str(tmp_path)], capture_output=True, text=True)
    assert audited.returncode == 0 and "no differences" in audited.stdout, audited.stdout + audited.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{found['metrics']}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    handled = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("grpc_server_handled_total{") and "medsettle.v1.SettlementService" in line
    )
    assert handled == 15, "the demo's 15 calls, counted across the gateway processes"
    counting = {p.removeprefix("counter_").removesuffix(".db") for p in os.listdir(tmp_path / "metrics")
                if p.startswith("counter_")}  # fmt: skip
    assert len(counting - {str(proc.pid)}) == 2, "two gateway processes besides the supervisor"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    for port in (found["grpc"], found["redis"]):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # every gateway process and the embedded redis-server are gone


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
