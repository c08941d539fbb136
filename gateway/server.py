"""Wiring: Redis client, store, static cache, service, servicers, the gRPC server with health and
reflection, and the background tasks (static data follower, person-change listener, health monitor).

The gateway refuses to start on a Redis that could lose committed money silently (an eviction policy
other than noeviction, no AOF in aof mode: gateway/ops/durability.py), and reports NOT_SERVING, with the
reason, while Redis does not answer, data is not loaded, or replica mode sees too few replicas."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import redis.asyncio as aioredis
import redis.exceptions
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from adapters.ledger.archive import LedgerArchive
from adapters.ledger.store import Ledger
from adapters.redis_keys import PERSON_CHANNEL, IndexKeys
from adapters.redis_store import RedisStore
from adapters.redis_topology import CLUSTER, SINGLE, async_client
from adapters.redis_topology import parse as parse_topology
from adapters.settlement_store import StoreRefused
from gateway import compiled_engine
from gateway.claim_service import ClaimService, ClaimServicer
from gateway.config import Config
from gateway.correction_service import CorrectionService
from gateway.edge.identity import IdentityReader, Revocations
from gateway.edge.limits import grpc_options
from gateway.edge.tls import ReloadingServerCredentials
from gateway.ledger_service import LedgerService
from gateway.ops.durability import Durability, RedisFacts, StartupRefused, read_facts
from gateway.protos import pb
from gateway.service import Context, ServiceLimits, SettlementService
from gateway.servicer import (
    Collector,
    DiagnosticsServicer,
    Edge,
    LedgerServicer,
    SettlementServicer,
    handlers,
    wrap_foreign,
)
from rules_cache.notices import follow_channel
from rules_cache.static_data import StaticCache
from telemetry import metrics as telemetry_metrics

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    "medsettle.v1.SettlementService",
    "medsettle.v1.LedgerService",
    "medsettle.v1.ClearingService",
    "medsettle.v1.ClaimService",
    "medsettle.v1.DiagnosticsService",
)


HEALTH_CHECK_INTERVAL_S = 1  # a pooled connection idle this long is PINGed before it carries a command
FACTS_EVERY_S = 5.0  # eviction policy, AOF, replicas: read again this often (INFO, a few hundred bytes)
HEALTH_STALE_S = 5.0  # a health verdict older than this (the event loop stuck) is itself unhealthy


class PoolEpoch:
    """Bumped whenever a connection of the pool is dropped (a reset, a timeout, a restart seen): every
    other pooled connection then PINGs before its next command, so a Redis restart costs the requests in
    flight at that moment and no later one. (health_check_interval alone misses connections used within
    the interval: under load, all of them.)"""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


# Only the liveness PING is retried (once, on a fresh connection): it is idempotent. Commands are never
# retried inside redis-py (its default since 6.x is 10 retries on ConnectionError and TimeoutError, for
# every command): a read would be safe to repeat, but the commit script shares the client and the
# pipelines. Were a commit resent after a lost reply, it would still write nothing twice, because
# commit.lua compares the person's version (bumped by the first) and requires every message record of the
# commit absent (written by the first), answering CONFLICT or EXISTS, after which the service reads the
# stored answer: that is why a terminal's resend with the same message id is safe. The gateway relies on
# the terminal's resend, not on a blind retry, and a failure reaches the terminal as "outcome unknown".
PING_RETRY = Retry(NoBackoff(), 1)
NO_RETRY = Retry(NoBackoff(), 0)


def checked(base: type[Any], epoch: PoolEpoch) -> type[Any]:
    """A connection class (plain, TLS or unix, as the URL says) that PINGs before use when it has been
    idle for HEALTH_CHECK_INTERVAL_S or another connection of its pool has been dropped since."""

    class CheckedConnection(base):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.verified = epoch.value

        async def check_health(self) -> None:
            if self.verified != epoch.value or (
                self.health_check_interval and asyncio.get_running_loop().time() > self.next_health_check
            ):
                await PING_RETRY.call_with_retry(self._send_ping, self._ping_failed, with_failure_count=True)
                self.verified = epoch.value

        async def disconnect(self, *args: Any, **kwargs: Any) -> None:
            if self.is_connected:
                epoch.value += 1
            await super().disconnect(*args, **kwargs)

    CheckedConnection.__name__ = f"Checked{base.__name__}"
    return CheckedConnection


CLUSTER_RETRY = Retry(ExponentialBackoff(cap=0.25, base=0.05), 2)


def redis_client(url: str, config: Config) -> aioredis.Redis:
    """One node: a pool whose connections check themselves (CheckedConnection). Cluster and Sentinel
    (adapters/redis_topology.py): redis-py's own clients, which follow a failover. The cluster client
    retries a command twice, after re-reading the slot map, when its node fails: what lets a Settle
    started just before a failover finish on the new master. That is safe for the commit too (see
    PING_RETRY's comment: a resent commit writes nothing twice)."""
    topology = parse_topology(url)
    if topology.kind != SINGLE:
        return async_client(
            url,
            socket_timeout=config.redis_timeout_ms / 1000,
            socket_connect_timeout=config.redis_connect_timeout_ms / 1000,
            socket_keepalive=True,
            max_connections=256,
            retry=CLUSTER_RETRY if topology.kind == CLUSTER else NO_RETRY,
        )
    pool = aioredis.ConnectionPool.from_url(
        url,
        socket_timeout=config.redis_timeout_ms / 1000,
        socket_connect_timeout=config.redis_connect_timeout_ms / 1000,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        max_connections=256,
        retry=NO_RETRY,
    )
    pool.connection_class = checked(pool.connection_class, PoolEpoch())
    return aioredis.Redis.from_pool(pool)


@dataclass
class HealthState:
    """The gateway's last verdict, for gRPC health, /healthz and the supervisor."""

    serving: bool = False
    reason: str = "starting"
    checked_at: float = field(default_factory=time.monotonic)
    facts: RedisFacts | None = None

    def report(self, durability: Durability) -> tuple[bool, str]:
        age = time.monotonic() - self.checked_at
        if age > HEALTH_STALE_S:
            return False, f"no health verdict for {age:.1f}s (event loop stuck?)"
        facts = self.facts
        seen = (
            f"; appendfsync {facts.appendfsync}, {facts.replicas_connected} replica(s) connected"
            if facts
            else ""
        )
        return self.serving, f"{self.reason}; durability {durability.describe()}{seen}"


@dataclass
class Gateway:
    config: Config
    redis_url: str
    server: grpc.aio.Server | None = None
    port: int = 0
    service: SettlementService | None = None
    corrections: CorrectionService | None = None
    store: RedisStore | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    health: health.aio.HealthServicer | None = None
    now: Callable[[], datetime] | None = None  # tests pin the clock; production uses config.timezone
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    ledger_service: LedgerService | None = None
    healthy: bool = False
    index_verified: bool = False
    edge: Edge | None = None
    credentials: ReloadingServerCredentials | None = None
    durability: Durability = field(default_factory=Durability)
    archive: LedgerArchive | None = None
    state: HealthState = field(default_factory=HealthState)
    nhsa: Any = None  # gateway.nhsa.app.NationalFrontend when config.nhsa_listen is set
    _facts_at: float = 0.0

    async def start(self) -> Gateway:
        telemetry_metrics.ENGINE_INFO.labels(compiled_engine.kind()).set(
            1
        )  # an operator sees a stale build fall back
        client = redis_client(self.redis_url, self.config)
        if not self.config.index_key:
            raise ValueError("Config.index_key is required: card and ID numbers are keyed hashes in Redis")
        d = self.durability
        store = RedisStore(
            client,
            IndexKeys(self.config.index_key),
            wait_replicas=d.wait_replicas,
            wait_timeout_ms=d.wait_timeout_ms,
            idempotency_retention_days=self.config.idempotency_retention_days,
        )
        static = StaticCache(client)
        try:
            await self.refresh_facts(client, refuse=True)
        except StartupRefused:
            await client.aclose()
            raise
        except Exception:  # Redis may be down at start: health says NOT_SERVING, checked again later
            pass
        try:  # Redis may be down at start: health says NOT_SERVING until it answers
            await store.verify_index()  # a wrong key is fatal: this process would find no card
            await static.refresh()
            await store.preload_scripts()
            self.index_verified = True
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            pass
        zone = ZoneInfo(self.config.timezone)
        now = self.now or (lambda: datetime.now(zone))
        self.store = store
        self.archive = LedgerArchive(self.config.ledger_dsn) if self.config.ledger_dsn else None
        ctx = Context(
            store,
            static,
            now,
            ServiceLimits(self.config.commit_retries_max),
            self.archive,
            self.config.settlement_retention_plan_years,
        )
        self.service = SettlementService(ctx)
        self.corrections = CorrectionService(ctx)
        limits = self.config.limits
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.config.request_bytes_max),
                ("grpc.so_reuseport", 1),
                *grpc_options(limits),
            ],
            # grpc's own cap, above the edge's (which answers with RetryInfo and counts): it bounds what
            # the edge cannot see, such as long health Watch streams
            maximum_concurrent_rpcs=limits.process_calls_in_flight_max * 2,
        )
        tls = self.config.tls
        identities = None
        if tls is not None:
            self.credentials = ReloadingServerCredentials(tls)
            identities = IdentityReader(
                Revocations(tls.crl, tls.client_ca, tls.reload_check_interval_ms / 1000)
            )
        self.edge = Edge(limits, identities)
        ledger = Ledger(self.config.ledger_dsn) if self.config.ledger_dsn else None
        self.ledger_service = LedgerService(ledger, client, now, limits)
        self.server.add_generic_rpc_handlers(
            handlers(
                self.edge,
                SettlementServicer(self.service, self.corrections),
                LedgerServicer(self.ledger_service),
                DiagnosticsServicer(),
                ClaimServicer(ClaimService(ctx), self.corrections),
            )
        )
        self.health = health.aio.HealthServicer()
        foreign = Collector()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, foreign)
        names = (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), foreign
        )
        self.server.add_generic_rpc_handlers(
            [wrap_foreign(self.edge, n, m) for n, m in foreign.services.items()]
        )
        if self.credentials is not None:
            self.port = self.server.add_secure_port(self.config.listen, self.credentials.credentials())
        else:
            log.warning(
                "gRPC on %s is PLAINTEXT (--insecure): no TLS, no client certificate; anyone who reaches the"
                " port can act for any institution it names",
                self.config.listen,
            )
            self.port = self.server.add_insecure_port(self.config.listen)
        await self.server.start()
        if self.config.nhsa_listen is not None:
            from gateway.nhsa.wiring import start_frontend  # aiohttp only where the national port is on

            self.nhsa = await start_frontend(self)
        self.tasks = [
            asyncio.create_task(static.follow(self.stopping)),
            asyncio.create_task(self.follow_people(store)),
            asyncio.create_task(self.monitor(client, static)),
        ]
        await self.check(client, static)
        return self

    async def refresh_facts(self, client: aioredis.Redis, refuse: bool = False) -> RedisFacts:
        """What Redis says about eviction, AOF and replicas; with `refuse`, StartupRefused on a Redis that
        could lose committed money."""
        facts = await read_facts(client)
        self.state.facts = facts
        self._facts_at = time.monotonic()
        problems = facts.problems(self.durability)
        if problems and refuse:
            raise StartupRefused("; ".join(problems))
        return facts

    async def check(self, client: aioredis.Redis, static: StaticCache) -> None:
        """SERVING only when Redis answers (and is fit to hold money: noeviction, AOF or enough replicas),
        this process's index key is the deployment's, and policy, catalog and institution data are
        loaded."""
        reason = "serving"
        try:
            await client.ping()
            if not self.index_verified and self.store is not None:
                await self.store.verify_index()  # refused: NOT_SERVING, and the reason says why
                self.index_verified = True
            facts = self.state.facts
            # Read once (at start, or when Redis first answers), and again every FACTS_EVERY_S only in
            # replica mode, where the replicas connected decide whether a commit can be acknowledged: a
            # Settle stays two Redis commands (the supervisor re-checks eviction and AOF at each scrape).
            stale = time.monotonic() - self._facts_at >= FACTS_EVERY_S
            if facts is None or (stale and self.durability.mode == "replica"):
                facts = await self.refresh_facts(client)
            problems = [*facts.problems(self.durability), facts.degraded(self.durability)]
            reason = "; ".join(p for p in problems if p) or reason
            if reason == "serving" and not static.snapshot.ready:
                reason = "policy, catalog or institution data not loaded"
        except StoreRefused as exc:
            reason = str(exc)
            log.error("%s", exc)
        except Exception as exc:
            reason = f"redis unreachable: {type(exc).__name__}: {exc}"[:300]
        if self.stopping.is_set():
            reason = "shutting down"
        ok = reason == "serving"
        self.healthy = ok
        self.state.serving, self.state.reason, self.state.checked_at = ok, reason, time.monotonic()
        status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
        assert self.health is not None
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def monitor(self, client: aioredis.Redis, static: StaticCache) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(self.config.health_interval_ms / 1000)
            if not static.snapshot.ready:
                with contextlib.suppress(Exception):
                    await static.refresh()
            await self.check(client, static)

    async def follow_people(self, store: RedisStore) -> None:
        """Evict cached card lookups when the core system changes a person (a card reassigned)."""

        async def changed(data: bytes | None) -> None:
            if data is not None:
                store.forget_cards(json.loads(data))

        await follow_channel(store.client, PERSON_CHANNEL, changed, self.stopping)

    def report(self) -> tuple[bool, str]:
        """/healthz of this gateway process: its last health verdict, with the durability in force."""
        return self.state.report(self.durability)

    async def stop(self) -> None:
        self.state.serving, self.state.reason = False, "shutting down"
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.nhsa is not None:
            await self.nhsa.stop()
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace_ms / 1000)
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=3)
        if self.store is not None:
            await self.store.client.aclose()
        if self.archive is not None:
            self.archive.close()


__all__ = ["Gateway", "pb"]
