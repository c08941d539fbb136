"""Dates and versions on a real redis-server through real gRPC: a stay across new year priced by its
service dates and settled by its discharge date, a policy version published ahead taking over at
midnight in every process at once, publications that would overlap or leave a gap refused naming the
dates, a catalog code with two validity periods, QueryEligibility agreeing with PreSettle, and every
bad date named."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
import pytest_asyncio
import redis

from adapters.embedded_redis import EmbeddedRedis
from adapters.redis_topology import sync_client
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway
from rules_cache.keys import STATIC_POINTER
from rules_cache.static_data import Publication

from .conftest import CARD, HOSPITAL, Terminal, error_of

pytestmark = pytest.mark.asyncio
ZONE = ZoneInfo("Asia/Shanghai")
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "gateway.cli"]


class Clock:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


@pytest_asyncio.fixture
async def clocked(gateway: Gateway) -> AsyncIterator[Callable[[datetime], Any]]:
    """Gateways on the demo data with a clock the test sets (each its own process in production)."""
    started: list[Gateway] = []
    channels: list[Any] = []

    async def make(when: datetime) -> tuple[Any, Clock]:
        clock = Clock(when)
        gw = await Gateway(gateway.config, gateway.redis_url, now=clock).start()
        started.append(gw)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}")
        channels.append(channel)
        return pb_grpc.SettlementServiceStub(channel), clock

    yield make
    for channel in channels:
        await channel.close()
    for gw in started:
        await gw.stop()


async def expect_error(call: Any) -> tuple[grpc.StatusCode, Any]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return error_of(info.value)


def dated(text: str, version: str, start: str, end: str | None = None) -> str:
    """A policy file's text as another version with other dates."""
    dates = f'effective_from = "{start}"' + (f'\neffective_to = "{end}"' if end else "")
    out = text.replace('version = "yc-2026.1"', f'version = "{version}"')
    return out.replace('effective_from = "2026-01-01"', dates)


def stay(terminal: Terminal, lines: list[tuple[str, int, int, str]], admitted: str, discharged: str) -> Any:
    request = terminal.settle([(c, p, q) for c, p, q, _ in lines])
    request.bill.admission_date, request.bill.discharge_date = admitted, discharged
    for line, (*_, served) in zip(request.bill.lines, lines, strict=True):
        line.service_date = served
    return request


async def test_a_stay_across_new_year_is_priced_by_its_service_dates(
    clocked: Any, terminal: Terminal
) -> None:
    # M000003's price limit is 18.00 until 2026-12-31 and 16.00 from 2027-01-01 (citydata). A stay from
    # 12-28 to 01-03, settled on 01-03: the units given on 12-30 are within the old limit, those of
    # 01-02 are 2.00 each over the new one. By its discharge date the stay is 2027's, under cq-2027.1.
    stub, _ = await clocked(datetime(2027, 1, 3, 10, 0, tzinfo=ZONE))
    request = stay(
        terminal,
        [
            ("M000003", 1_800, 2, "2026-12-30"),
            ("M000003", 1_800, 2, "2027-01-02 09:30:00"),
            ("T000049", 120_000, 1, ""),
        ],
        "2026-12-28",
        "2027-01-03",
    )
    settled = await stub.Settle(request)
    s = settled.split
    assert [(ln.over_limit_fen, ln.price_limit_fen) for ln in s.lines[:2]] == [(0, 1_800), (400, 1_600)]
    assert (s.policy_version, s.plan_year) == ("cq-2027.1", 2027)


async def test_next_years_policy_takes_over_at_midnight_in_every_process(
    clocked: Any, terminal: Terminal
) -> None:
    # cq-2027.1 is published ahead beside cq-2026.1 (citydata). Two gateway processes, one second before
    # and at midnight: no request refused, and both switch by the date, not by a message.
    one, clock_one = await clocked(datetime(2026, 12, 31, 23, 59, 59, tzinfo=ZONE))
    two, clock_two = await clocked(datetime(2026, 12, 31, 23, 59, 59, tzinfo=ZONE))
    visit = [("T000005", 1_500, 2)]
    before = [await s.PreSettle(terminal.settle(visit, visit=pb.VISIT_TYPE_OUTPATIENT)) for s in (one, two)]
    clock_one.when = clock_two.when = datetime(2027, 1, 1, 0, 0, 0, tzinfo=ZONE)
    after = [await s.PreSettle(terminal.settle(visit, visit=pb.VISIT_TYPE_OUTPATIENT)) for s in (one, two)]
    assert [r.split.policy_version for r in before] == ["cq-2026.1", "cq-2026.1"]
    assert [r.split.policy_version for r in after] == ["cq-2027.1", "cq-2027.1"]


