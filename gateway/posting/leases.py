"""Partition leases: several posting workers share the 256 partition streams, each partition read by one
worker at a time, and a dead worker's partitions taken over once its leases expire.

    ms:{posting}:workers     sorted set: live worker ids, scored by when their membership expires (ms)
    ms:{p017}:lease          string: the worker that owns partition 17, expiring after lease_ttl_ms
                             unless renewed (in the partition's slot, beside its stream)

Every `renew_every_ms` a worker renews its membership, reads who is alive, and computes which partitions
are its own by rendezvous hashing (each partition goes to the live worker with the highest hash of
(worker, partition)): every worker computes the same split from the same membership, and a worker joining
or leaving moves only its share, about 256/n partitions. It then releases the partitions that are no
longer its own and takes (or renews) those that are; a partition still leased by another worker (which
has not yet seen the new membership, or has died) is taken once that lease is released or expires.

The posting group's consumer name is the partition's (`p017`), not the worker's: whoever holds the lease
reads the partition's pending entries as its own, so what a dead or departing worker left unacknowledged
is booked by the next owner at once, without waiting for an idle claim. A lease is not a fence: a worker
paused past its lease may still book a batch the new owner books too; the ledger's primary key
(settlement id, kind) makes the second booking a no-op, so every settlement is still booked once."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from adapters import redis_keys as keys

WORKERS = "ms:{posting}:workers"
LEASE_TTL_MS = 10_000  # a dead worker's partitions wait at most this long for a new owner
RENEW_EVERY_MS = 2_000  # well within the TTL: a renewal may fail twice before the lease is lost
# KEYS: the lease. ARGV: worker id, ttl ms. Takes a free lease or renews our own; 1 if ours after.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# KEYS: the lease. ARGV: worker id. Released only while it is ours.
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def lease_key(partition: int) -> str:
    return f"{keys.tag(partition)}:lease"


def consumer_of(partition: int) -> str:
    return f"p{partition:03d}"


def score(worker: str, partition: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{worker}|{partition}".encode(), digest_size=8).digest(), "big")


def owner(workers: Iterable[str], partition: int) -> str | None:
    """The live worker that partition belongs to (rendezvous hashing); None without workers."""
    return max(workers, key=lambda w: score(w, partition), default=None)


def share(workers: Iterable[str], me: str, partitions: Iterable[int]) -> set[int]:
    members = sorted(set(workers) | {me})
    return {p for p in partitions if owner(members, p) == me}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class LeaseChange:
    owned: set[int]
    taken: set[int]  # newly ours: read their pending entries first
    released: set[int]
    waiting: set[int]  # ours by the split, still leased by another worker


class Leases:
    def __init__(
        self,
        client: redis.Redis,
        worker: str,
        partitions: Iterable[int] = range(keys.PARTITIONS),
        ttl_ms: int = LEASE_TTL_MS,
    ) -> None:
        self.client, self.worker, self.ttl_ms = client, worker, ttl_ms
        self.partitions = list(partitions)
        self.owned: set[int] = set()
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)

    def members(self) -> list[str]:
        now = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(WORKERS, {self.worker: now + self.ttl_ms})
        pipe.zremrangebyscore(WORKERS, "-inf", now)
        pipe.zrange(WORKERS, 0, -1)
        return [text(m) for m in pipe.execute()[-1]]

    def renew(self, reloaded: bool = False) -> LeaseChange:
        """One heartbeat: membership, the split, then release and take in one pipeline per node."""
        wanted = share(self.members(), self.worker, self.partitions)
        gone = sorted(self.owned - wanted)
        ask = sorted(wanted)
        pipe = self.client.pipeline(transaction=False)
        for p in gone:
            pipe.execute_command("EVALSHA", self._release.sha, 1, lease_key(p), self.worker)  # type: ignore[no-untyped-call]
        for p in ask:
            pipe.execute_command("EVALSHA", self._acquire.sha, 1, lease_key(p), self.worker, self.ttl_ms)  # type: ignore[no-untyped-call]
        replies = pipe.execute(raise_on_error=False) if gone or ask else []
        unloaded = any(isinstance(r, redis.exceptions.NoScriptError) for r in replies)
        if unloaded and not reloaded:  # a fresh or restarted Redis
            self.client.script_load(ACQUIRE)
            self.client.script_load(RELEASE)
            return self.renew(reloaded=True)
        for r in replies:
            if isinstance(r, Exception):
                raise r
        got = {p for p, r in zip(ask, replies[len(gone) :], strict=True) if int(r) == 1}
        change = LeaseChange(got, got - self.owned, set(gone), wanted - got)
        self.owned = got
        return change

    def leave(self) -> None:
        """A clean stop: the partitions go to the others at their next renewal, not after the TTL."""
        pipe = self.client.pipeline(transaction=False)
        for p in sorted(self.owned):
            pipe.execute_command("EVALSHA", self._release.sha, 1, lease_key(p), self.worker)  # type: ignore[no-untyped-call]
        pipe.zrem(WORKERS, self.worker)
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            for p in sorted(self.owned):
                self._release(keys=[lease_key(p)], args=[self.worker])
        self.owned = set()

    def holders(self) -> dict[int, str]:
        """Who holds each partition's lease now (status and tests)."""
        pipe = self.client.pipeline(transaction=False)
        for p in self.partitions:
            pipe.get(lease_key(p))
        return {p: text(v) for p, v in zip(self.partitions, pipe.execute(), strict=True) if v is not None}
