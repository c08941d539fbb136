"""The short CI version of loadtest/bench_cluster.py: the same measurement on a single node and a real
local cluster in one run, every figure printed and plausible (it is a benchmark, not a timed test)."""

from __future__ import annotations

from loadtest.bench_cluster import run


def test_single_node_and_cluster_measured_in_one_run() -> None:
    single, cluster = run(count=100, seconds=1.0, concurrency=8)
    for fig in (single, cluster):
        print(fig.line())
        assert fig.gateway_cpu_ms > 0 and fig.redis_cpu_ms > 0 and fig.posting_cpu_ms > 0
        assert fig.commands >= 2, "a Settle is at least the read and the commit"
        assert fig.throughput > 0 and fig.p99_ms >= fig.p50_ms > 0
