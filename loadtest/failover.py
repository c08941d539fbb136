"""Failover campaign: steady Settle load from retrying terminals while a Redis master is killed (SIGKILL)
and its replica takes over, then an audit of what was acknowledged.

Each terminal sends Settles one after another, each with a fresh message id; a failed call (UNAVAILABLE,
outcome unknown) is resent with the same message id and payload until it is answered, as an HIS
terminal does. Afterwards:
    acknowledged  Settles a terminal got a settlement id for
    lost          acknowledged, and the settlement is not in Redis after the takeover
    doubled       message ids with more than one settlement (a resend that settled again)
    unknown       calls the terminal had to resend (each one an outcome-unknown answer)
    takeover_s    from the kill until the slot's new master accepted writes
and the auditor (gateway/audit.py) checks every person's balance and plan-year against the settlements.

With `--durability replica` (WAIT for one replica before acknowledging) nothing acknowledged can be lost:
the replica that takes over had it. Without it (aof), a commit acknowledged by the master and not yet
replicated when it died is lost: the window is the replication lag.

    python -m loadtest.failover --deployment cluster --durability replica --seconds 20 --kills 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adapters.embedded_cluster import EmbeddedCluster, EmbeddedSentinel, cut_replicas, pause, resume
from adapters.redis_keys import partition_of, stream_key
from gateway.audit import audit_redis
from gateway.codec import Envelope, PersonRef
from gateway.engine.model import Bill, BillLine, VisitType
from gateway.ops.durability import Durability
from gateway.server import Gateway
from loadtest.synthetic import OUTPATIENT_10_LINES, persons

BILL = Bill(
    VisitType.OUTPATIENT, tuple(BillLine(c, p, q, i + 1) for i, (c, p, q) in enumerate(OUTPATIENT_10_LINES))
)
HOSPITAL = "H50010300001"
INDEX_KEY = b"medsettle failover campaign index key"  # a throwaway deployment's
PERSONS = 400
RESEND_AFTER_S = 0.05  # a terminal waits this long before resending an unanswered Settle
RESEND_FOR_S = 60.0  # and gives up after this long (counted as unanswered: never in a passing run)


@dataclass
class Report:
    deployment: str
    durability: str
    kills: int = 0
    attempts: int = 0
    acknowledged: int = 0
    lost: int = 0
    doubled: int = 0
    unknown: int = 0  # resends: calls answered with an error (outcome unknown) and sent again
    unanswered: int = 0  # gave up after RESEND_FOR_S
    takeover_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    audit_differences: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        takeover = ", ".join(f"{t:.1f}" for t in self.takeover_s)
        return (
            f"{self.deployment:8s} {self.durability:8s} kills {self.kills}"
            f"  acknowledged {self.acknowledged}  lost {self.lost}  doubled {self.doubled}"
            f"  resends {self.unknown}  unanswered {self.unanswered}"
            f"  takeover s [{takeover}]  audit differences {self.audit_differences}"
        )


class Terminals:
    def __init__(self, gw: Gateway, count: int) -> None:
        self.gw, self.count = gw, count
        self.acked: dict[str, str] = {}  # message id -> settlement id
        self.stop = asyncio.Event()
        self.errors: Counter[str] = Counter()
        self.attempts = self.resends = self.unanswered = 0
        self.sequence = 0

    async def settle_until_answered(self, n: int) -> None:
        assert self.gw.service is not None
        msgid = f"{HOSPITAL}F{n:012d}"
        env = Envelope(HOSPITAL, f"T{n % self.count}", "op", msgid)
        card = f"L{n % PERSONS:08d}"
        started = time.monotonic()
        while True:
            self.attempts += 1
            try:
                settled = await self.gw.service.settle(env, PersonRef(card, None), BILL, f"failover-{n}")
                self.acked[msgid] = settled.settlement_id
                return
            except Exception as exc:  # outcome unknown: resend the same message id, as a terminal does
                self.errors[type(exc).__name__] += 1
                self.resends += 1
                if time.monotonic() - started > RESEND_FOR_S:
                    self.unanswered += 1
                    return
                await asyncio.sleep(RESEND_AFTER_S)

    async def terminal(self) -> None:
        while not self.stop.is_set():
            self.sequence += 1
            await self.settle_until_answered(self.sequence)

    async def run(self, during: Callable[[], Awaitable[None]]) -> None:
        tasks = [asyncio.create_task(self.terminal()) for _ in range(self.count)]
        try:
            await during()
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


async def add_persons(gw: Gateway) -> None:
    assert gw.store is not None
    for record in persons(PERSONS):
        await gw.store.put_person(record)


async def audit(gw: Gateway, terminals: Terminals, url: str, report: Report) -> None:
    assert gw.store is not None
    found = await gw.store.settlements(list(terminals.acked.values()))
    report.lost = sum(1 for s in found if s is None)
    by_message = Counter(s.message_id for s in await gw.store.every_settlement())
    report.doubled = sum(1 for count in by_message.values() if count > 1)
    report.acknowledged = len(terminals.acked)
    report.attempts, report.unknown, report.unanswered = (
        terminals.attempts,
        terminals.resends,
        terminals.unanswered,
    )
    report.errors = dict(terminals.errors)
    report.audit_differences = len((await audit_redis(url, None)).differences)


async def cluster_campaign(
    cluster: EmbeddedCluster,
    durability: Durability,
    seconds: float = 4.0,
    kills: int = 1,
    terminals: int = 8,
    start_gateway: Callable[[str, Durability], Awaitable[Gateway]] | None = None,
    replica_lag_s: float = 0.0,
) -> Report:
    """Kills the master of a busy slot `kills` times (restarting the killed node, which rejoins as a
    replica, before the next kill), under load, spread over `seconds`. With `replica_lag_s`, the replica
    that will take over is paused (SIGSTOP) that long before the kill and resumed just after it: a replica
    behind its master, the case where acknowledging before replication loses money. The master also drops
    the replica's link when the pause starts, so what it writes during the lag is not even queued in the
    paused replica's socket buffer (which would otherwise hand it over on resume)."""
    url = cluster.url_for("admin")
    gw = await (start_gateway or default_gateway)(url, durability)
    report = Report("cluster", durability.mode)
    started = time.monotonic()
    try:
        await add_persons(gw)
        load = Terminals(gw, terminals)

        async def kill_masters() -> None:
            interval = seconds / (kills + 1)
            for _ in range(kills):
                await asyncio.sleep(interval)
                key = stream_key(partition_of("PSN500000000000"))
                victim = await asyncio.to_thread(cluster.node_serving, key)
                heir = await asyncio.to_thread(cluster.replica_of, victim)
                if replica_lag_s:
                    pause(heir)
                    await asyncio.to_thread(cut_replicas, victim)
                    await asyncio.sleep(replica_lag_s)
                t0 = time.monotonic()
                await asyncio.to_thread(cluster.kill, victim)
                resume(heir)
                await asyncio.to_thread(cluster.wait_takeover, key, victim)
                report.takeover_s.append(time.monotonic() - t0)
                report.kills += 1
                await asyncio.to_thread(victim.start)  # back as the new master's replica
                await asyncio.to_thread(cluster.wait_replicas)
            await asyncio.sleep(interval)

        await load.run(kill_masters)
        await audit(gw, load, url, report)
    finally:
        await gw.stop()
    report.seconds = time.monotonic() - started
    return report


