"""Which Redis the gateway and the worker talk to, from one URL:

    redis://[user:password@]host:port/0                  one node (what the embedded default runs)
    rediss://...                                         the same over TLS
    redis+cluster://[user:password@]host:port,host:port  Redis Cluster: any reachable nodes to start from;
                                                         redis-py's cluster client routes every command,
                                                         script and pipeline by slot
    redis+sentinel://[user:password@]host:port,host:port/mastername
                                                         Sentinel: the sentinels to ask; every connection
                                                         goes to the master they name, and a failover is
                                                         followed on the next connection

The credentials are the data nodes' (and, for Sentinel, the sentinels' too: one ACL user on every
process of a deployment, as `medsettle dev-cluster` sets it up). The parsing is pure; the factories only
build clients (they connect lazily)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

SINGLE, CLUSTER, SENTINEL = "single", "cluster", "sentinel"
CLUSTER_SCHEME, SENTINEL_SCHEME = "redis+cluster", "redis+sentinel"


class TopologyError(ValueError):
    """A --redis URL that names no usable deployment; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class Topology:
    kind: str
    url: str  # the plain URL for SINGLE; the original for the others
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""  # Sentinel: the monitored master's name
    username: str | None = None
    password: str | None = None

    @property
    def public(self) -> str:
        """Safe to print: no credentials."""
        if self.kind == SINGLE:
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        hosts = ",".join(f"{h}:{p}" for h, p in self.nodes)
        scheme = CLUSTER_SCHEME if self.kind == CLUSTER else SENTINEL_SCHEME
        return f"{scheme}://{hosts}" + (f"/{self.master}" if self.master else "")


def parse(url: str) -> Topology:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise TopologyError(f"--redis {url!r}: not a URL (redis://, redis+cluster:// or redis+sentinel://)")
    if scheme in ("redis", "rediss", "unix"):
        return Topology(SINGLE, url)
    if scheme not in (CLUSTER_SCHEME, SENTINEL_SCHEME):
        raise TopologyError(
            f"--redis: unknown scheme {scheme!r} (redis, rediss, redis+cluster, redis+sentinel)"
        )
    creds, at, hosts_path = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = creds.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    hosts, _, path = hosts_path.partition("/")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TopologyError(f"--redis {scheme}: {item!r} is not host:port")
        nodes.append((host, int(port)))
    master = path.strip("/")
    if scheme == SENTINEL_SCHEME and not master:
        raise TopologyError("--redis redis+sentinel://host:port,.../mastername: the master's name is missing")
    if scheme == CLUSTER_SCHEME and master and master != "0":
        raise TopologyError("--redis redis+cluster: a cluster has database 0 only")
    kind = CLUSTER if scheme == CLUSTER_SCHEME else SENTINEL
    return Topology(kind, url, tuple(nodes), master if kind == SENTINEL else "", username, password)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (AsyncRedisCluster, RedisCluster))


def _credentials(t: Topology) -> dict[str, Any]:
    return {"username": t.username, "password": t.password}


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """The asyncio client for `url`. Options are redis-py connection options (timeouts, retry, ...);
    for a cluster, `max_connections` is per node. Typed as aioredis.Redis: the cluster client offers the
    same commands the gateway uses (scripts, pipelines, pub/sub through sharded channels)."""
    t = parse(url)
    if t.kind == SINGLE:
        return aioredis.Redis.from_url(url, **options)
    if t.kind == CLUSTER:
        options.pop("health_check_interval", None)  # per node connections check themselves on error
        options.pop("connection_class", None)
        cluster: Any = AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in t.nodes], **_credentials(t), **options
        )
        return cluster  # type: ignore[no-any-return]
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = AsyncSentinel(list(t.nodes), sentinel_kwargs={**_credentials(t), **sentinel_options})  # type: ignore[no-untyped-call]
    return sentinel.master_for(t.master, **_credentials(t), **options)  # type: ignore[no-any-return]


def sync_client(url: str, **options: Any) -> redis.Redis:
    """The blocking client for `url` (the posting worker, the CLI's operations)."""
    t = parse(url)
    if t.kind == SINGLE:
        return redis.Redis.from_url(url, **options)
    if t.kind == CLUSTER:
        options.pop("health_check_interval", None)
        cluster: Any = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in t.nodes],  # type: ignore[no-untyped-call]
            **_credentials(t),
            **options,
        )
        return cluster  # type: ignore[no-any-return]
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel = Sentinel(list(t.nodes), sentinel_kwargs={**_credentials(t), **sentinel_options})  # type: ignore[no-untyped-call]
    return sentinel.master_for(t.master, **_credentials(t), **options)  # type: ignore[no-untyped-call, no-any-return]
