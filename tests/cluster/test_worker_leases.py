"""Posting workers sharing the partitions of a real local Redis Cluster through leases, as real
processes: every settlement and reversal booked exactly once while workers join, leave cleanly and die
(SIGKILL), the partitions rebalanced each time, and none left without an owner."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from adapters import redis_keys as keys
from adapters.embedded_cluster import EmbeddedCluster
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.audit import audit_redis
from gateway.posting.leases import Leases, lease_key
from gateway.posting.worker import DEADLETTER, GROUP
from gateway.server import Gateway

from ..posting.conftest import postgres_database
from ..posting.test_worker import add_persons, ledger_truth, redis_truth, settle_many

pytestmark = pytest.mark.asyncio
LEASE_TTL_MS = 2_000
RENEW_MS = 300


@pytest.fixture(params=["postgresql"])
def shared_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Several worker processes book into one database: PostgreSQL, as in production."""
    yield from postgres_database()


def start_worker(url: str, dsn: str, name: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--redis", url, "--ledger", dsn, "--consumer", name,
         "--batch-max", "50", "--lease-ttl-ms", str(LEASE_TTL_MS), "--lease-renew-every-ms", str(RENEW_MS),
         "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def holders(r: redis.Redis) -> dict[int, str]:
    pipe = r.pipeline(transaction=False)
    for p in range(keys.PARTITIONS):
        pipe.get(lease_key(p))
    return {p: v.decode() for p, v in enumerate(pipe.execute()) if v is not None}


def backlog(r: redis.Redis) -> int:
    pipe = r.pipeline(transaction=False)
    for p in range(keys.PARTITIONS):
        pipe.xlen(keys.stream_key(p))
    return sum(pipe.execute())


async def wait_for(condition: Callable[[], bool], timeout_s: float, why: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s}s: {why()}")
        await asyncio.sleep(0.1)


def owners(r: redis.Redis) -> set[str]:
    return set(holders(r).values())


def every_partition_owned_by(r: redis.Redis, names: set[str]) -> bool:
    found = holders(r)
    return len(found) == keys.PARTITIONS and set(found.values()) == names


async def test_workers_join_leave_and_die_and_every_settlement_is_booked_once(
    cluster: EmbeddedCluster, cluster_gateway: Gateway, shared_ledger: str
) -> None:
    url = cluster.url_for("worker")
    r = sync_client(cluster.url_for("admin"))
    await add_persons(cluster_gateway)
    done = len(await settle_many(cluster_gateway, 120, reverse_every=7))
    workers = {name: await asyncio.to_thread(start_worker, url, shared_ledger, name) for name in ("a", "b")}
    try:
        await wait_for(lambda: every_partition_owned_by(r, {"a", "b"}), 40, lambda: owners(r))
        split = holders(r)
        assert 80 <= sum(1 for v in split.values() if v == "a") <= 176, "rendezvous hashing shares them out"
        # a third joins under load: it gets about a third, taken from both
        workers["c"] = await asyncio.to_thread(start_worker, url, shared_ledger, "c")
        done += len(await settle_many(cluster_gateway, 120, start=done, reverse_every=7))
        await wait_for(lambda: every_partition_owned_by(r, {"a", "b", "c"}), 40, lambda: owners(r))
        moved = holders(r)
        assert all(moved[p] in (split[p], "c") for p in moved), "only the newcomer's share moved"
        # one dies without a word (SIGKILL, entries possibly in hand): its partitions wait out the TTL
        os.kill(workers["a"].pid, signal.SIGKILL)
        workers.pop("a").wait()
        started = time.monotonic()
        done += len(await settle_many(cluster_gateway, 120, start=done, reverse_every=7))
        await wait_for(lambda: every_partition_owned_by(r, {"b", "c"}), 40, lambda: owners(r))
        takeover_s = time.monotonic() - started
        # one leaves cleanly (SIGTERM): its leases are released at once
        workers["b"].terminate()
        workers.pop("b").wait(timeout=30)
        done += len(await settle_many(cluster_gateway, 120, start=done, reverse_every=7))
        await wait_for(lambda: every_partition_owned_by(r, {"c"}), 20, lambda: owners(r))
        await wait_for(lambda: backlog(r) == 0, 60, lambda: f"backlog {backlog(r)}")
    finally:
        for proc in workers.values():
            proc.terminate()
            proc.wait(timeout=30)
    truth = redis_truth(r)
    assert truth["settled"] == done == 480
    ledger = Ledger(shared_ledger)
    assert ledger_truth(ledger) == truth, "every settlement and reversal booked once, no more"
    ledger.close()
    assert r.xlen(DEADLETTER) == 0
    report = await audit_redis(cluster.url_for("admin"), shared_ledger)
    assert report.differences == [], report.lines()
    # from the kill: the dead worker's leases run out, then the next renewal takes them (the machine is
    # shared, so the bound is generous; without takeover the wait above would have failed)
    assert takeover_s < LEASE_TTL_MS / 1000 + 15, takeover_s


async def test_a_new_owner_books_what_the_dead_one_left_pending(
    cluster: EmbeddedCluster, cluster_gateway: Gateway, shared_ledger: str
) -> None:
    # Entries delivered to partition 17's consumer and never acknowledged (its worker died holding them)
    # are the next owner's own pending entries: booked at once, not after an idle claim.
    await add_persons(cluster_gateway)
    sids = await settle_many(cluster_gateway, 60)
    r = sync_client(cluster.url_for("admin"))
    partitions = {keys.partition_of_settlement(s) for s in sids}
    for p in partitions:
        r.xgroup_create(keys.stream_key(p), GROUP, id="0", mkstream=True)
        r.xreadgroup(GROUP, f"p{p:03d}", {keys.stream_key(p): ">"})  # delivered, never acked
    dead = Leases(r, "dead", ttl_ms=LEASE_TTL_MS)
    dead.renew()  # the dead worker held every lease
    assert len(holders(r)) == keys.PARTITIONS
    proc = await asyncio.to_thread(start_worker, cluster.url_for("worker"), shared_ledger, "next")
    try:
        await wait_for(lambda: backlog(r) == 0, 30, lambda: f"backlog {backlog(r)}, owners {owners(r)}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    ledger = Ledger(shared_ledger)
    assert ledger_truth(ledger) == redis_truth(r)
    ledger.close()
