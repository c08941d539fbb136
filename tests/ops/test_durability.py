"""Durability you choose and see, on real redis-servers: in replica mode a Settle is acknowledged only once
a real replica (a second redis-server with replicaof) confirms it; a replica that does not confirm in time
makes the Settle UNAVAILABLE "outcome unknown" (counted; the commit stands and the resend finds it); the
mode is in the metrics and /healthz; and the gateway refuses a Redis that may evict."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import redis

from adapters.embedded_redis import EmbeddedRedis
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.ops.backlog import BacklogCollector
from gateway.ops.durability import Durability, StartupRefused
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway, redis_client
from loadtest.synthetic import OUTPATIENT_10_LINES
from telemetry import metrics

from ..conftest import INDEX, INDEX_KEY, NOW
from ..gateway.conftest import CARD, Terminal

pytestmark = pytest.mark.asyncio
WAIT_MS = 300
LINES = OUTPATIENT_10_LINES


@pytest.fixture
def replica(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path, replica_of=redis_server, folder="redis-replica").start()
    primary = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 30
    while primary.info("replication")["connected_slaves"] < 1 or (
        redis.Redis.from_url(server.url).info("replication").get("master_link_status") != "up"
    ):
        assert time.monotonic() < deadline, "the replica did not connect"
        time.sleep(0.05)
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


@pytest_asyncio.fixture
async def replica_gateway(redis_server: EmbeddedRedis, replica: EmbeddedRedis) -> AsyncIterator[Gateway]:
    config = Config(
        listen="127.0.0.1:0",
        redis_url=redis_server.url,
        health_interval_ms=100,
        tls=None,
        index_key=INDEX_KEY,
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    durability = Durability("replica", replicas=1, wait_timeout_ms=WAIT_MS)
    gw = await Gateway(config, redis_server.url, now=lambda: NOW, durability=durability).start()
    yield gw
    await gw.stop()


async def unhealthy_because(gw: Gateway, words: str, timeout_s: float = 20) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ok, reason = gw.report()
        if not ok and words in reason:
            return reason
        await asyncio.sleep(0.1)
    raise AssertionError(f"health still says {gw.report()}")


async def test_replica_mode_acknowledges_only_what_a_replica_confirmed(
    replica_gateway: Gateway, redis_server: EmbeddedRedis, replica: EmbeddedRedis
) -> None:
    terminal = Terminal()
    on_replica = redis.Redis.from_url(replica.url)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica_gateway.port}") as channel:
        stub = pb_grpc.SettlementServiceStub(channel)
        first = await stub.Settle(terminal.settle(LINES, visit=pb.VISIT_TYPE_OUTPATIENT, card=CARD))
        key = f"ms:{{p{int(first.settlement_id[1:4]):03d}}}:stl:{first.settlement_id}"
        assert on_replica.exists(key), "acknowledged: the replica has it"

        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)  # the replica stops confirming
        failures = metrics.REPLICA_WAIT_FAILURES._value.get()
        request = terminal.settle(LINES, visit=pb.VISIT_TYPE_OUTPATIENT, card=CARD)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Settle(request)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "outcome unknown" in (refused.value.details() or "")
        assert metrics.REPLICA_WAIT_FAILURES._value.get() == failures + 1
        # its resend finds the commit on the primary, but still no replica has it: not acknowledged either
        with pytest.raises(grpc.aio.AioRpcError) as resent:
            await stub.Settle(request)
        assert resent.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "outcome unknown" in (resent.value.details() or "")
        os.kill(replica.process.pid, signal.SIGCONT)

        again = await stub.Settle(request)  # the resend finds the commit that stood on the primary
        assert again.settlement_id and again.message_id == request.envelope.message_id
        settled = [k for k in redis.Redis.from_url(redis_server.url).scan_iter("ms:{p*}:stl:*")]
        assert len(settled) == 2, "the unconfirmed Settle was written once, not twice"

    collector = BacklogCollector(redis.Redis.from_url(redis_server.url), replica_gateway.durability)
    scrape = {s.name: s for family in collector.collect() for s in family.samples}
    assert scrape["medsettle_durability_info"].labels["mode"] == "replica"
    assert scrape["medsettle_durability_info"].labels["appendfsync"] == "always"
    assert scrape["medsettle_redis_replicas_connected"].value == 1
    ok, reason = replica_gateway.report()
    assert ok and "durability replica" in reason and "1 replica(s) connected" in reason

    replica.stop()  # no replica at all: NOT_SERVING, with why
    reason = await unhealthy_because(replica_gateway, "0 connected")
    assert "replica mode needs 1 replica(s)" in reason


async def test_the_gateway_refuses_a_redis_that_may_evict(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    config = Config(listen="127.0.0.1:0", redis_url=redis_server.url, tls=None, index_key=INDEX_KEY)
    with pytest.raises(StartupRefused, match="maxmemory-policy is allkeys-lru"):
        await Gateway(config, redis_server.url).start()
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--redis", redis_server.url, "--insecure",
         "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "serve"), "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refusing to start: Redis maxmemory-policy is allkeys-lru" in result.stdout
    admin.config_set("maxmemory-policy", "noeviction")
