"""Durability you choose and see. Redis is the only copy of balances, accumulators and settlements until
the worker books them, so the gateway says how a commit is made durable and refuses what would lose
data silently:

    aof      (default) the commit is acknowledged once the primary has it; the primary's AOF should
             fsync every write (`appendfsync always`: the embedded redis-server and docker-compose do)
    replica  the commit is acknowledged only after WAIT confirms `replicas` replicas have it within
             `wait_timeout_ms`; otherwise the terminal gets UNAVAILABLE "outcome unknown" (the commit stands
             on the primary; a resend with the same message id finds it), counted in
             medsettle_replica_wait_failures_total

Whatever the mode, a Redis whose maxmemory-policy is not `noeviction` may evict a balance or a
settlement under memory pressure: the gateway refuses to start on one (and reports NOT_SERVING if the
policy changes while it runs)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

MODES = ("aof", "replica")
NOEVICTION = "noeviction"
WAIT_TIMEOUT_MS = 500  # within the 1 s Redis socket timeout, far below the 5 s request bound


@dataclass(frozen=True, slots=True)
class Durability:
    mode: str = "aof"
    replicas: int = 1  # replica mode: replicas that must confirm every commit
    wait_timeout_ms: int = WAIT_TIMEOUT_MS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"durability mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.mode == "replica" and (self.replicas < 1 or self.wait_timeout_ms < 1):
            raise ValueError("replica mode needs at least one replica and a positive wait timeout")

    @property
    def wait_replicas(self) -> int:
        """What RedisStore.commit passes to WAIT: 0 (no WAIT) in aof mode."""
        return self.replicas if self.mode == "replica" else 0

    def describe(self) -> str:
        if self.mode == "replica":
            return (
                f"replica (each commit confirmed by {self.replicas} replica(s) within"
                f" {self.wait_timeout_ms} ms)"
            )
        return "aof (the primary's append-only file)"


class StartupRefused(Exception):
    """Redis is set up in a way that would lose committed money silently: the gateway does not start."""


@dataclass(frozen=True, slots=True)
class RedisFacts:
    maxmemory_policy: str
    aof_enabled: bool
    appendfsync: str  # "unknown" when the user may not run CONFIG GET (the gateway's ACL user)
    replicas_connected: int
    role: str
    version: str = "unknown"  # redis_version; of a cluster, its oldest master's
    cluster: bool = False

    def problems(self, durability: Durability) -> list[str]:
        """What makes this Redis unfit to serve with `durability`, in words an operator acts on."""
        found = []
        if self.maxmemory_policy != NOEVICTION:
            found.append(
                f"Redis maxmemory-policy is {self.maxmemory_policy}: under memory pressure it may evict"
                " balances, settlements and posting events; set `maxmemory-policy noeviction`"
                " (docs/OPERATIONS.md, Durability)"
            )
        if self.role != "master":
            found.append(f"Redis is a {self.role}, not the primary: point the gateway at the primary")
        if self.cluster and version_tuple(self.version) < CLUSTER_VERSION_MIN:
            found.append(
                f"a master of the Redis Cluster runs Redis {self.version}: a cluster needs Redis 7 or later"
                " (the static data's change notices go over sharded pub/sub, SSUBSCRIBE); upgrade it"
            )
        if durability.mode == "aof" and not self.aof_enabled:
            found.append(
                "Redis has no append-only file (appendonly no) and --durability aof relies on it: enable"
                " `appendonly yes` with `appendfsync always`, or run --durability replica"
            )
        return found

    def degraded(self, durability: Durability) -> str:
        """Why commits cannot be acknowledged now although Redis answers (health NOT_SERVING), or ''."""
        if durability.mode == "replica" and self.replicas_connected < durability.replicas:
            return (
                f"replica mode needs {durability.replicas} replica(s), {self.replicas_connected} connected:"
                " every commit would be answered UNAVAILABLE"
            )
        return ""


def info_fields(raw: Any) -> dict[str, str]:
    """INFO's reply as redis-py parses it (a dict), or raw text."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    out = {}
    for line in (raw.decode() if isinstance(raw, bytes) else str(raw)).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


