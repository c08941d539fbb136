"""How a catalog version is published so that a gateway process can take it up without stalling.

A provincial drug list has about 60,000 entries: parsing and validating them all takes one process more
than a second of Python and, with json.loads holding the GIL for a 20 MB document, stalls its event
loop even from a worker thread. So the whole catalog is validated once, by the publisher (the one parser,
rules_cache.records.catalog), and published as lines sorted by code, `<code>\\t<row as JSON>`, under a
first line naming the format. A gateway process indexes the lines by code (a split and one pass over
short byte strings, tens of milliseconds) and turns a code's rows into entries the first time a bill
names it, with the same row parser (catalog_entry). Blobs of the first format (one JSON array) are still
read, whole."""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import Iterator, Mapping
from typing import Any

from gateway.engine.model import Catalog, CatalogEntry, effective_from
from rules_cache import records

FORMAT_LINE = b"#medsettle-catalog lines v2"


def encode(rows: list[dict[str, Any]]) -> bytes:
    """The published form of rows already validated (records.catalog)."""
    keyed = sorted(
        (
            str(row["code"]),
            str(row.get("effective_from", "")),
            json.dumps(row, ensure_ascii=False, sort_keys=True),
        )
        for row in rows
    )
    return b"\n".join([FORMAT_LINE, *(f"{code}\t{text}".encode() for code, _, text in keyed)])


SPLIT_PIECE_BYTES = 1 << 18
TAKE_UP_SLICE_LINES = 2_000  # about half a millisecond of indexing between two turns of the event loop


def lines_of(blob: bytes) -> list[bytes]:
    """blob.split(b"\n"), a quarter of a megabyte at a time: one split of 20 MB is a single C call that
    holds the GIL for tens of milliseconds, and the event loop waits that long."""
    out: list[bytes] = []
    start = 0
    while start < len(blob):
        end = blob.find(b"\n", start + SPLIT_PIECE_BYTES)
        if end < 0:
            end = len(blob)
        out += blob[start:end].split(b"\n")
        start = end + 1
    return out if blob else [b""]


class LazyPeriods(Mapping[str, tuple[CatalogEntry, ...]]):
    """A catalog's entries by code, parsed the first time a code is asked for. The index is the sorted
    lines and their codes as byte strings: objects Python's cycle collector does not track, so taking
    up 60,000 entries creates no work for a collection that would hold every thread of the process."""

    def __init__(self, lines: list[bytes], codes: list[bytes], source: str) -> None:
        self.source = source
        self.lines = lines  # without the format line
        self.codes = codes  # sorted, as encode() wrote them
        self.parsed: dict[str, tuple[CatalogEntry, ...]] = {}

    @staticmethod
    def of(blob: bytes, source: str) -> LazyPeriods:
        lines = lines_of(blob)[1:]
        return LazyPeriods(lines, [line[: line.find(b"\t")] for line in lines], source)

    def rows(self, code: str) -> list[bytes]:
        key = code.encode()
        first = bisect.bisect_left(self.codes, key)
        last = bisect.bisect_right(self.codes, key, lo=first)
        return [line[len(key) + 1 :] for line in self.lines[first:last]]

    def __getitem__(self, code: str) -> tuple[CatalogEntry, ...]:
        found = self.parsed.get(code)
        if found is None:
            rows = self.rows(code)
            if not rows:
                raise KeyError(code)
            entries = [records.catalog_entry(json.loads(r), self.source, code) for r in rows]
            found = self.parsed[code] = tuple(sorted(entries, key=effective_from))
        return found

    def get(self, code: str, default: Any = None) -> Any:
        try:
            return self[code]
        except KeyError:
            return default

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and bool(self.rows(code))

    def __iter__(self) -> Iterator[str]:
        previous = None
        for code in self.codes:
            if code != previous:
                previous = code
                yield code.decode()

    def __len__(self) -> int:
        return sum(1 for _ in self)


def decode(blob: bytes, region: str, version: str, source: str) -> Catalog:
    if blob.startswith(FORMAT_LINE):
        return Catalog(region, version, LazyPeriods.of(blob, source))
    return records.catalog(json.loads(blob), region, version, source)


async def take_up(blob: bytes, region: str, version: str, source: str) -> Catalog:
    """decode() inside a serving process: the index is built a slice at a time, the event loop answering
    between slices (each well under a millisecond). No thread: a thread holding the GIL through a C call
    would make the loop wait for it anyway."""
    if not blob.startswith(FORMAT_LINE):
        return await asyncio.to_thread(decode, blob, region, version, source)  # a blob of the first format
    lines: list[bytes] = []
    start = blob.find(b"\n") + 1 if b"\n" in blob else len(blob)
    while start < len(blob):
        end = blob.find(b"\n", start + SPLIT_PIECE_BYTES // 4)
        end = len(blob) if end < 0 else end
        lines += blob[start:end].split(b"\n")
        start = end + 1
        await asyncio.sleep(0)
    codes: list[bytes] = []
    for first in range(0, len(lines), TAKE_UP_SLICE_LINES):
        codes += [line[: line.find(b"\t")] for line in lines[first : first + TAKE_UP_SLICE_LINES]]
        await asyncio.sleep(0)
    return Catalog(region, version, LazyPeriods(lines, codes, source))
