"""Policies, catalogs and institutions: published to Redis under immutable versioned keys (L2), parsed
once per process into an in-process cachetools cache (L1), and read on the hot path from an immutable
snapshot that is swapped whole when a new version is published. A request holds the snapshot it
started with, so a publication during traffic fails no request, and every settlement records the
versions it used.

Publication: validate everything, write each blob under its version key (refusing to change a
published version), switch the pointer hash in one HSET, and announce the change over pub/sub; every
process loads the new version (one pipelined read of what it lacks), then swaps its snapshot."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cachetools
import redis.asyncio as aioredis

from gateway.engine.model import Catalog, CatalogEntry, Institution
from gateway.engine.policy import Policy
from rules_cache import records
from rules_cache.keys import STATIC_CHANNEL, STATIC_POINTER, static_key, text
from rules_cache.notices import follow_channel
from rules_cache.policy_files import parse_policy
from rules_cache.reader import DataError
from telemetry import metrics

PARSED_MAX = 256  # parsed static blobs kept per process (current versions and a few old ones)


@dataclass(frozen=True, slots=True)
class StaticSnapshot:
    versions: Mapping[str, str] = field(default_factory=dict)  # pointer field -> version
    policies: Mapping[str, Policy] = field(default_factory=dict)  # by insured region
    catalogs: Mapping[str, Catalog] = field(default_factory=dict)  # by region of treatment
    institutions: Mapping[str, Institution] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.policies and self.catalogs and self.institutions)


def parse_blob(kind: str, region: str, version: str, blob: bytes) -> Any:
    source = static_key(kind, region, version)
    if kind == "policy":
        return parse_policy(tomllib.loads(blob.decode("utf-8")), source)
    rows = json.loads(blob)
    if kind == "catalog":
        entries: dict[str, CatalogEntry] = {}
        for i, row in enumerate(rows):
            entry = records.catalog_entry(row, source, f"[{i}]")
            entries[entry.code] = entry
        return Catalog(region, version, entries)
    if kind == "institutions":
        return {
            inst.code: inst for inst in (records.institution(r, source, f"[{i}]") for i, r in enumerate(rows))
        }
    raise ValueError(f"unknown static kind {kind}")


def pointer_field(kind: str, region: str) -> str:
    return kind if kind == "institutions" else f"{kind}:{region}"


def split_field(name: str) -> tuple[str, str]:
    kind, _, region = name.partition(":")
    return kind, region or "-"


class StaticCache:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.snapshot = StaticSnapshot()
        self._parsed: cachetools.LRUCache[str, Any] = cachetools.LRUCache(PARSED_MAX)
        self._lock = asyncio.Lock()
        self._versions_shown: set[tuple[str, str, str]] = set()

    async def refresh(self) -> StaticSnapshot:
        """Load what the pointer names (reading only the blobs not yet parsed), then swap."""
        async with self._lock:
            raw = await self.client.hgetall(STATIC_POINTER)
            pointer = {text(k): text(v) for k, v in raw.items()}
            wanted = {name: static_key(*split_field(name), version) for name, version in pointer.items()}
            missing = [key for key in wanted.values() if key not in self._parsed]
            metrics.CACHE.labels("l1", "static", "hit").inc(len(wanted) - len(missing))
            metrics.CACHE.labels("l1", "static", "miss").inc(len(missing))
            if missing:
                pipe = self.client.pipeline(transaction=False)
                for key in missing:
                    pipe.get(key)
                for key, blob in zip(missing, await pipe.execute(), strict=True):
                    if blob is None:
                        raise DataError(key, "", "published version is missing from Redis")
                    _, _, kind, region, version = key.split(":", 4)
                    self._parsed[key] = parse_blob(kind, region, version, blob)
            policies, catalogs, institutions = {}, {}, {}
            for name, key in wanted.items():
                kind, region = split_field(name)
                value = self._parsed[key]
                if kind == "policy":
                    policies[region] = value
                elif kind == "catalog":
                    catalogs[region] = value
                else:
                    institutions = value
            self.snapshot = StaticSnapshot(pointer, policies, catalogs, institutions)
            current = {(*split_field(name), version) for name, version in pointer.items()}
            for old in self._versions_shown - current:  # clear() is not possible across processes
                metrics.STATIC_VERSION.labels(*old).set(0)
            for labels in current:
                metrics.STATIC_VERSION.labels(*labels).set(1)
            self._versions_shown = current
            return self.snapshot

    async def load(self, kind: str, region: str, version: str) -> Any:
        """One published version, parsed (from L1, else one read of its blob): what a correction or an
        audit needs to split a settlement again with the rules it was split with."""
        key = static_key(kind, region, version)
        parsed = self._parsed.get(key)
        if parsed is None:
            blob = await self.client.get(key)
            if blob is None:
                raise DataError(key, "", "published version is missing from Redis")
            parsed = parse_blob(kind, region, version, blob if isinstance(blob, bytes) else blob.encode())
            self._parsed[key] = parsed
        return parsed

    async def follow(self, stopping: asyncio.Event) -> None:
        """Refresh on every publication (and every 30 s, for a message missed while disconnected)."""

        async def changed(_: bytes | None) -> None:
            await self.refresh()

        await follow_channel(self.client, STATIC_CHANNEL, changed, stopping)


class FixedStatic:
    """Static data fixed in memory: one snapshot and every version given, with the same reads as
    StaticCache (`snapshot`, `load`). For unit tests of the code above it, which need no Redis."""

    def __init__(
        self,
        policies: list[Policy],
        catalogs: list[Catalog],
        institutions: Mapping[str, Institution],
        institutions_version: str = "inst-fixed",
    ) -> None:
        self._versions: dict[tuple[str, str, str], Any] = {}
        for p in policies:
            self._versions[("policy", p.region, p.version)] = p
        for c in catalogs:
            self._versions[("catalog", c.region, c.version)] = c
        self._versions[("institutions", "-", institutions_version)] = dict(institutions)
        pointer = {f"policy:{p.region}": p.version for p in policies}
        pointer.update({f"catalog:{c.region}": c.version for c in catalogs})
        pointer["institutions"] = institutions_version
        self.snapshot = StaticSnapshot(
            pointer, {p.region: p for p in policies}, {c.region: c for c in catalogs}, dict(institutions)
        )

    async def load(self, kind: str, region: str, version: str) -> Any:
        found = self._versions.get((kind, region, version))
        if found is None:
            raise DataError(static_key(kind, region, version), "", "no such version")
        return found


def content_version(prefix: str, blob: bytes) -> str:
    return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:12]}"


@dataclass
class Publication:
    """What to publish: blobs by (kind, region, version). Validated before anything is written."""

    blobs: dict[tuple[str, str, str], bytes] = field(default_factory=dict)

    def add_policy(self, toml_text: str, source: str) -> Policy:
        policy = parse_policy(tomllib.loads(toml_text), source)
        self.blobs[("policy", policy.region, policy.version)] = toml_text.encode("utf-8")
        return policy

    def add_catalog(self, region: str, rows: list[dict[str, Any]], version: str | None = None) -> str:
        blob = json.dumps(rows, ensure_ascii=False, sort_keys=True).encode("utf-8")
        version = version or content_version(region, blob)
        parse_blob("catalog", region, version, blob)
        self.blobs[("catalog", region, version)] = blob
        return version

    def add_institutions(self, rows: list[dict[str, Any]], version: str | None = None) -> str:
        blob = json.dumps(rows, ensure_ascii=False, sort_keys=True).encode("utf-8")
        version = version or content_version("inst", blob)
        parse_blob("institutions", "-", version, blob)
        self.blobs[("institutions", "-", version)] = blob
        return version

    async def publish(self, client: aioredis.Redis) -> dict[str, str]:
        for (kind, region, version), blob in self.blobs.items():
            key = static_key(kind, region, version)
            if not await client.set(key, blob, nx=True) and await client.get(key) != blob:
                raise DataError(
                    key, "version", f"version {version} is already published with other content: bump it"
                )
        pointer = {pointer_field(k, r): v for (k, r, v) in self.blobs}
        if pointer:
            await client.hset(STATIC_POINTER, mapping=dict(pointer))  # type: ignore[arg-type]
            await client.publish(STATIC_CHANNEL, json.dumps(pointer))
        return pointer
