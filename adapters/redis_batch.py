"""Coalescing: the Lua calls that concurrent requests make in one event-loop turn go to Redis as one
pipeline. Each request still costs its two commands, but redis-py's per-call client overhead (the
gateway's largest cost after gRPC's own, see docs/BENCHMARKS.md) is paid once per batch, not per call.

On Redis Cluster the turn's calls are grouped by the node that holds their slot (a script's keys are all
in one slot: adapters/redis_keys.py), one pipeline per node, sent side by side: a node that fails or
fails over fails only the calls that went to it."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

BATCH_MAX = 512  # commands per pipeline; a larger turn is split


class ScriptBatcher:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._queue: list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: AsyncScript, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every request of this turn has queued its call
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for group in self._by_node(queue):
            for start in range(0, len(group), BATCH_MAX):
                task = asyncio.ensure_future(self._send(group[start : start + BATCH_MAX]))
                self._tasks.add(task)  # keep a reference until it is done
                task.add_done_callback(self._tasks.discard)

    def _by_node(
        self, queue: list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]]
    ) -> list[list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]]]:
        if not isinstance(self.client, RedisCluster) or not queue:
            return [queue]
        groups: dict[str, list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]]] = {}
        for call in queue:
            try:
                name = self.client.get_node_from_key(call[1][0]).name
            except Exception:  # no slot map yet (the client has not connected): one group, redis-py routes
                name = ""
            groups.setdefault(name, []).append(call)
        return list(groups.values())

    async def _send(self, batch: list[tuple[AsyncScript, list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args, _ in batch:
                # execute_command: the cluster pipeline blocks its evalsha method, not the command
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller learns it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            return
        for (script, keys, args, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller gave up (deadline)
            if isinstance(result, NoScriptError):  # Redis restarted and lost its scripts: load and retry
                try:
                    future.set_result(await script(keys=keys, args=args))
                except Exception as exc:
                    future.set_exception(exc)
            elif isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
