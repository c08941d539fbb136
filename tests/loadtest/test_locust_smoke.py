"""A short Locust run in CI: HIS terminals and pharmacy POS devices against a real gateway (two
processes, embedded redis-server, mTLS with the development PKI serve creates, each simulated terminal
presenting its institution's certificate; the per-institution limits lifted as for every load tool): no
failure, CSV written; and a p99 limit the run cannot meet fails it."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.stack import limit_flags

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway.cli"]
PERSONS = 400


@pytest.fixture(scope="module")
def gateway_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    data = tmp_path_factory.mktemp("locust")
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data), "--metrics-port", "-1",
         "--workers", "2", "--no-worker", "--log-level", "WARNING", *limit_flags()],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:  # the server goes whatever fails below: a leaked one would load the machine for the rest
        assert proc.stdout is not None
        found = {}
        for line in proc.stdout:
            for key, pattern in (
                ("redis", r"(redis://127.0.0.1:\d+/0)"),
                ("port", r"listening on 127.0.0.1:(\d+)"),
            ):
                match = re.search(pattern, line)
                if match:
                    found[key] = match.group(1)
            if "serving" in line:
                break
        persons = data / "persons.json"
        persons.write_text(subprocess.run([sys.executable, "-m", "loadtest.locust_data", str(PERSONS)],
                                          capture_output=True, text=True, check=True).stdout)  # fmt: skip
        # the embedded folder's Redis URL and index key (card numbers are keyed hashes)
        loaded = subprocess.run([*CLI, "load", "--redis-file", str(data / "secrets" / "redis-admin.url"),
                                 "--persons", str(persons), "--data-dir", str(data)],
                                capture_output=True, text=True)  # fmt: skip
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        yield int(found["port"]), data / "certs"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def locust(port_certs: tuple[int, Path], out: Path, p99_max_ms: float) -> subprocess.CompletedProcess[str]:
    port, certs = port_certs
    return subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
         "-u", "8", "-r", "8", "-t", "6s", "--host", f"127.0.0.1:{port}", "--csv", str(out),
         "--p99-max-ms", str(p99_max_ms), "--persons", str(PERSONS), "--only-summary", "--certs", str(certs)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_terminal_mix_runs_without_failure(gateway_port: tuple[int, Path], tmp_path: Path) -> None:
    result = locust(gateway_port, tmp_path / "smoke", p99_max_ms=2000)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (tmp_path / "smoke_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ("QueryEligibility", "PreSettle outpatient", "Settle outpatient", "Settle pharmacy"):
        assert int(rows[name]["Request Count"]) > 0, name
    assert int(rows["Aggregated"]["Failure Count"]) == 0


def test_a_p99_over_the_limit_fails_the_run(gateway_port: tuple[int, Path], tmp_path: Path) -> None:
    result = locust(gateway_port, tmp_path / "strict", p99_max_ms=0.001)
    assert result.returncode == 1
    assert "over 0.001 ms" in result.stdout + result.stderr
