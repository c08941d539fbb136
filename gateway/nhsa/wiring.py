"""The national front end inside a gateway process: over the process's own servicer objects, Redis
client, edge limiter and client-certificate reader (so the HTTP and gRPC paths share every rule, limit
and identity), on the national listen address."""

from __future__ import annotations

from typing import Any

from adapters.nhsa_store import NhsaStore
from gateway.nhsa.app import NationalFrontend, server_ssl
from gateway.nhsa.signing import KeyFile, Signatures
from gateway.nhsa.transactions import Translation
from gateway.servicer import LedgerServicer, SettlementServicer


async def start_frontend(gateway: Any) -> NationalFrontend:
    """`gateway` is a started gateway.server.Gateway whose config names nhsa_listen."""
    config = gateway.config
    limits = config.nhsa_limits
    store = NhsaStore(
        gateway.store.client,
        limits.visit_retention_days * 86_400_000,
        config.idempotency_retention_days * 86_400_000,
        answers_inline=gateway.store.claims_inline,
    )
    translation = Translation(
        SettlementServicer(gateway.service, gateway.corrections),
        LedgerServicer(gateway.ledger_service),
        store,
        gateway.service.ctx.now,
        limits,
        sign_in_required=config.nhsa_sign_in_required,
    )
    unsigned = config.tls is None if config.nhsa_unsigned_allowed is None else config.nhsa_unsigned_allowed
    signatures = Signatures(KeyFile(config.nhsa_keys_file), unsigned_allowed=unsigned)
    tls = None
    if config.tls is not None:
        tls = server_ssl(str(config.tls.cert), str(config.tls.key), str(config.tls.client_ca))
    frontend = NationalFrontend(
        translation, signatures, gateway.edge.limiter, gateway.edge.identities, gateway.service.ctx.now
    )
    return await frontend.start(config.nhsa_listen, tls)