async def sentinel_campaign(
    deployment: EmbeddedSentinel,
    durability: Durability,
    seconds: float = 4.0,
    terminals: int = 8,
    start_gateway: Callable[[str, Durability], Awaitable[Gateway]] | None = None,
    replica_lag_s: float = 0.0,
) -> Report:
    """One kill of the master, halfway through; `replica_lag_s` as for cluster_campaign."""
    url = deployment.url_for("admin")
    gw = await (start_gateway or default_gateway)(url, durability)
    report = Report("sentinel", durability.mode)
    started = time.monotonic()
    try:
        await add_persons(gw)
        load = Terminals(gw, terminals)

        async def kill_master() -> None:
            await asyncio.sleep(seconds / 2)
            heir = deployment.replicas[0]  # the one replica: the master is the first one started
            if replica_lag_s:
                pause(heir)
                await asyncio.to_thread(cut_replicas, deployment.master)
                await asyncio.sleep(replica_lag_s)
            t0 = time.monotonic()
            victim = await asyncio.to_thread(deployment.kill_master)
            resume(heir)
            await asyncio.to_thread(deployment.wait_takeover, victim)
            report.takeover_s.append(time.monotonic() - t0)
            report.kills += 1
            # Sentinel makes it the new master's replica in its own time; nothing here waits for that
            # (one kill: the load and the audit go through Sentinel to the new master, and on a loaded
            # machine the rejoin took over 30 s, longer than the campaign)
            await asyncio.to_thread(victim.start)
            await asyncio.sleep(seconds / 2)

        await load.run(kill_master)
        await audit(gw, load, url, report)
    finally:
        await gw.stop()
    report.seconds = time.monotonic() - started
    return report


async def default_gateway(url: str, durability: Durability) -> Gateway:
    from adapters.redis_keys import IndexKeys
    from gateway.config import Config
    from gateway.data_loading import load_citydata_dir
    from gateway.server import redis_client

    config = Config(
        listen="127.0.0.1:0", redis_url=url, health_interval_ms=200, tls=None, index_key=INDEX_KEY
    )
    client = redis_client(url, config)
    await load_citydata_dir(client, config.citydata, index=IndexKeys(INDEX_KEY))
    await client.aclose()
    gw = Gateway(config, url)
    gw.durability = durability
    return await gw.start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.failover", description=__doc__.split("\n")[0])
    parser.add_argument("--deployment", choices=("cluster", "sentinel"), default="cluster")
    parser.add_argument("--durability", choices=("aof", "replica", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kills", type=int, default=3, help="cluster: masters killed one after another")
    parser.add_argument("--terminals", type=int, default=16)
    parser.add_argument(
        "--replica-lag-s", type=float, default=0.0, help="pause the heir replica this long before each kill"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    modes = ("aof", "replica") if args.durability == "both" else (args.durability,)
    reports = []
    for mode in modes:
        durability = Durability(mode) if mode == "replica" else Durability()
        with tempfile.TemporaryDirectory(prefix="medsettle-failover-") as tmp:
            if args.deployment == "cluster":
                with EmbeddedCluster(Path(tmp)) as cluster:
                    report = asyncio.run(
                        cluster_campaign(
                            cluster,
                            durability,
                            args.seconds,
                            args.kills,
                            args.terminals,
                            replica_lag_s=args.replica_lag_s,
                        )
                    )
            else:
                with EmbeddedSentinel(Path(tmp)) as deployment:
                    report = asyncio.run(
                        sentinel_campaign(
                            deployment,
                            durability,
                            args.seconds,
                            args.terminals,
                            replica_lag_s=args.replica_lag_s,
                        )
                    )
        reports.append(report)
        print(json.dumps(asdict(report)) if args.json else report.line(), flush=True)
    failed = any(r.audit_differences or r.doubled or r.unanswered for r in reports) or any(
        r.lost for r in reports if r.durability == "replica"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
