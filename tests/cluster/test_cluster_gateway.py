"""The gateway on a real local Redis Cluster: what a Settle costs in round trips (the institution-wide
message-id claim is the one command a cluster adds), and the notices that keep every process's caches
true travelling over sharded pub/sub."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from adapters.embedded_cluster import EmbeddedCluster, admin
from adapters.redis_keys import PERSON_CHANNEL
from gateway.codec import Envelope, PersonRef
from gateway.server import Gateway
from loadtest.failover import BILL, HOSPITAL
from loadtest.synthetic import persons

from .conftest import start_gateway

pytestmark = pytest.mark.asyncio


def command_calls(cluster: EmbeddedCluster) -> dict[str, int]:
    """Commands clients sent, by name, summed over the masters (INFO commandstats counts a script's own
    redis.call()s under their names too, so only evalsha and set are read: the gateway's scripts SET
    nothing but the claim inline, which a cluster never runs)."""
    out: dict[str, int] = {}
    for node in cluster.nodes:
        with admin(node) as c:
            if c.info("replication")["role"] != "master":
                continue
            for name, stats in c.info("commandstats").items():
                out[name] = out.get(name, 0) + int(stats["calls"])
    return out


async def test_a_settle_costs_three_round_trips_on_a_cluster(
    cluster: EmbeddedCluster, cluster_gateway: Gateway
) -> None:
    assert cluster_gateway.service is not None and cluster_gateway.store is not None
    record = persons(1)[0]
    await cluster_gateway.store.put_person(record)
    card = record["card_no"]
    warm = Envelope(HOSPITAL, "T", "op", f"{HOSPITAL}W000000000001")
    await cluster_gateway.service.settle(
        warm, PersonRef(card, None), BILL, "warm"
    )  # card cached, scripts loaded
    before = command_calls(cluster)
    env = Envelope(HOSPITAL, "T", "op", f"{HOSPITAL}W000000000002")
    await cluster_gateway.service.settle(env, PersonRef(card, None), BILL, "once")
    after = command_calls(cluster)
    sent = {k: after.get(k, 0) - before.get(k, 0) for k in ("cmdstat_evalsha", "cmdstat_set")}
    # the read script, the commit script, and the claim (SET NX GET in the claim's own slot)
    assert sent == {"cmdstat_evalsha": 2, "cmdstat_set": 1}, sent


def shard_subscribers(node: Any) -> int:
    with admin(node) as c:
        reply = c.execute_command("PUBSUB", "SHARDNUMSUB", PERSON_CHANNEL)  # type: ignore[no-untyped-call]
        return int(reply[1])


async def test_a_reassigned_card_is_forgotten_by_every_gateway_over_sharded_pub_sub(
    cluster: EmbeddedCluster, cluster_gateway: Gateway
) -> None:
    other = await start_gateway(cluster.url_for("admin"))
    try:
        assert cluster_gateway.store is not None and other.store is not None
        record: dict[str, Any] = persons(1)[0]
        await cluster_gateway.store.put_person(record)
        old = record["card_no"]
        assert await other.store.person_id_for(old, None) == record["person_id"]  # now in its cache (60 s)
        owner = cluster.node_serving(PERSON_CHANNEL)  # a shard channel lives on its slot's master
        deadline = time.monotonic() + 5
        while shard_subscribers(owner) < 2:  # both gateways follow it there, not by a cluster-wide SUBSCRIBE
            assert time.monotonic() < deadline, "the gateways did not SSUBSCRIBE on the channel's shard"
            await asyncio.sleep(0.05)
        await cluster_gateway.store.put_person({**record, "card_no": "L99999999"})  # the card replaced
        deadline = time.monotonic() + 5
        while await other.store.person_id_for(old, None) is not None:
            assert time.monotonic() < deadline, "the other process still maps the replaced card"
            await asyncio.sleep(0.05)
    finally:
        await other.stop()
