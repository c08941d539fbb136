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
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import cachetools
import redis.asyncio as aioredis

from gateway.engine.model import Catalog, Institution
from gateway.engine.policy import Policy, in_force_on
from rules_cache import catalog_blobs, notices, records
from rules_cache.keys import STATIC_CHANNEL, STATIC_POINTER, static_key, text
from rules_cache.notices import follow_channel
from rules_cache.policy_files import parse_policy
from rules_cache.reader import DataError
from rules_cache.staging import describe, describe_catalog, stage
from telemetry import metrics

PARSED_MAX = 256  # parsed static blobs kept per process (current versions and a few old ones)


@dataclass(frozen=True, slots=True)
class StaticSnapshot:
    versions: Mapping[str, str] = field(default_factory=dict)  # pointer field -> version(s)
    policies: Mapping[str, tuple[Policy, ...]] = field(default_factory=dict)  # staged, by insured region
    catalogs: Mapping[str, Catalog] = field(default_factory=dict)  # by region of treatment
    institutions: Mapping[str, Institution] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return bool(self.policies and self.catalogs and self.institutions)

    def policy(self, region: str, on: date) -> Policy | None:
        """The version of the region's policy in force on the date of care."""
        return in_force_on(self.policies.get(region, ()), on)


def parse_blob(kind: str, region: str, version: str, blob: bytes) -> Any:
    source = static_key(kind, region, version)
    if kind == "policy":
        return parse_policy(tomllib.loads(blob.decode("utf-8")), source)
    if kind == "catalog":
        return catalog_blobs.decode(blob, region, version, source)
    rows = json.loads(blob)
    if kind == "institutions":
        return {
            inst.code: inst for inst in (records.institution(r, source, f"[{i}]") for i, r in enumerate(rows))
        }
    raise ValueError(f"unknown static kind {kind}")


BLOB_PIECE_BYTES = 1 << 20  # Redis serves one command at a time: a 20 MB value in one GET holds it up


async def read_blob(client: aioredis.Redis, key: str) -> bytes | None:
    """A published blob, read in pieces of BLOB_PIECE_BYTES (GETRANGE), so the Settles' commands are
    served between them. Published blobs never change, so the pieces are of one value."""
    size = int(await client.strlen(key))
    if size == 0:
        return None if not await client.exists(key) else b""
    pieces = []
    for start in range(0, size, BLOB_PIECE_BYTES):
        piece = await client.getrange(key, start, min(size, start + BLOB_PIECE_BYTES) - 1)
        pieces.append(piece if isinstance(piece, bytes) else piece.encode())
    return b"".join(pieces)


async def write_blob(client: aioredis.Redis, key: str, blob: bytes) -> None:
    """Writes a blob in pieces (APPEND) under a key of its own, then renames it into place: a reader
    never sees half a version, and Redis serves other commands between the pieces. A version already
    published is left as it is (the caller has checked it holds the same bytes)."""
    if await client.exists(key):
        return
    # the whole name as the partial's hash tag: the same slot as the key (which has no tag of its own),
    # so the RENAMENX stays within one slot on a cluster
    partial = f"{{{key}}}:partial"
    await client.delete(partial)
    for start in range(0, max(len(blob), 1), BLOB_PIECE_BYTES):
        await client.append(partial, blob[start : start + BLOB_PIECE_BYTES])
    await client.renamenx(partial, key)


def covered_until(versions: tuple[Policy, ...]) -> float:
    """When the last staged version ends (midnight after its last day, Asia/Shanghai), as a unix time;
    +Inf when it runs until a later version: an alert fires well before bills would be refused."""
    last = versions[-1].effective_to if versions else None
    if last is None:
        return math.inf
    return datetime.combine(last + timedelta(days=1), time(), ZoneInfo("Asia/Shanghai")).timestamp()


def pointer_field(kind: str, region: str) -> str:
    return kind if kind == "institutions" else f"{kind}:{region}"


def split_field(name: str) -> tuple[str, str]:
    kind, _, region = name.partition(":")
    return kind, region or "-"


