"""Wiring: Redis client, store, static cache, service, servicers, the gRPC server with health and
reflection, and the background tasks (static data follower, person-change listener, health monitor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import grpc
import redis.asyncio as aioredis
import redis.exceptions
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from adapters.ledger.store import Ledger
from adapters.redis_keys import PERSON_CHANNEL, IndexKeys
from adapters.redis_store import RedisStore
from adapters.settlement_store import StoreRefused
from gateway.config import Config
from gateway.correction_service import CorrectionService
from gateway.edge.identity import IdentityReader, Revocations
from gateway.edge.limits import grpc_options
from gateway.edge.tls import ReloadingServerCredentials
from gateway.ledger_service import LedgerService
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

log = logging.getLogger(__name__)
SERVICE_NAMES = (
    "medsettle.v1.SettlementService",
    "medsettle.v1.LedgerService",
    "medsettle.v1.DiagnosticsService",
)


def redis_client(url: str, config: Config) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        socket_timeout=config.redis_timeout_ms / 1000,
        socket_connect_timeout=config.redis_connect_timeout_ms / 1000,
        health_check_interval=10,
        max_connections=256,
    )


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

    async def start(self) -> Gateway:
        client = redis_client(self.redis_url, self.config)
        if not self.config.index_key:
            raise ValueError("Config.index_key is required: card and ID numbers are keyed hashes in Redis")
        store = RedisStore(client, IndexKeys(self.config.index_key))
        static = StaticCache(client)
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
        ctx = Context(store, static, now, ServiceLimits(self.config.commit_retries_max))
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
        self.tasks = [
            asyncio.create_task(static.follow(self.stopping)),
            asyncio.create_task(self.follow_people(store)),
            asyncio.create_task(self.monitor(client, static)),
        ]
        await self.check(client, static)
        return self

    async def check(self, client: aioredis.Redis, static: StaticCache) -> None:
        """SERVING only when Redis answers, this process's index key is the deployment's, and policy,
        catalog and institution data are loaded."""
        try:
            if not self.index_verified and self.store is not None:
                await self.store.verify_index()  # a StoreRefused here stays NOT_SERVING, and says why
                self.index_verified = True
            ok = bool(await client.ping()) and static.snapshot.ready
        except Exception as exc:
            if isinstance(exc, StoreRefused):
                log.error("%s", exc)
            ok = False
        self.healthy = ok
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

    async def stop(self) -> None:
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace_ms / 1000)
        self.stopping.set()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=3)
        if self.store is not None:
            await self.store.client.aclose()


__all__ = ["Gateway", "pb"]
