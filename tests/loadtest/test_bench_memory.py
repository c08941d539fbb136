"""The memory benchmark's short version: four simulated years at a low rate on a real redis-server, real
ledger and the real retention sweep; Redis memory must come out flat (loadtest/bench_memory.py)."""

from __future__ import annotations

import pytest

from loadtest import bench_memory


def test_redis_memory_stays_flat_over_four_plan_years(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_memory.main(["--years", "4", "--per-day", "1", "--every-days", "21"]) == 0
    out = capsys.readouterr().out
    assert "FLAT" in out and "NOT FLAT" not in out
    assert "bytes per live settlement at the end" in out


def test_retention_by_days_keeps_redis_flat_and_smaller(capsys: pytest.CaptureFixture[str]) -> None:
    # 90 days against two plan-years, one after the other: flat both, and the days' peak well below
    assert (
        bench_memory.main(["--years", "4", "--per-day", "1", "--every-days", "21", "--compare-days", "90"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("FLAT: later peaks") == 2 and "NOT FLAT" not in out
    ratio = float(out.split("90 days")[-1].split("(")[1].split("x)")[0])
    assert ratio < 0.5, out
