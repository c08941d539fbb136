"""The national front end benchmark's short version: a few 2207s over HTTP beside Settles over gRPC on a
real `medsettle serve` with the national port on (loadtest/bench_nhsa.py); figures printed, every HTTP
call answered infcode 0."""

from __future__ import annotations

import pytest

from loadtest import bench_nhsa


def test_2207_over_http_beside_settle_over_grpc(capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_nhsa.main(["--calls", "30", "--warmup", "5", "--persons", "40", "--concurrency", "4"])
    out = capsys.readouterr().out
    assert "2207 over HTTP (national envelope)" in out and "server CPU/call" in out
    assert "2207 over HTTP / Settle over gRPC" in out and "HTTP failure" not in out
    assert status == 0, out
