"""Failover on real local deployments: steady Settle load from retrying terminals, a master killed
(SIGKILL) and its replica taking over, then the audit. The replica that takes over is first paused for
LAG_S (SIGSTOP: a replica behind its master), the case that decides: with replica acknowledgement (WAIT)
nothing acknowledged is lost, because nothing was acknowledged that the replica did not have; without it
(aof), what the master acknowledged during the lag is lost with it, and the test measures it (the figures
go to docs/SCALING.md). In every mode nothing is settled twice, every Settle is answered in the end, and
every balance and plan-year agrees with the settlements."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.embedded_cluster import EmbeddedCluster, EmbeddedSentinel
from gateway.ops.durability import Durability
from loadtest.failover import Report, cluster_campaign, sentinel_campaign

from .conftest import start_gateway

pytestmark = pytest.mark.asyncio
LAG_S = 0.5  # within the WAIT timeout's reach: commits in it wait, then are answered "outcome unknown"


def check(report: Report, mode: str) -> None:
    print(report.line())
    assert report.kills == 1 and report.takeover_s[0] < 20, report.line()
    assert report.acknowledged > 50, report.line()
    assert report.unknown > 0, "the kill must land on requests in flight: " + report.line()
    assert report.doubled == 0 and report.unanswered == 0 and report.audit_differences == 0, report.line()
    if mode == "replica":
        assert report.lost == 0, report.line()
    else:  # acknowledged by the master during the lag, never replicated: gone with it
        assert report.lost > 0, report.line()


@pytest.mark.parametrize("mode", ["replica", "aof"])
async def test_a_cluster_master_killed_while_its_replica_lags(
    fresh_cluster: EmbeddedCluster, mode: str
) -> None:
    durability = Durability(mode) if mode == "replica" else Durability()
    report = await cluster_campaign(
        fresh_cluster, durability, seconds=4.0, kills=1, terminals=6, start_gateway=start_gateway,
        replica_lag_s=LAG_S,
    )  # fmt: skip
    check(report, mode)


@pytest.mark.parametrize("mode", ["replica", "aof"])
async def test_a_sentinel_master_killed_while_its_replica_lags(tmp_path: Path, mode: str) -> None:
    durability = Durability(mode) if mode == "replica" else Durability()
    with EmbeddedSentinel(tmp_path) as deployment:
        report = await sentinel_campaign(
            deployment, durability, seconds=4.0, terminals=6, start_gateway=start_gateway, replica_lag_s=LAG_S
        )
    check(report, mode)