async def test_a_version_that_would_overlap_or_leave_a_gap_is_refused_naming_the_dates(
    redis_server: EmbeddedRedis, gateway: Gateway, tmp_path: Path
) -> None:
    text = (ROOT / "citydata" / "policies" / "320900-yancheng.toml").read_text()
    overlap = tmp_path / "yc-overlap.toml"
    overlap.write_text(dated(text, "yc-x", "2025-06-01", "2026-03-31"))
    gap = tmp_path / "yc-gap.toml"
    gap.write_text(dated(text, "yc-2027.1", "2027-03-01"))
    load = [*CLI, "load", "--redis", redis_server.url, "--policy"]
    r = sync_client(redis_server.url)
    pointer = r.hgetall(STATIC_POINTER)
    refused = subprocess.run([*load, str(overlap)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "yc-2026.1 begins on 2026-01-01, inside yc-x (2025-06-01 to 2026-03-31)" in refused.stderr
    # yc-2026.1 is open-ended: a later version ends it, no gap; one with an end date leaves one
    second_half = tmp_path / "yc-h2.toml"
    second_half.write_text(dated(text, "yc-h2", "2026-07-01", "2026-09-30"))
    gapped = subprocess.run([*load, str(second_half), "--policy", str(gap)], capture_output=True, text=True)
    assert gapped.returncode == 2
    assert (
        "no policy would be in force from 2026-10-01 to 2027-02-28 (between yc-h2 and yc-2027.1)"
        in gapped.stderr
    )
    assert r.hgetall(STATIC_POINTER) == pointer, "nothing was written"
    dry = subprocess.run([*load, str(gap), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert (
        "2026-01-01 to 2027-02-28: yc-2026.1" in dry.stdout
        and "2027-03-01 until a later version: yc-2027.1" in dry.stdout
    )
    assert r.hgetall(STATIC_POINTER) == pointer, "a dry run writes nothing"


async def test_a_catalog_code_with_two_periods_loads_and_overlapping_periods_are_refused(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    header = (ROOT / "citydata" / "catalogs" / "500000.csv").read_text().splitlines()[0]
    good = tmp_path / "good.csv"
    good.write_text("\n".join([
        header,
        "X1,药,drug,B,1000,,2000,,0,,,,,,2026-01-01,2026-06-30,盒,1900",
        "X1,药,drug,B,1000,,1800,,0,,,,,,2026-07-01,,盒,1900",
    ]) + "\n")  # fmt: skip
    loaded = subprocess.run(
        [*CLI, "load", "--redis", redis_server.url, "--catalog", f"500000={good}", "--dry-run"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert loaded.returncode == 0 and "1 codes with several validity periods" in loaded.stdout, loaded.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text().replace("2026-07-01,,盒", "2026-06-15,,盒"))
    refused = subprocess.run(
        [*CLI, "load", "--redis", redis_server.url, "--catalog", f"500000={bad}"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert (
        "bad.csv: line 3.effective_from: X1: the period from 2026-06-15 overlaps"
        " the one from 2026-01-01 to 2026-06-30" in refused.stderr
    )


async def test_query_eligibility_and_presettle_agree_when_no_version_is_in_force(
    gateway: Gateway, stub: Any, terminal: Terminal
) -> None:
    # Yancheng's only version replaced by one that ended yesterday (2026-06-14): a card swipe says "not
    # covered here" with the reason a PreSettle then gets.
    text = (ROOT / "citydata" / "policies" / "320900-yancheng.toml").read_text()
    text = dated(text, "yc-ended", "2026-01-01", "2026-06-14")
    publication = Publication()
    publication.add_policy(text, "yc.toml")
    await publication.publish(gateway.store.client, force=True)  # type: ignore[union-attr]
    await gateway.service.static.refresh()  # type: ignore[union-attr]
    yancheng_card, yancheng_hospital = "Z17189986", "H32090200001"
    reply = await stub.QueryEligibility(
        pb.QueryEligibilityRequest(
            envelope=terminal.envelope(yancheng_hospital), person=pb.PersonRef(card_no=yancheng_card)
        )
    )
    assert not reply.covered_here and reply.not_covered_reason.startswith("POLICY_NOT_IN_FORCE")
    code, info = await expect_error(
        stub.PreSettle(terminal.settle([("T000005", 1_500, 1)], visit=pb.VISIT_TYPE_OUTPATIENT,
                                       institution=yancheng_hospital, card=yancheng_card))
    )  # fmt: skip
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "POLICY_NOT_IN_FORCE")
    ok = await stub.QueryEligibility(
        pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no=CARD))
    )
    assert ok.covered_here and not ok.not_covered_reason


async def test_every_bad_date_is_named(stub: Any, terminal: Terminal, sync_redis: redis.Redis) -> None:
    before = sync_redis.dbsize()
    request = stay(
        terminal, [("T000049", 120_000, 1, "2026-06-01"), ("T000060", 120_000, 1, "yesterday")],
        "2026-06-10", "2026-06-08",
    )  # fmt: skip
    code, bad = await expect_error(stub.Settle(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field: v.description for v in bad.field_violations} == {
        "bill.discharge_date": "2026-06-08 is before the admission date 2026-06-10",
        "bill.lines[0].service_date": "2026-06-01 is outside the stay (2026-06-10 to 2026-06-08)",
        "bill.lines[1].service_date": "a date YYYY-MM-DD (or YYYY-MM-DD HH:MM:SS), not 'yesterday'",
    }
    old = terminal.settle([("T000005", 1_500, 1)], visit=pb.VISIT_TYPE_OUTPATIENT)
    old.bill.visit_date = "2023-06-01"
    old.bill.admission_date = "2023-06-01"
    code, bad = await expect_error(stub.Settle(old))
    assert [v.field for v in bad.field_violations] == [
        "bill.visit_date",
        "bill.admission_date",
        "bill.admission_date",
    ]
    assert "outside 2024-06-15 to 2026-06-16" in bad.field_violations[0].description
    assert sync_redis.dbsize() == before, "nothing written"
    assert HOSPITAL
