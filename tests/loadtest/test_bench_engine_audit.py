"""The engine benchmark's short run in CI: 10-, 60- and 100-line bills split with and without the audit
rule set, beside the baseline, every bill settled with its flags (the benchmark asserts no speed)."""

from __future__ import annotations

import subprocess
import sys


def test_the_engine_benchmark_runs_with_audit_rules_on() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_engine_audit", "--seconds", "0.1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "audit rules: 385 over" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if "-line inpatient" in line]
    assert [row[0] for row in rows] == ["10-line", "60-line", "100-line"]
    for row in rows:
        assert len(row) == 11, (
            row
        )  # bill (2 words), median, p99, per line, baseline, ratio, audit median, p99, flags, ratio
        assert int(row[9]) > 0, "the audit rules flag lines of every bill"
