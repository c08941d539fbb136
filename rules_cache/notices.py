"""Follow a Redis pub/sub channel until asked to stop, reconnecting when Redis goes away.

On Redis Cluster the notices go over sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7): a channel lives in
its slot's shard, so a notice costs one shard, not a broadcast over the whole cluster bus, and a
subscriber follows its channel's shard through a failover (redis-py's cluster pub/sub re-routes). A
notice is only a hint to re-read (on_message(None) resyncs every `resync_s`), so one lost in a failover
delays a change by at most that long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

log = logging.getLogger(__name__)
POLL_S = 1.0  # how often the loop looks at `stopping` even when no message comes


MESSAGE_TYPES = ("message", "smessage")


async def publish(client: aioredis.Redis, channel: str, data: str) -> None:
    """One notice: SPUBLISH on a cluster, PUBLISH on one node (or Sentinel's master)."""
    if isinstance(client, RedisCluster):
        await client.spublish(channel, data)
    else:
        await client.publish(channel, data)


async def follow_channel(
    client: aioredis.Redis,
    channel: str,
    on_message: Callable[[bytes | None], Awaitable[None]],
    stopping: asyncio.Event,
    resync_s: float = 30.0,
) -> None:
    """Calls on_message(data) for each message, and on_message(None) after every (re)subscription and
    every `resync_s` without a message, so a message missed while disconnected is caught up. The loop
    checks `stopping` at least every second: cancellation alone is not relied on, because a cancel that
    lands inside redis-py's own timeouts can surface as a TimeoutError instead."""
    while not stopping.is_set():
        sharded = isinstance(client, RedisCluster)
        pubsub: Any = client.pubsub()
        try:
            if sharded:
                await pubsub.ssubscribe(channel)
            else:
                await pubsub.subscribe(channel)
            await on_message(None)
            quiet_s = 0.0
            while not stopping.is_set():
                message = (
                    await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=POLL_S)
                    if sharded
                    else await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                )
                if message is not None and text(message["type"]) in MESSAGE_TYPES:
                    await on_message(message["data"])
                    quiet_s = 0.0
                    continue
                quiet_s += POLL_S
                if quiet_s >= resync_s:
                    await on_message(None)
                    quiet_s = 0.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: keep what we have, try again shortly
            log.warning("listener on %s: %s", channel, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=POLL_S)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
