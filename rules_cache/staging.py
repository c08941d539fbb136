"""Staged policy versions: every published version of a region is kept, and the one in force on the
date of care settles a bill (gateway.engine.policy.in_force_on), so next year's policy is published
months ahead and takes over at midnight in every process at once, by the date, not by a message.

A region's versions must follow one another: an open-ended version runs until the next one begins; a
version with an end date must end the day before the next begins. Overlaps are refused always; a gap
(days of care with no version in force: every bill rejected POLICY_NOT_IN_FORCE) is refused unless the
publisher forces it; so is a version that begins on the same day as a published one, which it then
replaces (a correction of a published version; settlements made under the old one keep it). Pure
functions; rules_cache.static_data reads and writes the versions."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from gateway.engine.model import Catalog
from gateway.engine.policy import Policy
from rules_cache.reader import DataError

ONE_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Span:
    """When one version is in force: from `first` to `last` inclusive (None: until a later version)."""

    version: str
    first: date
    last: date | None


def stage(existing: Iterable[Policy], new: Iterable[Policy], force: bool = False) -> list[Policy]:
    """The region's versions after publishing `new` beside `existing`, ordered by effective_from; raises
    DataError naming the versions and the dates when they overlap, or leave a gap (unless forced)."""
    by_version = {p.version: p for p in existing}
    new = list(new)
    for p in new:
        same_start = [
            v for v, q in by_version.items() if q.effective_from == p.effective_from and v != p.version
        ]
        if same_start and not force:
            raise DataError(
                p.source,
                "effective_from",
                f"{p.version} and {same_start[0]} both begin on {p.effective_from}; publish with --force to"
                f" replace {same_start[0]} (settlements already made keep the version they recorded)",
            )
        for v in same_start:
            del by_version[v]
        by_version[p.version] = p  # a version republished: the same content (checked by the blob)
    ordered = sorted(by_version.values(), key=lambda p: p.effective_from)
    for a, b in itertools.pairwise(ordered):
        if a.effective_to is None:
            continue  # runs until b begins
        if a.effective_to >= b.effective_from:
            raise DataError(
                b.source,
                "effective_from",
                f"{b.version} begins on {b.effective_from}, inside {a.version}"
                f" ({a.effective_from} to {a.effective_to})",
            )
        if a.effective_to + ONE_DAY < b.effective_from and not force:
            raise DataError(
                b.source,
                "effective_from",
                f"no policy would be in force from {a.effective_to + ONE_DAY} to {b.effective_from - ONE_DAY}"
                f" (between {a.version} and {b.version}): every bill of those days would be refused;"
                " publish with --force if that is meant",
            )
    return ordered


def timeline(ordered: list[Policy]) -> list[Span]:
    """When each version is in force, once the later ones have taken over."""
    spans = []
    for i, p in enumerate(ordered):
        following = ordered[i + 1] if i + 1 < len(ordered) else None
        last = p.effective_to
        if following is not None and (last is None or last >= following.effective_from):
            last = following.effective_from - ONE_DAY
        spans.append(Span(p.version, p.effective_from, last))
    return spans


def describe(region: str, ordered: list[Policy]) -> list[str]:
    """The timeline as lines a person reads (`medsettle load --dry-run`)."""
    lines = [f"policy of region {region}:"]
    spans = timeline(ordered)
    for span, following in itertools.zip_longest(spans, spans[1:]):
        until = f"to {span.last}" if span.last is not None else "until a later version"
        lines.append(f"  {span.first} {until}: {span.version}")
        if following is not None and span.last is not None and span.last + ONE_DAY < following.first:
            lines.append(f"  {span.last + ONE_DAY} to {following.first - ONE_DAY}: NOTHING IN FORCE")
    if spans and spans[-1].last is not None:
        lines.append(f"  from {spans[-1].last + ONE_DAY}: NOTHING IN FORCE (every bill refused)")
    return lines


def describe_catalog(catalog: Catalog) -> list[str]:
    """A catalog version's validity periods as lines a person reads: on which days entries begin or end,
    so a price limit that changes on 07-01 shows before it is published."""
    starts: dict[date, int] = {}
    ends: dict[date, int] = {}
    for found in catalog.periods.values():
        for e in found:
            starts[e.effective_from] = starts.get(e.effective_from, 0) + 1
            if e.effective_to is not None:
                ends[e.effective_to] = ends.get(e.effective_to, 0) + 1
    several = sum(1 for found in catalog.periods.values() if len(found) > 1)
    lines = [
        f"catalog of region {catalog.region}, version {catalog.version}: {len(catalog.periods)} codes,"
        f" {len(catalog)} entries, {several} codes with several validity periods"
    ]
    for day in sorted(set(starts) | set(ends))[-12:]:  # the latest changes, the ones still to come
        parts = []
        if day in starts:
            parts.append(f"{starts[day]} entries begin")
        if day in ends:
            parts.append(f"{ends[day]} entries end (last day)")
        lines.append(f"  {day}: " + ", ".join(parts))
    return lines