def pointer_keys(pointer: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(field, kind, region, key) of every published version the pointer names: a policy field names
    every staged version of its region, space separated."""
    out = []
    for name, versions in pointer.items():
        kind, region = split_field(name)
        for version in versions.split():
            out.append((name, kind, region, static_key(kind, region, version)))
    return out


class StaticCache:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.snapshot = StaticSnapshot()
        self._parsed: cachetools.LRUCache[str, Any] = cachetools.LRUCache(PARSED_MAX)
        self._lock = asyncio.Lock()
        self._versions_shown: set[tuple[str, str, str]] = set()

    async def refresh(self) -> StaticSnapshot:
        """Load what the pointer names (reading only the blobs not yet parsed), then swap. A blob is read
        in pieces and taken up in a worker thread (a catalog is indexed, not parsed: catalog_blobs.py),
        so neither this event loop nor Redis stalls on a large one; the snapshot in use stays the old
        one until the swap."""
        async with self._lock:
            raw = await self.client.hgetall(STATIC_POINTER)
            pointer = {text(k): text(v) for k, v in raw.items()}
            wanted = pointer_keys(pointer)
            missing = [key for *_, key in wanted if key not in self._parsed]
            metrics.CACHE.labels("l1", "static", "hit").inc(len(wanted) - len(missing))
            metrics.CACHE.labels("l1", "static", "miss").inc(len(missing))
            for key in missing:
                blob = await read_blob(self.client, key)
                if blob is None:
                    raise DataError(key, "", "published version is missing from Redis")
                _, _, kind, region, version = key.split(":", 4)
                if kind == "catalog":
                    self._parsed[key] = await catalog_blobs.take_up(blob, region, version, key)
                else:  # small: a policy file, the institution registry
                    self._parsed[key] = parse_blob(kind, region, version, blob)
            policies: dict[str, list[Policy]] = {}
            catalogs, institutions = {}, {}
            for _, kind, region, key in wanted:
                value = self._parsed[key]
                if kind == "policy":
                    policies.setdefault(region, []).append(value)
                elif kind == "catalog":
                    catalogs[region] = value
                else:
                    institutions = value
            staged = {r: tuple(sorted(ps, key=lambda p: p.effective_from)) for r, ps in policies.items()}
            self.snapshot = StaticSnapshot(pointer, staged, catalogs, institutions)
            for region, versions in staged.items():
                metrics.POLICY_COVERED_UNTIL.labels(region).set(covered_until(versions))
            current = {(kind, region, key.rsplit(":", 1)[1]) for _, kind, region, key in wanted}
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
            blob = await read_blob(self.client, key)
            if blob is None:
                raise DataError(key, "", "published version is missing from Redis")
            if kind == "catalog":
                parsed = await catalog_blobs.take_up(blob, region, version, key)
            else:
                parsed = parse_blob(kind, region, version, blob)
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
        staged: dict[str, list[Policy]] = {}
        for p in policies:
            staged.setdefault(p.region, []).append(p)
        ordered = {r: tuple(stage([], ps)) for r, ps in staged.items()}
        pointer = {f"policy:{r}": " ".join(p.version for p in ps) for r, ps in ordered.items()}
        pointer.update({f"catalog:{c.region}": c.version for c in catalogs})
        pointer["institutions"] = institutions_version
        self.snapshot = StaticSnapshot(pointer, ordered, {c.region: c for c in catalogs}, dict(institutions))

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
    timelines: list[str] = field(default_factory=list)  # what is in force on which dates, once published
    catalogs: list[Catalog] = field(default_factory=list)

    def add_policy(self, toml_text: str, source: str) -> Policy:
        policy = parse_policy(tomllib.loads(toml_text), source)
        self.blobs[("policy", policy.region, policy.version)] = toml_text.encode("utf-8")
        return policy

    def add_catalog(
        self,
        region: str,
        rows: list[dict[str, Any]],
        version: str | None = None,
        source: str = "",
        where: Callable[[int], str] = lambda i: f"[{i}]",
    ) -> str:
        """Validates the rows with the one catalog parser (errors name `source` and the row), then
        stages the blob in the form a gateway takes up without a stall (rules_cache/catalog_blobs.py).
        The catalog's validity periods are listed in `timelines`."""
        blob = catalog_blobs.encode(rows)
        version = version or content_version(region, blob)
        catalog = records.catalog(
            rows, region, version, source or static_key("catalog", region, version), where
        )
        self.blobs[("catalog", region, version)] = blob
        self.catalogs.append(catalog)
        return version

    def add_institutions(self, rows: list[dict[str, Any]], version: str | None = None) -> str:
        blob = json.dumps(rows, ensure_ascii=False, sort_keys=True).encode("utf-8")
        version = version or content_version("inst", blob)
        parse_blob("institutions", "-", version, blob)
        self.blobs[("institutions", "-", version)] = blob
        return version

    async def staged(self, client: aioredis.Redis, force: bool) -> dict[str, list[Policy]]:
        """Each region's policy versions once this publication is added to what is published: checked
        to follow one another (rules_cache.staging)."""
        new: dict[str, list[Policy]] = {}
        for (kind, region, version), blob in self.blobs.items():
            if kind == "policy":
                new.setdefault(region, []).append(parse_blob(kind, region, version, blob))
        out = {}
        for region, policies in new.items():
            published = text(await client.hget(STATIC_POINTER, pointer_field("policy", region)) or b"")
            existing = []
            for version in published.split():
                held = await read_blob(client, static_key("policy", region, version))
                if held is not None:
                    existing.append(parse_blob("policy", region, version, held))
            out[region] = stage(existing, policies, force)
        return out

    async def publish(
        self, client: aioredis.Redis, force: bool = False, dry_run: bool = False
    ) -> dict[str, str]:
        """Writes the blobs (refusing to change a published version), then switches the pointer in one
        HSET and announces it. Policies are staged beside the versions already published; with
        `dry_run`, everything is checked and nothing is written (see `timelines`)."""
        staged = await self.staged(client, force)
        self.timelines = [line for region, ps in sorted(staged.items()) for line in describe(region, ps)]
        for catalog in self.catalogs:
            self.timelines += describe_catalog(catalog)
        for (kind, region, version), blob in self.blobs.items():
            key = static_key(kind, region, version)
            held = await read_blob(client, key)
            if held is not None and held != blob:
                raise DataError(
                    key, "version", f"version {version} is already published with other content: bump it"
                )
        pointer = {pointer_field(k, r): v for (k, r, v) in self.blobs if k != "policy"}
        for region, ps in staged.items():
            pointer[pointer_field("policy", region)] = " ".join(p.version for p in ps)
        if dry_run:
            return pointer
        for (kind, region, version), blob in self.blobs.items():
            await write_blob(client, static_key(kind, region, version), blob)
        if pointer:
            await client.hset(STATIC_POINTER, mapping=dict(pointer))  # type: ignore[arg-type]
            await notices.publish(client, STATIC_CHANNEL, json.dumps(pointer))
        return pointer
