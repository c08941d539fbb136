"""The posting backlog as Redis itself has it, read at each scrape by the serve supervisor: per partition
stream, entries not booked, pending and not yet delivered, and the age of the oldest; the posting lag
(the oldest committed entry not in the ledger, dead letters included); unhandled dead letters; whether
Redis answered; the durability in force and the replicas seen.

The worker does not export these: when it is dead its figures vanish with it, and a gateway exporting its
defaults (zeros) made a dead worker's growing backlog read 0, so the lag alert could not fire."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters import redis_keys as keys
from adapters.redis_topology import sync_client
from gateway.ops.durability import Durability, read_facts_sync
from gateway.posting import deadletters
from telemetry.metrics import BACKLOG

GROUP = "posting"
SCRAPE_TIMEOUT_S = 2.0  # a scrape that cannot reach Redis in this long reports medsettle_redis_reachable 0


def gauge(name: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, BACKLOG[name], labels=list(labels))


class BacklogCollector(Collector):
    def __init__(
        self,
        client: redis.Redis,
        durability: Durability | None = None,
        partitions: Sequence[int] = tuple(range(keys.PARTITIONS)),
    ) -> None:
        self.client = client
        self.durability = durability or Durability()
        self.partitions = partitions

    def describe(self) -> Iterator[Metric]:
        return iter(())  # read at scrape time only, never when registered

    def collect(self) -> Iterator[Metric]:
        reachable = gauge("medsettle_redis_reachable")
        try:
            families = self.read()
        except redis.RedisError:
            reachable.add_metric([], 0)
            yield reachable
            return
        reachable.add_metric([], 1)
        yield reachable
        yield from families

    def read(self) -> list[Metric]:
        now_ms = time.time() * 1000
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            stream = keys.stream_key(p)
            pipe.xlen(stream)
            pipe.xpending(stream, GROUP)
            pipe.xrange(stream, count=1)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies:  # NOGROUP before any worker ran is fine; a lost connection is not
            if isinstance(reply, redis.ConnectionError | redis.TimeoutError):
                raise reply
        summary = deadletters.summary(self.client)
        entries = gauge("medsettle_stream_entries", ["partition"])
        pending = gauge("medsettle_stream_pending_entries", ["partition"])
        lag = gauge("medsettle_stream_consumer_lag_entries", ["partition"])
        age = gauge("medsettle_stream_oldest_entry_age_seconds", ["partition"])
        oldest_ms: float | None = summary.oldest_held_ms
        for i, p in enumerate(self.partitions):
            length, summary_reply, first = replies[3 * i : 3 * i + 3]
            length = length if isinstance(length, int) else 0
            count = int(summary_reply["pending"]) if isinstance(summary_reply, dict) else 0
            label = [str(p)]
            entries.add_metric(label, length)
            pending.add_metric(label, count)
            lag.add_metric(label, max(0, length - count))
            first_ms = entry_ms(first)
            age.add_metric(label, 0 if first_ms is None else max(0.0, (now_ms - first_ms) / 1000))
            if first_ms is not None and (oldest_ms is None or first_ms < oldest_ms):
                oldest_ms = first_ms
        posting_lag = gauge("medsettle_posting_lag_seconds")
        posting_lag.add_metric([], 0 if oldest_ms is None else max(0.0, (now_ms - oldest_ms) / 1000))
        unhandled = gauge("medsettle_posting_dead_letters_unhandled")
        unhandled.add_metric([], summary.unhandled)
        held = gauge("medsettle_posting_held_entries")
        held.add_metric([], summary.held)
        facts = read_facts_sync(self.client)
        replicas = gauge("medsettle_redis_replicas_connected")
        replicas.add_metric([], facts.replicas_connected)
        info = gauge(
            "medsettle_durability_info", ["mode", "appendfsync", "replicas_required", "maxmemory_policy"]
        )
        d = self.durability
        info.add_metric([d.mode, facts.appendfsync, str(d.wait_replicas), facts.maxmemory_policy], 1)
        return [entries, pending, lag, age, posting_lag, unhandled, held, replicas, info]


def entry_ms(reply: Any) -> float | None:
    if isinstance(reply, list) and reply:
        raw = reply[0][0]
        return float((raw.decode() if isinstance(raw, bytes) else str(raw)).split("-", 1)[0])
    return None


def client_for(url: str) -> redis.Redis:
    """One node, Sentinel or cluster (adapters/redis_topology.py): the scrape's pipelines go by slot."""
    return sync_client(
        url, socket_timeout=SCRAPE_TIMEOUT_S, socket_connect_timeout=SCRAPE_TIMEOUT_S, health_check_interval=1
    )
