"""Metrics stay correct when several gateway processes serve one port: with PROMETHEUS_MULTIPROC_DIR
set, each process writes its own files and a scrape from any of them adds counters up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COUNT = """
from telemetry import metrics
metrics.SETTLEMENTS.labels("500000", "500103", "employee", "outpatient").inc({n})
metrics.FUND_FEN.labels("500000", "310100").inc({fen})
metrics.FUND_SPEND_MONTH.labels("500000", "500103", "310100").set({lag})
"""
SCRAPE = """
from prometheus_client import generate_latest
from telemetry import metrics
print(generate_latest(metrics.registry()).decode())
"""


def run(code: str, directory: Path) -> str:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout


def test_counters_add_up_across_processes(tmp_path: Path) -> None:
    run(COUNT.format(n=3, fen=15_000, lag=2.5), tmp_path)
    run(COUNT.format(n=4, fen=20_000, lag=7.0), tmp_path)
    text = run(SCRAPE, tmp_path)
    labels = 'district="500103",region="500000",scheme="employee",visit_type="outpatient"'
    assert f"medsettle_settlements_total{{{labels}}} 7.0" in text
    assert 'medsettle_fund_paid_fen_total{fund_code="310100",region="500000"} 35000.0' in text
    # gauges: the worst process, not a sum
    assert 'medsettle_fund_spend_month_fen{district="500103",fund_code="310100",region="500000"} 7.0' in text


def test_gateway_processes_export_no_worker_health(tmp_path: Path) -> None:
    """A gateway process imports every metric definition; it must not export the worker's health (at 0)
    nor backlog gauges (at 0), or the worker-down alert fires while the worker is fine, and a dead worker's
    backlog reads 0."""
    run(COUNT.format(n=1, fen=1, lag=1), tmp_path)
    text = run(SCRAPE, tmp_path)
    assert "medsettle_worker_healthy" not in text
    assert "medsettle_posting_lag_seconds" not in text and "medsettle_stream_entries" not in text
