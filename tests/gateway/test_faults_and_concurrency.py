"""The failure modes the gateway must survive: concurrent settlements for one person, Redis going away
mid-traffic, a catalog published during traffic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from adapters import redis_keys as keys
from adapters.citydata_files import citydata_dir, read_csv
from adapters.embedded_redis import EmbeddedRedis
from adapters.redis_topology import async_client
from gateway.audit import audit_redis
from gateway.config import Config
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway
from rules_cache.static_data import Publication

from ..conftest import INDEX_KEY
from ..redis_state import accumulators, set_balance, set_opening
from .conftest import HOSPITAL, HOSPITAL_2, NOW, PERSON, Terminal, error_of
from .test_settlement_rpcs import STAY

pytestmark = pytest.mark.asyncio
BASIC_CAP = 10_000_000  # Chongqing employee basic fund, 100,000 yuan a year


async def test_concurrent_settlements_never_exceed_the_cap_or_overdraw_the_account(
    gateway: Gateway, redis_server: EmbeddedRedis, sync_redis: redis.Redis, terminal: Terminal
) -> None:
    # 200.00 yuan of basic fund left this year and 500.00 in the personal account; 50 stays of 2,777.50
    # each, sent at once to two gateway processes from two hospitals. Whatever the interleaving, the
    # fund pays exactly the 200.00 left and the account exactly its 500.00, never more.
    set_opening(sync_redis, PERSON, {"fund.basic": BASIC_CAP - 20_000})
    set_balance(sync_redis, PERSON, 50_000)
    config = Config(listen="127.0.0.1:0", redis_url=redis_server.url, index_key=INDEX_KEY)
    second = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as one,
            grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as two,
        ):
            stubs = [pb_grpc.SettlementServiceStub(one), pb_grpc.SettlementServiceStub(two)]
            requests = [terminal.settle(STAY, institution=(HOSPITAL, HOSPITAL_2)[i % 2]) for i in range(50)]
            replies = await asyncio.gather(*(stubs[i % 2].Settle(r) for i, r in enumerate(requests)))
    finally:
        await second.stop()
    basic = sum(f.amount_fen for r in replies for f in r.split.funds if f.layer == "basic")
    large = sum(f.amount_fen for r in replies for f in r.split.funds if f.layer == "large_amount")
    account = sum(r.split.account_fen for r in replies)
    assert len({r.settlement_id for r in replies}) == 50
    assert basic == 20_000, "the basic fund paid exactly what was left of its annual maximum"
    assert account == 50_000, "the account paid exactly its balance"
    acc = accumulators(sync_redis, PERSON)
    assert acc["fund.basic"] == BASIC_CAP and acc["fund.large"] == large
    assert acc["stays.inpatient"] == 50
    assert int(sync_redis.hget(keys.state_key(PERSON), "bal")) == 0
    for r in replies:
        s = r.split
        assert s.fund_total_fen + s.account_fen + s.cash_fen == s.total_fen
    report = await audit_redis(redis_server.url, None)
    assert report.differences == [] and report.settlements == 50, report.lines()


@pytest.mark.single_node  # stops and restarts the one redis-server; a cluster's failover: tests/cluster/
async def test_redis_down_gives_unavailable_within_the_deadline_and_recovers(
    gateway: Gateway, redis_server: EmbeddedRedis, stub: Any, terminal: Terminal
) -> None:
    health = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}"))
    assert (
        await health.Check(health_pb2.HealthCheckRequest())
    ).status == health_pb2.HealthCheckResponse.SERVING
    request = terminal.settle(STAY)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Settle(request, timeout=1.0)
    elapsed = time.monotonic() - started
    code, detail = error_of(info.value)
    assert (code, detail.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert elapsed < 1.0, f"answered after {elapsed:.2f}s, past the deadline"
    await asyncio.sleep(0.3)
    status = (await health.Check(health_pb2.HealthCheckRequest())).status
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING

    redis_server.start()  # same port, same AOF: nothing was half written while it was down
    r = redis.Redis.from_url(redis_server.url)
    assert r.exists(keys.idem_key(keys.partition_of(PERSON), HOSPITAL, request.envelope.message_id)) == 0
    assert int(r.hget(keys.state_key(PERSON), "bal")) == 425_500
    for _ in range(50):  # the gateway reconnects by itself
        try:
            reply = await stub.Settle(request, timeout=1.0)
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the gateway did not recover after Redis came back")
    assert reply.split.account_fen == 109_815
    assert int(r.hget(keys.state_key(PERSON), "bal")) == 425_500 - 109_815
    await asyncio.sleep(0.3)
    assert (
        await health.Check(health_pb2.HealthCheckRequest())
    ).status == health_pb2.HealthCheckResponse.SERVING


async def test_catalog_published_during_traffic_fails_no_request(
    gateway: Gateway, redis_server: EmbeddedRedis, stub: Any, terminal: Terminal
) -> None:
    old_version = gateway.service.static.snapshot.catalogs["500000"].version  # type: ignore[union-attr]
    rows = read_csv(citydata_dir() / "catalogs" / "500000.csv")
    for row in rows:
        if row["code"] == "T000009":
            row["class"] = "B"  # liver function tests become class B: 10% first self-pay from now on
    publication = Publication()
    new_version = publication.add_catalog("500000", rows, version="500000-test-2026.2")
    client = async_client(redis_server.url)
    replies: list[Any] = []

    async def traffic() -> None:  # until the new version has been seen, bounded
        while len(replies) < 1000 and (len(replies) < 40 or replies[-1].split.catalog_version != new_version):
            request = terminal.settle([("T000009", 6000, 1)], visit=pb.VISIT_TYPE_OUTPATIENT)
            replies.append(await stub.Settle(request))

    task = asyncio.create_task(traffic())
    await asyncio.sleep(0.05)
    await publication.publish(client)
    await task
    await client.aclose()
    versions = [r.split.catalog_version for r in replies]
    assert len(replies) >= 40 and set(versions) <= {old_version, new_version}
    assert versions[0] == old_version
    assert versions[-1] == new_version, "the new version is in force after publication"
    for r in replies:  # each settlement split by the catalog it records
        expected_first_selfpay = 600 if r.split.catalog_version == new_version else 0
        assert r.split.first_selfpay_fen == expected_first_selfpay


async def test_health_and_reflection(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "medsettle.v1.SettlementService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflect.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            assert {"medsettle.v1.SettlementService", "grpc.health.v1.Health"} <= names
            break
