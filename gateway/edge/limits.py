"""Limits at the edge, each a named value with its unit, each refusal counted in
`medsettle_edge_refusals_total{limit}` and each configured value exported as `medsettle_edge_limit`.

They are kept in process memory, so with `serve --workers N` an institution may reach N times the
per-process figures (SO_REUSEPORT spreads connections, not institutions): the aggregate limit is the
per-process value times the number of processes. That keeps the hot path free of Redis round trips;
docs/SECURITY.md says how to size them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from cachetools import TTLCache
from prometheus_client import Counter, Gauge

from gateway.edge.refusals import exhausted

KEYS_TRACKED_MAX = 200_000  # institutions or cards remembered per limit and process (bounded memory)

REFUSALS = Counter(
    "medsettle_edge_refusals_total",
    "Requests refused at the edge, by limit or reason (identity, decoding, rate and size limits).",
    ["limit"],
)
LIMIT_VALUE = Gauge(
    "medsettle_edge_limit",
    "Configured edge limits, by name (the unit is in the name).",
    ["limit"],
    multiprocess_mode="max",
)
IN_FLIGHT = Gauge("medsettle_edge_calls_in_flight", "Calls being served.", multiprocess_mode="livesum")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    requests_per_s_max: float = 100.0  # per institution and process: token bucket refill rate
    requests_burst_max: int = 200  # per institution and process: bucket size (a burst after a pause)
    calls_in_flight_max: int = 32  # per institution and process: concurrent calls
    process_calls_in_flight_max: int = 1000  # per process, every institution together
    connections_max: int = 2000  # per process: grpc.max_allowed_incoming_connections
    streams_per_connection_max: int = 64  # grpc.max_concurrent_streams
    handshake_timeout_ms: int = 5000  # grpc.server_handshake_timeout_ms: TLS handshake to first bytes
    connection_idle_ms: int = 300_000  # grpc.max_connection_idle_ms: no call on it for this long
    body_read_timeout_ms: int = 2000  # headers received, the request body must follow within this
    eligibility_per_card_per_min_max: int = 20  # QueryEligibility per card (or ID number) and process
    person_misses_per_min_max: int = 60  # "no such person" answers per institution and process
    reconcile_items_per_call_max: int = 5000  # ReconcileRequest.items
    reconcile_page_items_max: int = 1000  # ReconcileResponse.items
    reconcile_response_bytes_max: int = 1 << 20  # a Reconcile page, serialized
    response_bytes_max: int = 4 << 20  # grpc.max_send_message_length

    def export(self) -> None:
        for f in fields(self):
            LIMIT_VALUE.labels(f.name).set(float(getattr(self, f.name)))


class Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class Window:
    """A count over a fixed one-minute window."""

    __slots__ = ("count", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.count = 0


def refuse(limit: str, message: str, retry_after_s: float) -> None:
    REFUSALS.labels(limit).inc()
    raise exhausted("RATE_LIMITED" if "per_s" in limit else "LIMIT_EXCEEDED", message, retry_after_s)


class Limiter:
    def __init__(self, limits: EdgeLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.buckets: TTLCache[str, Bucket] = TTLCache(KEYS_TRACKED_MAX, ttl=600)
        self.in_flight: dict[str, int] = {}
        self.process_in_flight = 0
        self.cards: TTLCache[bytes, Window] = TTLCache(KEYS_TRACKED_MAX, ttl=120)
        self.misses: TTLCache[str, Window] = TTLCache(KEYS_TRACKED_MAX, ttl=120)
        limits.export()

    def admit(self, institution: str) -> None:
        """One call for `institution` may start, or RESOURCE_EXHAUSTED with the wait in RetryInfo.
        The caller calls release() when it ends (only after admit returned)."""
        lim = self.limits
        if self.process_in_flight >= lim.process_calls_in_flight_max:
            refuse("process_calls_in_flight_max", "the gateway process is at its concurrent call limit", 0.05)
        if self.in_flight.get(institution, 0) >= lim.calls_in_flight_max:
            refuse(
                "calls_in_flight_max",
                f"institution {institution} has {lim.calls_in_flight_max} calls in flight already",
                0.05,
            )
        now = self.clock()
        bucket = self.buckets.get(institution)
        if bucket is None:
            bucket = self.buckets[institution] = Bucket(float(lim.requests_burst_max), now)
        bucket.tokens = min(
            float(lim.requests_burst_max), bucket.tokens + (now - bucket.stamp) * lim.requests_per_s_max
        )
        bucket.stamp = now
        if bucket.tokens < 1.0:
            refuse(
                "requests_per_s_max",
                f"institution {institution} is over {lim.requests_per_s_max:g} requests per second",
                (1.0 - bucket.tokens) / lim.requests_per_s_max,
            )
        bucket.tokens -= 1.0
        self.in_flight[institution] = self.in_flight.get(institution, 0) + 1
        self.process_in_flight += 1
        IN_FLIGHT.inc()

    def release(self, institution: str) -> None:
        left = self.in_flight.get(institution, 1) - 1
        if left:
            self.in_flight[institution] = left
        else:
            self.in_flight.pop(institution, None)
        self.process_in_flight -= 1
        IN_FLIGHT.dec()

    def _window(self, cache: TTLCache[str, Window] | TTLCache[bytes, Window], key: str | bytes) -> Window:
        now = self.clock()
        window: Window | None = cache.get(key)  # type: ignore[arg-type]
        if window is None or now - window.start >= 60.0:
            window = Window(now)
            cache[key] = window  # type: ignore[index]
        return window

    def eligibility(self, card_or_id: str) -> None:
        """QueryEligibility for one card (or ID number) at most so often: a terminal swipes a card a few
        times a visit; scraping a person's balance or limits over and over is refused. The key is a hash,
        so no card number sits in memory in the clear."""
        key = hashlib.blake2b(card_or_id.encode(), digest_size=12).digest()
        window = self._window(self.cards, key)
        if window.count >= self.limits.eligibility_per_card_per_min_max:
            refuse(
                "eligibility_per_card_per_min_max",
                "this card was queried too often in the last minute",
                60.0 - (self.clock() - window.start),
            )
        window.count += 1

    def misses_left(self, institution: str) -> None:
        """An institution that keeps asking for persons that do not exist is guessing (ID numbers by birth
        date): its person lookups are refused for the rest of the minute."""
        window = self._window(self.misses, institution)
        if window.count >= self.limits.person_misses_per_min_max:
            refuse(
                "person_misses_per_min_max",
                f"institution {institution} asked for {window.count} unknown persons this minute",
                60.0 - (self.clock() - window.start),
            )

    def missed(self, institution: str) -> None:
        self._window(self.misses, institution).count += 1


def grpc_options(limits: EdgeLimits) -> list[tuple[str, int]]:
    """The grpc core's own limits (per process): connections, streams, handshake and idle timeouts."""
    return [
        ("grpc.max_allowed_incoming_connections", limits.connections_max),
        ("grpc.max_concurrent_streams", limits.streams_per_connection_max),
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        ("grpc.max_connection_idle_ms", limits.connection_idle_ms),
        ("grpc.max_send_message_length", limits.response_bytes_max),
    ]
