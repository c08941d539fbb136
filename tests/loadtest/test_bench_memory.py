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
