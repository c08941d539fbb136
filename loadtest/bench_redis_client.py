"""What one Redis round trip costs the gateway's process, by client path, in one run: redis-py's asyncio
client (as the gateway uses it: EVALSHA through a non-transactional pipeline, many calls coalesced per
event-loop turn), redis-py one call at a time, and a minimal client (an asyncio.Protocol that writes
RESP bytes built for the script's fixed shape and parses replies with hiredis, the C parser redis-py
itself uses) coalesced the same way. The baseline is the minimal client: the least Python any client
must run per call.

    .venv/bin/python -m loadtest.bench_redis_client [--seconds 3] [--concurrency 64] [--keys 4] [--args 8]

The figure is this process's CPU time (user + system, time.process_time) per call, the client's cost
alone; Redis's own CPU per call is printed beside it (from /proc). The script is a stand-in of the
commit's shape (KEYS and ARGV counts, a short reply), not the commit itself: what differs between the
paths is the client, not the work in Redis. Prints figures; asserts nothing."""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis

from adapters.embedded_redis import EmbeddedRedis
from loadtest import proc_cpu

SCRIPT = "return {KEYS[1], ARGV[1], #KEYS, #ARGV}"


def resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


class MinimalClient(asyncio.Protocol):
    """One connection; replies matched to requests in order (Redis answers in order on a connection)."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(reply)

    def call(self, request: bytes) -> asyncio.Future[Any]:
        """Queues the request; every request of one event-loop turn goes out in one write."""
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.pending.append(request)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return future

    def flush(self) -> None:
        self.flush_scheduled = False
        assert self.transport is not None
        self.transport.write(b"".join(self.pending))
        self.pending.clear()


async def measure(name: str, call: Callable[[int], Awaitable[Any]], seconds: float, concurrency: int,
                  redis_pid: int) -> tuple[str, float, float, float]:  # fmt: skip
    done = 0
    end = time.perf_counter() + seconds

    async def caller(n: int) -> None:
        nonlocal done
        i = n
        while time.perf_counter() < end:
            await call(i)
            i += concurrency
            done += 1

    await asyncio.gather(*(caller(n) for n in range(concurrency)))  # warm-up pass of the same length
    done = 0
    end = time.perf_counter() + seconds
    cpu0, redis0, wall0 = time.process_time(), proc_cpu.cpu_seconds(redis_pid), time.perf_counter()
    await asyncio.gather(*(caller(n) for n in range(concurrency)))
    cpu1, redis1, wall1 = time.process_time(), proc_cpu.cpu_seconds(redis_pid), time.perf_counter()
    return name, done / (wall1 - wall0), (cpu1 - cpu0) / done * 1e6, (redis1 - redis0) / done * 1e6


async def run(args: argparse.Namespace, url: str, redis_pid: int) -> list[tuple[str, float, float, float]]:
    client = aioredis.Redis.from_url(url, max_connections=args.concurrency + 4)
    sha = await client.script_load(SCRIPT)
    keys = [f"k{{p001}}:{i}".encode() for i in range(args.keys)]

    def argv(i: int) -> list[bytes]:
        return [str(i).encode(), *(b"v%d" % j for j in range(args.args - 1))]

    async def one_at_a_time(i: int) -> Any:
        return await client.evalsha(sha, len(keys), *keys, *argv(i))

    batch: list[tuple[int, asyncio.Future[Any]]] = []

    async def flush_pipeline() -> None:
        taken = batch[:]
        batch.clear()
        pipe = client.pipeline(transaction=False)
        for i, _ in taken:
            pipe.evalsha(sha, len(keys), *keys, *argv(i))
        for (_, future), reply in zip(taken, await pipe.execute(), strict=True):
            future.set_result(reply)

    def coalesced(i: int) -> Awaitable[Any]:
        future = asyncio.get_running_loop().create_future()
        if not batch:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(flush_pipeline()))
        batch.append((i, future))
        return future

    conn = client.connection_pool.connection_kwargs  # host, port and the ACL user of the URL
    loop = asyncio.get_running_loop()
    _, minimal = await loop.create_connection(
        MinimalClient, conn.get("host", "127.0.0.1"), conn.get("port", 6379)
    )
    if conn.get("password"):
        user = [str(conn["username"]).encode()] if conn.get("username") else []
        assert await minimal.call(resp(b"AUTH", *user, str(conn["password"]).encode())) == b"OK"
    head = [b"EVALSHA", sha.encode() if isinstance(sha, str) else sha, str(len(keys)).encode(), *keys]

    def lean(i: int) -> Awaitable[Any]:
        return minimal.call(resp(*head, *argv(i)))

    results = []
    for name, call in (
        ("redis-py: pipeline, coalesced per loop turn (as the gateway)", coalesced),
        ("redis-py: one EVALSHA per await", one_at_a_time),
        ("minimal: RESP bytes + hiredis, coalesced per loop turn", lean),
    ):
        results.append(await measure(name, call, args.seconds, args.concurrency, redis_pid))
    await client.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--keys", type=int, default=4)
    parser.add_argument("--args", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d, EmbeddedRedis(Path(d)) as server:
        assert server.process is not None
        results = asyncio.run(run(args, server.url, server.process.pid))
    base = results[-1][2]
    print(
        f"{os.cpu_count()} cores; {args.concurrency} callers; EVALSHA with {args.keys} keys, {args.args} args"
    )
    print(f"{'client path':<62}{'calls/s':>9}{'client CPU µs':>15}{'vs minimal':>12}{'Redis CPU µs':>14}")
    for name, rate, cpu, redis_us in results:
        print(f"{name:<62}{rate:>9.0f}{cpu:>15.1f}{cpu / base:>12.2f}{redis_us:>14.1f}")


if __name__ == "__main__":
    main()
