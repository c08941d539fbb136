"""A person's year over a real gRPC channel and a real redis-server: message ids that are one key per
institution across every person, a reversal by message id that comes before its Settle, partial refunds,
corrections of earlier settlements, and a commit script that checks everything before it writes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis

from adapters import redis_keys as keys
from gateway.engine.plan_year import BILL_TOTAL_MAX_FEN
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway
from rules_cache.static_data import Publication

from ..redis_state import accumulators, balance, live
from .conftest import CARD, HOSPITAL, PERSON, Terminal, error_of
from .test_settlement_rpcs import STAY

pytestmark = pytest.mark.asyncio
BALANCE = 425_500
OTHER_CARD = "L52326203"  # PSN500000000002, Chongqing employee, balance 1,461.00
OTHER = "PSN500000000002"
JINAN_CARD = "V62990074"  # PSN370100000008, Jinan resident, district 370126
JINAN_PERSON = "PSN370100000008"
JINAN_LEVEL2 = "H37012600001"  # level 2, district 370126


async def expect_error(call: Any) -> tuple[grpc.StatusCode, Any]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return error_of(info.value)


def everything(r: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialised value: equal before and after means nothing was written."""
    return {k: r.dump(k) for k in sorted(r.keys("*")) if not k.startswith(b"ms:static")}


# ---------------------------------------------------------------- one message id, one request


