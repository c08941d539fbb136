"""The backlog as Redis has it, from the supervisor's /metrics: with no worker running at all, committed
settlements show as entries waiting and as posting lag (they once read 0), every backlog metric the
dashboard and the alerts use is in a real scrape, and a Redis that does not answer reads as unreachable
rather than as an empty backlog."""

from __future__ import annotations

import time
import urllib.request

import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis
from gateway.ops.backlog import BacklogCollector, client_for
from gateway.server import Gateway
from telemetry.metrics import BACKLOG, serve_metrics

from ..posting.test_worker import add_persons, settle_many

pytestmark = pytest.mark.asyncio


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def value(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


async def test_the_backlog_is_visible_from_redis_with_the_worker_dead(
    gateway: Gateway, redis_server: EmbeddedRedis
) -> None:
    await add_persons(gateway)
    await settle_many(gateway, 12)  # committed; no worker has ever run
    started = time.monotonic()
    http = serve_metrics(0, None, "127.0.0.1", collectors=[BacklogCollector(client_for(redis_server.url))])
    try:
        time.sleep(1.1)
        text = scrape(http.server_port)
    finally:
        http.shutdown()
    for name in BACKLOG:
        assert f"# TYPE {name} gauge" in text, name
    assert value(text, "medsettle_redis_reachable") == 1
    assert value(text, "medsettle_stream_entries") == 12
    assert value(text, "medsettle_stream_consumer_lag_entries") == 12  # nobody has even read them
    assert value(text, "medsettle_posting_lag_seconds") >= 1.0
    ages = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("medsettle_stream_oldest_entry_age_seconds{")
    ]
    assert max(ages) >= 1.0 and max(ages) < time.monotonic() - started + 60
    assert value(text, "medsettle_posting_dead_letters_unhandled") == 0
    # only the worker exports its health: not the backlog exporter the gateway's supervisor runs (its
    # own families, not the scrape: an in-process worker of an earlier test registers the gauge here)
    exported = {family.name for family in BacklogCollector(client_for(redis_server.url)).collect()}
    assert exported and "medsettle_worker_healthy" not in exported, "only the worker exports its health"


async def test_redis_down_reads_unreachable_not_empty(redis_server: EmbeddedRedis) -> None:
    collector = BacklogCollector(redis.Redis.from_url(redis_server.url, socket_timeout=1))
    redis_server.stop()
    families = list(collector.collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("medsettle_redis_reachable", 0)]