CLUSTER_VERSION_MIN = (7, 0, 0)


def version_tuple(version: str) -> tuple[int, ...]:
    """'7.0.15' -> (7, 0, 15); what does not parse sorts first (refused on a cluster: unknown)."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def facts_of(
    memory: Any,
    persistence: Any,
    replication: Any,
    appendfsync: str,
    server: Any = None,
    cluster: bool = False,
) -> RedisFacts:
    mem, per, rep = info_fields(memory), info_fields(persistence), info_fields(replication)
    return RedisFacts(
        maxmemory_policy=mem.get("maxmemory_policy", "unknown"),
        aof_enabled=per.get("aof_enabled", "0") == "1",
        appendfsync=appendfsync,
        replicas_connected=int(rep.get("connected_slaves", "0")),
        role=rep.get("role", "unknown"),
        version=info_fields(server or {}).get("redis_version", "unknown"),
        cluster=cluster,
    )


def appendfsync_of(reply: Any) -> str:
    if isinstance(reply, dict):
        value = reply.get("appendfsync") or reply.get(b"appendfsync")
        if value is not None:
            return value.decode() if isinstance(value, bytes) else str(value)
    return "unknown"


def combined(per_node: list[RedisFacts]) -> RedisFacts:
    """A cluster is as fit as its least fit master: any eviction policy but noeviction, any master
    without AOF, the fewest replicas any master has (replica mode WAITs on each commit's own master)."""
    policies = [f.maxmemory_policy for f in per_node]
    roles = {f.role for f in per_node}
    return RedisFacts(
        maxmemory_policy=next((p for p in policies if p != NOEVICTION), NOEVICTION),
        aof_enabled=all(f.aof_enabled for f in per_node),
        appendfsync=",".join(sorted({f.appendfsync for f in per_node})),
        replicas_connected=min(f.replicas_connected for f in per_node),
        role=roles.pop() if len(roles) == 1 else "mixed",
        version=min((f.version for f in per_node), key=version_tuple),
        cluster=True,
    )


async def read_facts(client: Any) -> RedisFacts:
    """From a redis.asyncio client. INFO is allowed to the serving ACL users; CONFIG GET only to admin.
    On a cluster: every master's, combined."""
    from redis.asyncio.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        await client.initialize()
        found = []
        for node in client.get_primaries():
            memory, persistence, replication, server = [
                await client.info(s, target_nodes=node)
                for s in ("memory", "persistence", "replication", "server")
            ]
            found.append(facts_of(memory, persistence, replication, "unknown", server, cluster=True))
        return combined(found)
    memory = await client.info("memory")
    persistence = await client.info("persistence")
    replication = await client.info("replication")
    appendfsync = "unknown"
    with contextlib.suppress(Exception):  # NOPERM for the gateway's user: fine, it is only shown
        appendfsync = appendfsync_of(await client.config_get("appendfsync"))
    return facts_of(memory, persistence, replication, appendfsync)


def read_facts_sync(client: Any) -> RedisFacts:
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):  # every master's, combined (as read_facts)
        found = []
        for node in client.get_primaries():  # type: ignore[no-untyped-call]
            memory, persistence, replication, server = (
                client.info(s, target_nodes=node) for s in ("memory", "persistence", "replication", "server")
            )
            found.append(facts_of(memory, persistence, replication, "unknown", server, cluster=True))
        return combined(found)
    appendfsync = "unknown"
    with contextlib.suppress(Exception):
        appendfsync = appendfsync_of(client.config_get("appendfsync"))
    return facts_of(
        client.info("memory"), client.info("persistence"), client.info("replication"), appendfsync
    )
