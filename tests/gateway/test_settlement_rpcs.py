"""Every RPC and every error class through a real gRPC channel against a real redis-server."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis

from adapters import redis_keys as keys
from gateway.protos import pb

from ..redis_state import accumulators
from .conftest import (
    CARD,
    HOSPITAL_2,
    LOST_CARD,
    NOT_DESIGNATED,
    PERSON,
    PHARMACY,
    Terminal,
    error_of,
)

pytestmark = pytest.mark.asyncio

# A five-day stay: in-scope 2,775.70 yuan; level 3 in the insured district: deductible 800.00,
# basic 85% of 1,975.70 = 1,679.345 -> 1,679.35; the rest (1,098.15) from the personal account.
STAY = [
    ("F000001", 3530, 5), ("T000005", 1500, 5), ("T000049", 120000, 1), ("T000060", 120000, 1),
    ("D000004", 350, 10), ("M000003", 1800, 2), ("M000001", 300, 5), ("T000006", 2000, 2),
]  # fmt: skip
BALANCE = 425_500


def balance(r: redis.Redis, person: str = PERSON) -> int:
    return int(r.hget(keys.state_key(person), "bal") or 0)


async def expect_error(call: Any) -> tuple[grpc.StatusCode, Any]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return error_of(info.value)


async def test_query_eligibility(stub: Any, terminal: Terminal) -> None:
    reply = await stub.QueryEligibility(
        pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no=CARD))
    )
    assert (reply.person_id, reply.masked_name, reply.account_balance_fen) == (PERSON, "张*", BALANCE)
    assert reply.masked_id_number.startswith("500103") and "*" in reply.masked_id_number
    assert [(e.region, e.district, e.scheme, e.tier) for e in reply.enrolments] == [
        ("500000", "500103", pb.SCHEME_EMPLOYEE, 1)
    ]
    limits = {(lim.layer, lim.visit_type): lim.remaining_fen for lim in reply.limits}
    assert limits[("basic", "inpatient")] == 10_000_000
    assert [r.code for r in reply.registrations] == ["M001"]
    assert reply.covered_here


async def test_card_problems_are_clear_rejections(stub: Any, terminal: Terminal) -> None:
    code, info = await expect_error(
        stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no=LOST_CARD))
        )
    )
    assert (code, info.reason, info.metadata["code"]) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CARD_LOST",
        "102",
    )
    code, info = await expect_error(
        stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no="Z00000000"))
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PERSON_NOT_FOUND")


async def test_presettle_changes_nothing(stub: Any, terminal: Terminal, sync_redis: redis.Redis) -> None:
    before = sync_redis.dbsize()
    reply = await stub.PreSettle(terminal.settle(STAY))
    s = reply.split
    assert (s.total_fen, s.deductible_fen, s.fund_total_fen, s.account_fen, s.cash_fen) == (
        277_750, 80_000, 167_935, 109_815, 0,
    )  # fmt: skip
    assert (s.policy_version, s.insured_region, s.insured_district) == ("cq-2026.1", "500000", "500103")
    assert sync_redis.dbsize() == before and balance(sync_redis) == BALANCE


async def test_settle_commits_once_and_a_retry_gets_the_same_bytes(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    request = terminal.settle(STAY)
    first = await stub.Settle(request)
    assert first.settlement_id.startswith(f"S{keys.partition_of(PERSON):03d}-")
    assert first.message_id == request.envelope.message_id and first.person_id == PERSON
    assert balance(sync_redis) == BALANCE - 109_815
    resent = pb.SettleRequest()
    resent.CopyFrom(request)
    resent.envelope.sent_at = "2026-06-15T10:31:07"  # a resend carries a new send time
    again = await stub.Settle(resent)
    assert again.SerializeToString() == first.SerializeToString()
    assert balance(sync_redis) == BALANCE - 109_815, "debited once"
    assert sync_redis.xlen(keys.stream_key(keys.partition_of(PERSON))) == 1, "queued for posting once"
    acc = accumulators(sync_redis, PERSON)
    assert acc["fund.basic"] == 167_935 and acc["stays.inpatient"] == 1


async def test_reused_message_id_with_another_payload(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    request = terminal.settle(STAY)
    await stub.Settle(request)
    other = terminal.settle(STAY[:2], message_id=request.envelope.message_id)
    code, info = await expect_error(stub.Settle(other))
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_REUSED")
    assert balance(sync_redis) == BALANCE - 109_815


async def test_invalid_input_names_every_field_and_writes_nothing(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    before = sync_redis.dbsize()
    request = terminal.settle([("T000049", -5, 0), ("", 100, 1)], visit=pb.VISIT_TYPE_UNSPECIFIED)
    request.envelope.message_id = ""
    code, bad = await expect_error(stub.Settle(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.field_violations] == [
        "envelope.message_id", "bill.visit_type", "bill.lines[0].unit_price_fen", "bill.lines[0].quantity",
        "bill.lines[1].code",
    ]  # fmt: skip
    assert sync_redis.dbsize() == before


async def test_business_rejections_carry_their_code(stub: Any, terminal: Terminal) -> None:
    code, info = await expect_error(stub.Settle(terminal.settle(STAY, institution=PHARMACY)))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VISIT_TYPE_NOT_AGREED")
    code, info = await expect_error(
        stub.Settle(terminal.settle([*STAY, ("X999999", 100, 1)], visit=pb.VISIT_TYPE_INPATIENT))
    )
    assert (info.reason, info.metadata["line_no"]) == ("UNKNOWN_ITEM", "9")
    code, info = await expect_error(stub.Settle(terminal.settle(STAY, institution="H00000000000")))
    assert info.reason == "INSTITUTION_UNKNOWN"
    code, info = await expect_error(
        stub.Settle(
            terminal.settle(
                [("T000001", 1000, 1)], visit=pb.VISIT_TYPE_OUTPATIENT, institution=NOT_DESIGNATED
            )
        )
    )
    assert info.reason == "INSTITUTION_NOT_DESIGNATED"


async def test_reverse_and_query(stub: Any, terminal: Terminal, sync_redis: redis.Redis) -> None:
    settle = terminal.settle(STAY)
    settled = await stub.Settle(settle)
    got = await stub.GetSettlement(
        pb.GetSettlementRequest(
            envelope=terminal.envelope(), original_message_id=settle.envelope.message_id,
            person=pb.PersonRef(card_no=CARD),
        )
    )  # fmt: skip
    assert got.status == pb.SETTLEMENT_STATUS_SETTLED
    assert got.settlement.SerializeToString() == settled.SerializeToString()

    reverse = pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
    mirror = await stub.Reverse(reverse)
    assert mirror.split.total_fen == -277_750 and mirror.split.account_fen == -109_815
    assert [f.amount_fen for f in mirror.split.funds] == [-f.amount_fen for f in settled.split.funds]
    assert balance(sync_redis) == BALANCE
    assert accumulators(sync_redis, PERSON) == {}, "the reversed stay left nothing behind"
    # the same reversal again, and a reversal of the same settlement under another message id
    assert (await stub.Reverse(reverse)).SerializeToString() == mirror.SerializeToString()
    by_message = pb.ReverseRequest(
        envelope=terminal.envelope(), original_message_id=settle.envelope.message_id,
        person=pb.PersonRef(card_no=CARD),
    )  # fmt: skip
    assert (await stub.Reverse(by_message)).SerializeToString() == mirror.SerializeToString()
    assert balance(sync_redis) == BALANCE, "refunded once"
    got = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
    )
    assert got.status == pb.SETTLEMENT_STATUS_REVERSED and got.reversal.reversal_id == mirror.reversal_id
    assert sync_redis.xlen(keys.stream_key(keys.partition_of(PERSON))) == 2  # settle + reverse


async def test_reverse_unknown_or_foreign_settlement_is_not_found(stub: Any, terminal: Terminal) -> None:
    settled = await stub.Settle(terminal.settle(STAY))
    code, info = await expect_error(
        stub.Reverse(
            pb.ReverseRequest(envelope=terminal.envelope(HOSPITAL_2), settlement_id=settled.settlement_id)
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "SETTLEMENT_NOT_FOUND")
    code, info = await expect_error(
        stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id="S001-260615-0000"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, bad = await expect_error(
        stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), original_message_id="X"))
    )
    assert (code, [v.field for v in bad.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["person.card_no"],
    )


async def test_pharmacy_pays_from_the_personal_account(stub: Any, terminal: Terminal) -> None:
    reply = await stub.Settle(
        terminal.settle(
            [("D000001", 1250, 2), ("D000147", 9800, 1)], visit=pb.VISIT_TYPE_PHARMACY, institution=PHARMACY
        )
    )
    assert (reply.split.fund_total_fen, reply.split.account_fen, reply.split.cash_fen) == (0, 12_300, 0)


@pytest.mark.single_node  # MONITOR of one server; the cluster's three: tests/cluster/test_cluster_gateway.py
async def test_a_settle_costs_two_redis_round_trips(stub: Any, terminal: Terminal, redis_server: Any) -> None:
    from loadtest.bench_gateway import CommandCounter

    await stub.QueryEligibility(  # the swipe before the bill: the card lookup is now cached
        pb.QueryEligibilityRequest(envelope=terminal.envelope(), person=pb.PersonRef(card_no=CARD))
    )
    await asyncio.sleep(0.5)  # let the background followers finish their start-up reads
    with CommandCounter(redis_server.url) as counter:
        await stub.Settle(terminal.settle(STAY))
    # the health monitor pings, and a pool may open a connection (HELLO): neither is per settlement
    per_settle = {k: v for k, v in counter.sent.items() if k not in ("ping", "hello", "client", "select")}
    assert per_settle == {"evalsha": 2}
    assert counter.in_scripts["xadd"] == 1


async def test_person_update_keeps_live_state(
    gateway: Any, stub: Any, terminal: Terminal, sync_redis: Any
) -> None:
    import json as jsonlib
    from pathlib import Path

    await stub.Settle(terminal.settle(STAY))
    persons = jsonlib.loads((Path(__file__).resolve().parents[2] / "citydata" / "persons.json").read_text())
    record = next(p for p in persons if p["person_id"] == PERSON)
    record["card_status"] = "frozen"
    record["account_balance_fen"] = 1  # the core system's stale balance must not overwrite the live one
    await gateway.store.put_person(record)
    assert balance(sync_redis) == BALANCE - 109_815
    _, info = await expect_error(stub.Settle(terminal.settle(STAY)))
    assert info.reason == "CARD_FROZEN"


async def test_settles_after_redis_lost_its_scripts(stub: Any, terminal: Terminal, sync_redis: Any) -> None:
    # a Redis restarted without persistence, or failed over, has no scripts: the gateway loads them again
    sync_redis.script_flush()
    first = await stub.Settle(terminal.settle(STAY))
    assert first.split.account_fen == 109_815
    assert balance(sync_redis) == BALANCE - 109_815


async def test_concurrent_settles_for_many_persons_share_pipelines(gateway: Any, terminal: Terminal) -> None:
    # 30 different persons at once: their reads and commits are coalesced, each gets its own answer
    # (30: under the edge's 32 calls in flight per institution, which would refuse the rest)
    from loadtest.synthetic import persons

    for record in persons(30):
        await gateway.store.put_person(record)
    requests = [terminal.settle(STAY, card=f"L{i:08d}") for i in range(30)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        from gateway.protos import pb_grpc

        stub = pb_grpc.SettlementServiceStub(channel)
        replies = await asyncio.gather(*(stub.Settle(r) for r in requests))
    assert len({r.settlement_id for r in replies}) == 30
    assert {r.person_id for r in replies} == {f"PSNLT{i:08d}" for i in range(30)}
