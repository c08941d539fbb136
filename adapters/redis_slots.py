"""Commands that must share one connection to the node holding a key's slot: WAIT counts the replicas
that have the writes of its own connection, so a commit and its WAIT go together. On one node (or
Sentinel's master) a non-transactional pipeline is one connection already; on a cluster, the pipeline of
redis-py's cluster client may split, so the commands go to the slot's node as one pipeline of its own."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import PipelineCommand, RedisCluster

MOVED_RETRIES = 1  # a slot moved (a failover, a resharding): nothing ran; ask the cluster once more


async def on_slot_node(client: aioredis.Redis, key: str, *commands: tuple[Any, ...]) -> list[Any]:
    """The replies (an error reply as its exception, as pipeline(raise_on_error=False) gives them)."""
    if not isinstance(client, RedisCluster):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))
    for attempt in range(MOVED_RETRIES + 1):
        await client.initialize()  # a no-op unless the client has seen the topology change
        node = client.get_node_from_key(key)
        batch = [PipelineCommand(i, *command) for i, command in enumerate(commands)]
        try:
            await node.execute_pipeline(batch)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            refresh(client)  # the node may have died: learn the new master before the next command
            raise
        results = [c.result for c in batch]
        redirected = any(
            isinstance(r, (redis.exceptions.MovedError, redis.exceptions.AskError)) for r in results
        )
        if redirected or any(isinstance(r, redis.exceptions.ClusterDownError) for r in results):
            refresh(client)
            if redirected and attempt < MOVED_RETRIES:
                continue
        return results
    raise AssertionError("unreachable")


def refresh(client: RedisCluster) -> None:
    """Make the cluster client re-read the slot map before its next command (what redis-py itself does
    after a connection error; it has no public call for it)."""
    client._initialize = True
