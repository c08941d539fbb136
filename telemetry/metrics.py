"""Prometheus metrics of the gateway and the posting worker. Label values are bounded (service and
method names, status codes, fund codes, regions, districts, visit types, rejection codes, partitions)
and carry no personal data: no names, card, ID or person numbers, no message or settlement ids.

Several processes (serve --workers N, issue 6) share one metrics view through prometheus_client's
multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set; gauges then say how they combine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import REGISTRY
from prometheus_client.registry import Collector

# A labelled metric's child per label values, kept: prometheus_client's labels() validates, locks and
# looks the child up on every call (several µs, a dozen times per Settle). Label values here come from
# a bounded set (RPCs, codes, regions, districts, funds), so the cache is bounded by what the metrics
# themselves already hold.
_children: dict[tuple[Any, ...], Any] = {}


def child(metric: Any, *values: str) -> Any:
    key = (id(metric), *values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


# Sub-millisecond to seconds: a settlement should take a few ms, a slow one a second.
LATENCY_BUCKETS_S = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
REDIS_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)

# ---------------------------------------------------------------- gRPC (the names operators know)
GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_type", "grpc_service", "grpc_method"]
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, to the status.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS_S,
)

# ---------------------------------------------------------------- settlements and money
SETTLEMENTS = Counter(
    "medsettle_settlements_total",
    "Settlements committed, by insured region and district, scheme and visit type.",
    ["region", "district", "scheme", "visit_type"],
)
REVERSALS = Counter("medsettle_reversals_total", "Settlements reversed, by institution region.", ["region"])
FUND_FEN = Counter(
    "medsettle_fund_paid_fen_total", "Fund payments committed, in fen, by fund code.", ["region", "fund_code"]
)
ACCOUNT_FEN = Counter("medsettle_account_paid_fen_total", "Personal account payments, in fen.", ["region"])
CASH_FEN = Counter(
    "medsettle_cash_paid_fen_total", "Cash paid by persons at the counter, in fen.", ["region"]
)
REJECTIONS = Counter("medsettle_rejections_total", "Business rejections, by code name.", ["code"])
CLAIMS = Counter(
    "medsettle_claims_total",
    "Claims after the fact (手工报销) committed, by insured region and case.",
    ["region", "case"],
)
AUDIT_FLAGS = Counter(
    "medsettle_audit_flags_total",
    "Pre-settlement audit rule hits (3101/3102), by insured region, rule, severity and outcome"
    " (flagged: settled with the flag; blocked: the bill was rejected).",
    ["region", "rule", "severity", "outcome"],
)

# ---------------------------------------------------------------- caches, Redis, commits
CACHE = Counter(
    "medsettle_cache_requests_total",
    "Cache lookups by layer, cache and result.",
    ["layer", "cache", "result"],
)
STATIC_VERSION = Gauge(
    "medsettle_static_version_info",
    "Policy, catalog and institution versions published and kept (value 1); each policy version "
    "settles bills of the dates it covers (medsettle_policy_covered_until_timestamp_seconds).",
    ["kind", "region", "version"],
    multiprocess_mode="max",
)
ENGINE_INFO = Gauge(
    "medsettle_engine_info",
    "How this gateway's engine runs (value 1): compiled (a fresh mypyc build) or python (its sources).",
    ["kind"],
    multiprocess_mode="max",
)
POLICY_COVERED_UNTIL = Gauge(
    "medsettle_policy_covered_until_timestamp_seconds",
    "End of the last day a published policy version covers, by insured region (+Inf: open-ended).",
    ["region"],
    multiprocess_mode="max",
)
REDIS_SECONDS = Histogram(
    "medsettle_redis_command_seconds",
    "Redis round trips, by operation.",
    ["operation"],
    buckets=REDIS_BUCKETS_S,
)
COMMIT_CONFLICTS = Counter(
    "medsettle_commit_conflicts_total", "Commits retried because the person's state moved."
)
STORE_REFUSED = Counter(
    "medsettle_store_refused_total",
    "Commits the store refused to write (keys of a wrong type, malformed operands): nothing was written.",
)
CORRECTIONS = Counter(
    "medsettle_corrections_total",
    "Corrections committed: reversals, refunds, and adjustments of later settlements.",
    ["kind"],
)
GATEWAY_FAULTS = Counter(
    "medsettle_gateway_faults_total",
    "Requests that failed on an exception no branch expects (a bug), answered UNAVAILABLE GATEWAY_FAULT.",
    ["method", "exception"],
)
DEPENDENCY_FAILURES = Counter(
    "medsettle_dependency_failures_total", "Requests answered UNAVAILABLE, by dependency.", ["dependency"]
)

# ---------------------------------------------------------------- durability
REPLICA_WAIT_FAILURES = Counter(
    "medsettle_replica_wait_failures_total",
    "Commits written on the primary whose WAIT saw fewer replicas than required in time: answered"
    " UNAVAILABLE (outcome unknown; a resend finds the commit).",
)

# ---------------------------------------------------------------- posting (the worker's own)
POSTED = Counter("medsettle_posting_booked_total", "Ledger entries booked, by kind.", ["kind"])
POSTING_DUPLICATES = Counter("medsettle_posting_duplicates_total", "Entries delivered again, booked already.")
POSTING_FAILURES = Counter("medsettle_posting_failures_total", "Posting failures, by reason.", ["reason"])
DEAD_LETTERS = Counter("medsettle_posting_dead_letters_total", "Entries moved to the dead-letter stream.")
FUND_SPEND_MONTH = Gauge(
    "medsettle_fund_spend_month_fen",
    "Fund spend booked this month, in fen, by insured region, district and fund code.",
    ["region", "district", "fund_code"],
    multiprocess_mode="max",
)
FUND_BUDGET_MONTH = Gauge(
    "medsettle_fund_budget_month_fen",
    "Configured monthly budget, in fen, by region, district and fund code.",
    ["region", "district", "fund_code"],
    multiprocess_mode="max",
)
INSTITUTION_SPEND_YEAR = Gauge(
    "medsettle_institution_fund_spend_year_fen",
    "Fund payments booked to an institution this year, in fen (the spend of its annual global budget).",
    ["institution"],
    multiprocess_mode="max",
)
INSTITUTION_BUDGET_YEAR = Gauge(
    "medsettle_institution_budget_year_fen",
    "An institution's configured annual global budget (总额预算) of fund payments, in fen.",
    ["institution"],
    multiprocess_mode="max",
)
RETENTION_REMOVED = Counter(
    "medsettle_retention_removed_total",
    "Settlements of plan-years past the correction window removed from Redis (the ledger keeps them).",
)
RETENTION_NOT_BOOKED = Gauge(
    "medsettle_retention_not_booked_settlements",
    "Settlements past the correction window kept in Redis at the last sweep because the ledger has not"
    " booked them yet.",
    multiprocess_mode="max",
)
LEDGER_MONTHS_WITHOUT_PARTITIONS = Gauge(
    "medsettle_ledger_months_without_partitions",
    "PostgreSQL ledger: of this month and the two ahead, how many have no partitions (their entries would"
    " go to the default partition); 0 when the worker made them, or on SQLite.",
    multiprocess_mode="max",
)
WORKER_HEALTHY = "medsettle_worker_healthy"
_worker_healthy: list[Gauge] = []


def worker_healthy() -> Gauge:
    """The worker's health gauge, created only in the worker: an unlabelled gauge exists (at 0) in every
    process that creates it, and a gateway exporting `medsettle_worker_healthy 0` made the worker-down
    alert fire in every deployment with a separate worker."""
    if not _worker_healthy:
        _worker_healthy.append(
            Gauge(WORKER_HEALTHY, "1 while the posting worker's last loop succeeded recently.")
        )
    return _worker_healthy[0]


# ---------------------------------------------------------------- backlog, read from Redis at each scrape
# Exported by the serve supervisor (gateway/ops/backlog.py), not by the worker, so they stay true while
# the worker is dead: a dead worker's last values, or a gateway's zeros, once hid a growing backlog.
BACKLOG = {
    "medsettle_stream_entries": "Entries not yet booked in a partition stream.",
    "medsettle_stream_pending_entries": "Entries delivered to a worker and not yet acknowledged.",
    "medsettle_stream_consumer_lag_entries": "Entries not yet delivered to any worker.",
    "medsettle_stream_oldest_entry_age_seconds": "Age of the oldest entry not booked yet (0: none).",
    "medsettle_posting_lag_seconds": (
        "Age of the oldest committed settlement not yet in the ledger: in a stream or held as a dead letter."
    ),
    "medsettle_posting_dead_letters_unhandled": "Dead letters no operator has replayed or discarded yet.",
    "medsettle_posting_held_entries": (
        "Entries holding the posted-through watermark: unhandled dead letters and replayed ones not booked."
    ),
    "medsettle_redis_reachable": "1 when the exporter's last scrape reached Redis.",
    "medsettle_redis_replicas_connected": "Replicas connected to the Redis primary (INFO replication).",
    "medsettle_durability_info": (
        "The durability in force (value 1): mode (aof|replica), appendfsync, replicas required, eviction"
        " policy."
    ),
}


def registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return combined
    return REGISTRY


def serve_metrics(
    port: int,
    health: Callable[[], tuple[bool, str]] | None = None,
    host: str = "0.0.0.0",
    collectors: Sequence[Collector] = (),
) -> WSGIServer:
    """/metrics for Prometheus, /healthz (200 or 503 with the reason) for orchestrators. Runs in a daemon
    thread; returns the server (its port is server.server_port when port 0 was asked). `collectors` are
    read at each scrape besides the process's (or processes') own metrics: figures read from Redis."""
    import threading

    extra = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        extra.register(collector)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            try:
                ok, reason = health() if health else (True, "ok")
            except Exception as exc:  # a health check that fails is an unhealthy answer, not a 500
                ok, reason = False, f"health check failed: {type(exc).__name__}: {exc}"
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [reason.encode() + b"\n"]
        if path in ("/metrics", "/"):
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry()) + (generate_latest(extra) if collectors else b"")]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server(host, port, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
