"""Configuration: one frozen value, field names carry their units."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from adapters.citydata_files import citydata_dir
from gateway.edge.limits import EdgeLimits
from gateway.edge.tls import ServerTls
from gateway.nhsa.limits import NationalLimits


@dataclass(frozen=True, slots=True)
class Config:
    listen: str = "127.0.0.1:50051"  # host:port; port 0 picks a free one
    redis_url: str | None = None  # None: start the embedded redis-server in data_dir
    data_dir: Path = Path("medsettle-data")
    citydata: Path = field(default_factory=citydata_dir)
    ledger_dsn: str | None = None  # sqlite:///path or postgresql://...: reconciliation and statements
    load_demo_data: bool = True  # embedded mode: publish citydata/ and its persons at start
    timezone: str = "Asia/Shanghai"  # the date of care is the gateway's date here, not the terminal's
    redis_timeout_ms: int = 1000
    redis_connect_timeout_ms: int = 500
    health_interval_ms: int = 1000
    shutdown_grace_ms: int = 5000
    request_bytes_max: int = 1 << 20
    commit_retries_max: int = 8
    # Retention: a message record (idempotency) leaves Redis this long after its last use; settlements
    # of the last settlement_retention_plan_years plan-years (the current and the previous) are settled
    # and corrected here, older ones are answered from the ledger (gateway/posting/retention.py)
    idempotency_retention_days: int = 7
    settlement_retention_plan_years: int = 2
    # None: plaintext gRPC, which `medsettle serve` uses only with --insecure (and says so in the log);
    # the CLI otherwise always sets it (the data folder's certificates by default)
    tls: ServerTls | None = None
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    # The deployment's index key: card and ID numbers are keyed hashes in Redis (gateway/index_key.py
    # says where the CLI finds it). Required to serve: a gateway without it can look no card up.
    index_key: bytes = b""
    # The national interface over HTTP (gateway/nhsa/): None off. TLS with the gRPC server's certificate
    # when `tls` is set (a client certificate is optional: signatures prove the institution otherwise),
    # plaintext HTTP trusting fixmedins_code when it is not (--insecure).
    nhsa_listen: str | None = None
    nhsa_keys_file: Path | None = None  # per-institution signing keys (gateway/nhsa/signing.py)
    nhsa_limits: NationalLimits = field(default_factory=NationalLimits)
    nhsa_sign_in_required: bool = True  # every transaction but 9001 names a current sign_no
    nhsa_unsigned_allowed: bool | None = None  # None: only on a plaintext (--insecure) gateway
