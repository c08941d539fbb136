"""The hostile run of loadtest/hostile.py, for about ten seconds: undecodable and mutated bodies on every
RPC, floods, wrong-institution certificates, slow bodies and garbage handshakes get no UNKNOWN or
INTERNAL answer, and nothing is written to Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_hostile_run_gets_only_domain_answers_and_writes_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.hostile", "--seconds", "10", "--concurrency", "5"],
        capture_output=True, text=True, timeout=180, cwd=ROOT, check=False,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "UNKNOWN/INTERNAL answers: 0" in out
    assert "digest of every key and value unchanged" in out
    for code in ("INVALID_ARGUMENT", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"):
        assert code in out, code  # each kind of attack met its refusal
