"""Failover on real local deployments: steady Settle load from retrying terminals, a master killed
(SIGKILL) and its replica taking over, then the audit. With replica acknowledgement (WAIT) nothing
acknowledged is lost; without it, what is lost is measured (the figures go to docs/SCALING.md). In every
mode nothing is settled twice, every Settle is answered in the end, and every balance and plan-year
agrees with the settlements."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.embedded_cluster import EmbeddedCluster, EmbeddedSentinel
from gateway.ops.durability import Durability
from loadtest.failover import cluster_campaign, sentinel_campaign

from .conftest import start_gateway

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("mode", ["replica", "aof"])
async def test_a_cluster_master_killed_under_load(fresh_cluster: EmbeddedCluster, mode: str) -> None:
    durability = Durability(mode) if mode == "replica" else Durability()
    report = await cluster_campaign(fresh_cluster, durability, seconds=4.0, kills=1, terminals=6,
                                    start_gateway=start_gateway)  # fmt: skip
    print(report.line())
    assert report.kills == 1 and report.takeover_s[0] < 15
    assert report.acknowledged > 50, report.line()
    assert report.unknown > 0, "the kill must land on requests in flight: " + report.line()
    assert report.doubled == 0 and report.unanswered == 0 and report.audit_differences == 0, report.line()
    if mode == "replica":
        assert report.lost == 0, report.line()


@pytest.mark.parametrize("mode", ["replica", "aof"])
async def test_a_sentinel_master_killed_under_load(tmp_path: Path, mode: str) -> None:
    durability = Durability(mode) if mode == "replica" else Durability()
    with EmbeddedSentinel(tmp_path) as deployment:
        report = await sentinel_campaign(deployment, durability, seconds=4.0, terminals=6,
                                         start_gateway=start_gateway)  # fmt: skip
    print(report.line())
    assert report.kills == 1 and report.takeover_s[0] < 20
    assert report.acknowledged > 50 and report.unknown > 0, report.line()
    assert report.doubled == 0 and report.unanswered == 0 and report.audit_differences == 0, report.line()
    if mode == "replica":
        assert report.lost == 0, report.line()
