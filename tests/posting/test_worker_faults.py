"""The posting worker survives what its dependencies do: a redis-server stalled (SIGSTOP) for longer than
its socket timeout, a redis-server restart, the database cut off; it keeps running, says so on /healthz,
and books everything afterwards. And a correction whose settlement sits in a dead consumer's pending list
waits for it, however long, while other work goes on: claimed, never dead-lettered for waiting."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.codec import Envelope
from gateway.correction_service import Target
from gateway.posting.worker import DEADLETTER, PostingWorker, WorkerConfig
from gateway.server import Gateway

from .conftest import postgres_database
from .tcp_proxy import TcpProxy
from .test_worker import add_persons, backlog, ledger_truth, redis_truth, settle_many, wait_for

pytestmark = pytest.mark.asyncio
STALL_S = 10.0  # longer than the worker's 5 s Redis socket timeout, which once ended the process


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    yield from postgres_database()


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def start_worker_process(redis_url: str, dsn: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--redis", redis_url, "--ledger", dsn,
         "--consumer", "survivor", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"metrics on http://127.0.0.1:(\d+)/", line)
        if found:
            return proc, int(found.group(1))
    raise AssertionError("the worker did not start")


@pytest.mark.single_node  # stops and restarts the one redis-server
async def test_the_worker_process_survives_a_stall_a_restart_and_a_cut_database(
    gateway: Gateway, redis_server: EmbeddedRedis, sync_redis: redis.Redis, postgres_dsn: str
) -> None:
    dsn = postgres_dsn
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    proxy = TcpProxy(host, int(port)).start()
    direct = Ledger(dsn)
    direct.migrate()
    await add_persons(gateway)
    proc, health_port = await asyncio.to_thread(
        start_worker_process, redis_server.url, dsn.replace(host_port, f"127.0.0.1:{proxy.port}")
    )
    settled = 0

    async def settle_and_wait(count: int, what: str) -> None:
        nonlocal settled
        await settle_many(gateway, count, start=settled)
        settled += count
        await wait_for(lambda: backlog(sync_redis) == 0, timeout_s=60, why=lambda: what)
        assert proc.poll() is None, f"the worker exited after {what}"
        assert ledger_truth(direct)["settled"] == settled

    try:
        await settle_and_wait(10, "a normal start")
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis stalls: commands time out
        await asyncio.sleep(STALL_S)
        os.kill(redis_server.process.pid, signal.SIGCONT)
        await settle_and_wait(10, "a 10 s Redis stall")

        await asyncio.to_thread(redis_server.stop)  # Redis restarts (its AOF keeps everything)
        await asyncio.to_thread(redis_server.start)
        await settle_and_wait(10, "a Redis restart")

        proxy.cut()  # the database goes away while settling goes on
        await settle_many(gateway, 10, start=settled)
        settled += 10
        await wait_for(lambda: healthz(health_port)[0] == 503, timeout_s=30, why=lambda: healthz(health_port))
        assert "ledger failing" in healthz(health_port)[1]
        assert backlog(sync_redis) == 10 and proc.poll() is None
        proxy.restore()
        await settle_and_wait(10, "the database cut off and back")
        code, text = healthz(health_port)
        assert code == 200 and "redis ok" in text and "ledger ok" in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proxy.cut()
    assert proc.returncode == 0, "stopped by SIGTERM, cleanly"
    assert ledger_truth(direct) == redis_truth(sync_redis)
    direct.close()


# without leases; a cluster's workers always lease, and a new owner reads what the dead one left pending
# first (tests/cluster/test_worker_leases.py)
@pytest.mark.single_node
async def test_a_correction_waits_for_its_settlement_in_a_dead_consumers_list(
    gateway: Gateway, sync_redis: redis.Redis, ledger: Ledger
) -> None:
    await add_persons(gateway)
    dead = PostingWorker(sync_redis, ledger, WorkerConfig(consumer="dead"))
    dead.prepare()
    (sid,) = await settle_many(gateway, 1)
    assert [item[1] for item in dead.read()], "the first worker took the settlement"  # ... and died with it
    assert gateway.corrections is not None
    await gateway.corrections.reverse(
        Envelope("H50010600001", "T", "op", "REV-DEAD"), Target(sid, "", None), "r"
    )
    config = WorkerConfig(
        consumer="alive", claim_idle_ms=6000, claim_every_ms=500, attempts_max=2, block_ms=100
    )
    alive = PostingWorker(sync_redis, ledger, config)
    stop = threading.Event()
    thread = threading.Thread(target=alive.run, args=(stop,), daemon=True)
    thread.start()
    try:
        others = await settle_many(gateway, 5, start=1)  # new work is booked while the reversal waits
        await wait_for(lambda: ledger.settled(others) == set(others), timeout_s=5)
        assert not ledger.settled([sid]), "the settlement is still in the dead consumer's list"
        await wait_for(lambda: backlog(sync_redis) == 0, timeout_s=60, why=lambda: alive.stats)
    finally:
        stop.set()
        thread.join(10)
    kinds = dict(
        ledger.query("SELECT kind, COUNT(*) FROM journal WHERE settlement_id = ? GROUP BY kind", [sid])
    )
    assert kinds == {"settle": 1, "reverse": 1}, (
        "settled, then reversed: not a reversed settlement kept as paid"
    )
    # it waited far beyond the failures that dead-letter an entry, and was never dead-lettered for it
    assert alive.stats.deferred > 10 * config.attempts_max
    assert alive.stats.dead_lettered == 0 and sync_redis.xlen(DEADLETTER) == 0
    assert ledger_truth(ledger) == redis_truth(sync_redis)