async def test_a_message_id_names_one_request_across_persons(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    first = terminal.settle(STAY)
    await stub.Settle(first)
    other = terminal.settle(STAY, card=OTHER_CARD, message_id=first.envelope.message_id)
    before = everything(sync_redis)
    code, info = await expect_error(stub.Settle(other))
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_REUSED")
    assert balance(sync_redis, OTHER) == 146_100, "the second person is not charged"
    assert everything(sync_redis) == before, "nothing is written for the refused request"


async def test_a_reversal_never_answers_under_a_settles_message_id(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    settle = terminal.settle(STAY)
    settled = await stub.Settle(settle)
    reverse = pb.ReverseRequest(
        envelope=terminal.envelope(message_id=settle.envelope.message_id), settlement_id=settled.settlement_id
    )
    code, info = await expect_error(stub.Reverse(reverse))
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_REUSED")
    assert balance(sync_redis) == BALANCE - 109_815, "still settled"


# ---------------------------------------------------------------- 2601 before its Settle


def by_message(terminal: Terminal, original: str, card: str = CARD) -> Any:
    return pb.ReverseRequest(
        envelope=terminal.envelope(), original_message_id=original, person=pb.PersonRef(card_no=card)
    )


async def test_a_reversal_that_comes_first_voids_the_message_id(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    # The terminal timed out and sent 2601 while its Settle was still on the way: the reversal's answer
    # ("nothing was settled, and nothing will be") must stay true when the Settle arrives.
    settle = terminal.settle(STAY)
    reverse = by_message(terminal, settle.envelope.message_id)
    answer = await stub.Reverse(reverse)
    assert answer.nothing_settled and not answer.settlement_id
    code, info = await expect_error(stub.Settle(settle))
    assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MESSAGE_ID_VOID")
    assert balance(sync_redis) == BALANCE and accumulators(sync_redis, PERSON) == {}
    assert (await stub.Reverse(reverse)).SerializeToString() == answer.SerializeToString(), "idempotent"


async def test_reversal_and_settle_racing_never_leave_a_one_sided_charge(
    gateway: Gateway, stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    # 42 races of a Settle and the 2601 for its message id, sent at once to two gateway processes.
    # Whoever wins, the terminal's two answers agree: either the reversal reversed the settlement, or it
    # voided the message id and the Settle was refused. The person ends where they started.
    second = await Gateway(gateway.config, gateway.redis_url, now=gateway.now).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            other = pb_grpc.SettlementServiceStub(channel)
            outcomes = []
            for i in range(42):
                settle = terminal.settle(STAY)
                reverse = by_message(terminal, settle.envelope.message_id)
                calls = (
                    (stub.Settle(settle), other.Reverse(reverse))
                    if i % 2
                    else (other.Settle(settle), stub.Reverse(reverse))
                )
                outcomes.append(await asyncio.gather(*calls, return_exceptions=True))
    finally:
        await second.stop()
    kinds = set()
    for settled, reversed_ in outcomes:
        assert isinstance(reversed_, pb.ReverseResponse), reversed_
        if isinstance(settled, pb.SettleResponse):
            assert reversed_.settlement_id == settled.settlement_id and not reversed_.nothing_settled
            kinds.add("settled, then reversed")
        else:
            assert isinstance(settled, grpc.aio.AioRpcError)
            assert error_of(settled)[1].reason == "MESSAGE_ID_VOID" and reversed_.nothing_settled
            kinds.add("voided, then refused")
    assert balance(sync_redis) == BALANCE and accumulators(sync_redis, PERSON) == {}
    assert live(sync_redis, PERSON) == []
    assert kinds, outcomes


# ---------------------------------------------------------------- partial refunds


async def test_a_partial_refund_is_split_again_in_place_and_booked_as_a_difference(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    # STAY line 5 is D000004 10 x 3.50; the patient returns 4 of them (14.00): the rest of the bill is
    # split again: basic 85% of 14.00 less = 11.90 less, the account 2.10 less.
    settle = terminal.settle(STAY)
    settled = await stub.Settle(settle)
    refund = pb.RefundRequest(
        envelope=terminal.envelope(),
        settlement_id=settled.settlement_id,
        lines=[pb.RefundLine(line_no=5, quantity=4)],
    )
    answer = await stub.Refund(refund)
    d = answer.difference
    assert (d.total_fen, d.fund_total_fen, d.account_fen, d.cash_fen) == (-1_400, -1_190, -210, 0)
    assert answer.split.total_fen == 277_750 - 1_400 and answer.split.lines[4].amount_fen == 2_100
    assert balance(sync_redis) == BALANCE - 109_815 + 210
    assert (await stub.Refund(refund)).SerializeToString() == answer.SerializeToString(), "idempotent"
    assert balance(sync_redis) == BALANCE - 109_815 + 210, "refunded once"
    got = await stub.GetSettlement(
        pb.GetSettlementRequest(envelope=terminal.envelope(), settlement_id=settled.settlement_id)
    )
    assert got.settlement.SerializeToString() == settled.SerializeToString(), "the original answer stays"
    assert [c.kind for c in got.corrections] == ["refund"] and got.current.total_fen == 276_350
    assert accumulators(sync_redis, PERSON)["fund.basic"] == 167_935 - 1_190
    events = sync_redis.xrange(keys.stream_key(keys.partition_of(PERSON)))
    assert [e[1][b"type"] for e in events] == [b"settle", b"refund"]
    # a line the settlement does not have, or more units than it has left
    for line_no, quantity in ((9, 1), (5, 7)):
        bad = pb.RefundRequest(
            envelope=terminal.envelope(),
            settlement_id=settled.settlement_id,
            lines=[pb.RefundLine(line_no=line_no, quantity=quantity)],
        )
        code, info = await expect_error(stub.Refund(bad))
        assert (code, info.reason, info.metadata["line_no"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REFUND_INVALID",
            str(line_no),
        )


async def test_a_correction_of_an_earlier_settlement_is_refused_naming_the_later_ones(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    first = await stub.Settle(terminal.settle(STAY))
    second = await stub.Settle(terminal.settle(STAY))
    before = everything(sync_redis)
    for call in (
        stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=first.settlement_id)),
        stub.Refund(
            pb.RefundRequest(
                envelope=terminal.envelope(),
                settlement_id=first.settlement_id,
                lines=[pb.RefundLine(line_no=5, quantity=1)],
            )
        ),
    ):
        code, info = await expect_error(call)
        assert (code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LATER_SETTLEMENTS_EXIST")
    assert everything(sync_redis) == before
    # latest first: then the earlier one
    await stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=second.settlement_id))
    await stub.Reverse(pb.ReverseRequest(envelope=terminal.envelope(), settlement_id=first.settlement_id))
    assert balance(sync_redis) == BALANCE and accumulators(sync_redis, PERSON) == {}


async def test_a_policy_that_readjudicates_books_the_later_stays_difference(
    gateway: Gateway, stub: Any, terminal: Terminal, sync_redis: redis.Redis
) -> None:
    # Jinan (tests/engine/test_plan_year_golden.py): two 30,000-yuan stays at a level-2 hospital; the
    # first is reversed under a policy version that re-adjudicates: the second pays 4,390.00 less.
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "citydata" / "policies" / "370100-jinan.toml").read_text()
    text = text.replace('version = "jn-2026.1"', 'version = "jn-2026.1-readjudicate"')
    publication = Publication()
    publication.add_policy(text + '\n[corrections]\nlater_settlements = "readjudicate"\n', "jinan.toml")
    await publication.publish(gateway.store.client, force=True)  # type: ignore[union-attr]  # replaces it
    await gateway.service.static.refresh()  # type: ignore[union-attr]
    stays = []
    for _ in range(2):
        request = terminal.settle([("D000004", 3_000_000, 1)], institution=JINAN_LEVEL2, card=JINAN_CARD)
        stays.append(await stub.Settle(request))
    assert [sum(f.amount_fen for f in s.split.funds) for s in stays] == [2_008_000, 2_102_000 + 345_000]
    reversed_ = await stub.Reverse(
        pb.ReverseRequest(envelope=terminal.envelope(JINAN_LEVEL2), settlement_id=stays[0].settlement_id)
    )
    (adjustment,) = reversed_.adjustments
    assert adjustment.settlement_id == stays[1].settlement_id
    assert {f.fund_code: f.amount_fen for f in adjustment.difference.funds if f.amount_fen} == {
        "390100": -94_000,
        "390200": -345_000,
    }
    assert (adjustment.difference.fund_total_fen, adjustment.difference.cash_fen) == (-439_000, 439_000)
    got = await stub.GetSettlement(
        pb.GetSettlementRequest(
            envelope=terminal.envelope(JINAN_LEVEL2), settlement_id=stays[1].settlement_id
        )
    )
    assert [c.kind for c in got.corrections] == ["adjustment"] and got.current.fund_total_fen == 2_008_000
    events = [e[1][b"type"] for e in sync_redis.xrange(keys.stream_key(keys.partition_of(JINAN_PERSON)))]
    assert events == [b"settle", b"settle", b"reverse", b"adjust"]
    plan = "370100:resident"
    assert live(sync_redis, JINAN_PERSON, plan=plan) == [stays[1].settlement_id]
    assert accumulators(sync_redis, JINAN_PERSON, plan=plan)["fund.basic"] == 2_008_000


# ---------------------------------------------------------------- bounds and the commit script


async def test_a_bill_above_the_documented_maximum_is_an_input_error(stub: Any, terminal: Terminal) -> None:
    lines = [("T000049", 100_000_000, 6), ("T000060", 100_000_000, 5)]  # 11,000,000.00 yuan
    code, bad = await expect_error(stub.Settle(terminal.settle(lines)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, "exceeds" in v.description) for v in bad.field_violations] == [("bill.lines", True)]
    assert BILL_TOTAL_MAX_FEN == 1_000_000_000


@pytest.mark.parametrize("poisoned", ["state", "year", "idem", "stream", "claim"])
async def test_a_key_of_the_wrong_type_refuses_the_whole_commit(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, poisoned: str
) -> None:
    # Data in Redis that is not ours (a string where a hash belongs...): the commit script checks every
    # key's type before its first write, so the settlement fails whole, UNAVAILABLE, nothing written.
    request = terminal.settle(STAY)
    msgid = request.envelope.message_id
    key = {
        "state": keys.state_key(PERSON),
        "year": keys.year_key(PERSON, 2026),
        "idem": keys.idem_key(keys.partition_of(PERSON), HOSPITAL, msgid),
        "stream": keys.stream_key(keys.partition_of(PERSON)),
        "claim": keys.claim_key(HOSPITAL, msgid),
    }[poisoned]
    if poisoned == "state":
        value = sync_redis.hget(key, "ver") or b"0"
        sync_redis.delete(key)
        sync_redis.rpush(key, value)
    elif poisoned == "claim":
        sync_redis.hset(key, "x", "1")
    else:
        sync_redis.delete(key)
        sync_redis.set(key, "not ours")
    before = everything(sync_redis)
    code, info = await expect_error(stub.Settle(request))
    if poisoned == "state":  # the read already fails on it: still UNAVAILABLE, still nothing written
        assert code == grpc.StatusCode.UNAVAILABLE
    else:
        assert (code, info.reason) == (grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert everything(sync_redis) == before


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["V", "1", "0", "5"], "bad version operands"),
        (["V", "9", "0", "1"], "bad key index"),
        (["I", "1", "1", "bal", "12.5"], "not an integer"),
        (["I", "1", "1", "bal", "1" + "0" * 16], "not an integer"),
        (["N", "1", "1", "arch", "-3.5"], "not an integer"),  # retention's increment of arch
        (["R", "1", "1", "S1"], "used as two types"),  # SREM on the state hash
        (["K", "0"], "bad key index"),
        (["H", "1", "3", "a", "b"], "too few operands"),
        (["H", "1", "x"], "bad count"),
        (["Q", "1"], "unknown operation"),
        (["H", "1", "1", "a", "b", "X", "1", "1", "type", "x"], "used as two types"),
    ],
)
async def test_every_malformed_operation_is_refused_before_anything_is_written(
    gateway: Gateway, sync_redis: redis.Redis, args: list[str], reason: str
) -> None:
    store = gateway.store
    assert store is not None
    state = keys.state_key(PERSON)
    before = everything(sync_redis)
    # a valid write first in the list: refused with the rest, since the checks run before any write
    reply = await store._commit(keys=[state], args=["H", "1", "1", "touched", "yes", *args])
    assert reply[0] == b"REFUSED" and reason in reply[1].decode(), reply
    assert everything(sync_redis) == before


@pytest.mark.single_node  # MONITOR of one server; on a cluster: tests/cluster/
async def test_a_settle_costs_two_redis_round_trips(
    stub: Any, terminal: Terminal, redis_server: Any, sync_redis: redis.Redis
) -> None:
    # The read (person, plan-years, message record) and the commit: two scripts, nothing else. The
    # card lookup is cached after the first call, as it is for a card swiped twice. MONITOR shows each
    # command a client sent (and, marked "lua", what the scripts ran inside: not round trips).
    import threading

    await stub.Settle(terminal.settle(STAY))
    seen: list[str] = []
    ready = threading.Event()

    def watch() -> None:
        with redis.Redis.from_url(redis_server.url).monitor() as m:
            ready.set()
            for command in m.listen():
                text = str(command["command"])
                if "monitor-stop" in text:
                    return
                if command.get("client_type") != "lua" and "lua" not in str(command.get("client_address")):
                    seen.append(text.split()[0].upper())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    await asyncio.sleep(0.2)
    seen.clear()
    await stub.Settle(terminal.settle(STAY))
    sync_redis.echo("monitor-stop")
    thread.join(5)
    handshakes = ("PING", "HELLO", "AUTH", "CLIENT", "ECHO")  # connections, the monitor's own included
    assert [c for c in seen if c not in handshakes] == ["EVALSHA", "EVALSHA"], seen


async def test_a_broken_invariant_is_answered_unavailable_never_unknown(
    stub: Any, terminal: Terminal, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug that breaks a money invariant raises inside the engine: the terminal learns "outcome
    # unknown" (UNAVAILABLE, GATEWAY_FAULT) and nothing is written; an operator is paged.
    from gateway import service
    from gateway.engine.money import InvariantViolation
    from telemetry import metrics

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise InvariantViolation("fund + account + cash != total")

    monkeypatch.setattr(service, "split", broken)
    faults = metrics.GATEWAY_FAULTS.labels("Settle", "InvariantViolation")
    counted = faults._value.get()
    before = everything(sync_redis)
    code, info = await expect_error(stub.Settle(terminal.settle(STAY)))
    assert (code, info.reason) == (grpc.StatusCode.UNAVAILABLE, "GATEWAY_FAULT")
    assert faults._value.get() == counted + 1
    assert everything(sync_redis) == before
