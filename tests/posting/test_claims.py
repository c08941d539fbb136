"""Claims after the fact (手工报销) end to end: agency staff submit a claim over a real gRPC channel to
a gateway on a real redis-server; it is split by the insured region's [claims] rules on the person's
plan-year, committed, booked by the posting worker into the ledger (SQLite and PostgreSQL) as a payable
to the person, and shows in the person's statement. Chongqing's shipped policy: out-of-city care is
claimed with deductible +5% and ratio -5 points; care at a non-designated institution is not claimable."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.posting import month_end as me
from gateway.posting import statements
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.protos import claims_grpc, claims_pb, pb, pb_grpc
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW
from ..gateway.conftest import CARD, PERSON, error_of
from ..redis_state import accumulators
from .test_month_end import ACCOUNTS, AFTER, JULY
from .test_worker import run_until_caught_up

pytestmark = pytest.mark.asyncio
PAYEE = f"person:{PERSON}"


@pytest_asyncio.fixture
async def claims_gateway(redis_server: EmbeddedRedis, ledger_dsn: str) -> AsyncIterator[Gateway]:
    config = Config(
        listen="127.0.0.1:0", redis_url=redis_server.url, ledger_dsn=ledger_dsn, index_key=INDEX_KEY
    )
    client = redis_client(redis_server.url, config)
    await load_citydata_dir(client, config.citydata, index=INDEX)
    await client.aclose()
    gw = await Gateway(config, redis_server.url, now=lambda: NOW).start()
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def stub(claims_gateway: Gateway) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{claims_gateway.port}") as channel:
        yield claims_grpc.ClaimServiceStub(channel)


def claim(claim_no: str = "CQ-CLAIM-2026-000001", **changes: Any) -> Any:
    fields: dict[str, Any] = {
        "claim_no": claim_no, "person": pb.PersonRef(card_no=CARD),
        "claim_case": claims_pb.CLAIM_CASE_OUT_OF_CITY, "visit_type": pb.VISIT_TYPE_INPATIENT,
        "institution_name": "四川大学华西医院", "institution_level": 3,
        "admission_date": "2026-06-01", "discharge_date": "2026-06-10",
        "total_fen": 2_000_000, "full_selfpay_fen": 100_000, "over_limit_fen": 50_000,
        "first_selfpay_fen": 150_000, "operator_id": "clerk-7",
    }  # fmt: skip
    fields.update(changes)
    return claims_pb.ClaimRequest(**fields)


async def test_a_claim_is_split_booked_to_the_person_and_shows_in_a_statement(
    stub: Any, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    reply = await stub.SubmitClaim(claim())
    s = reply.split
    # receipts 20,000.00: full self-pay 1,000.00, over-limit 500.00, first self-pay 1,500.00 -> in scope
    # 17,000.00. Level 3 deductible 800.00 x 1.05 = 840.00; ratio 85% - 5 = 80% of 16,160.00 = 12,928.00
    # owed by the employee pooled fund; the person's share 20,000.00 - 12,928.00 = 7,072.00 (already paid)
    assert (s.total_fen, s.in_scope_fen, s.deductible_fen) == (2_000_000, 1_700_000, 84_000)
    assert (s.fund_total_fen, s.account_fen, s.cash_fen) == (1_292_800, 0, 707_200)
    assert [(f.fund_code, f.amount_fen) for f in s.funds if f.amount_fen] == [("310100", 1_292_800)]
    assert list(s.flags) == ["CLAIM_OUT_OF_CITY", "PENALTY_CLAIM"]
    assert reply.person_id == PERSON and reply.claim_no == "CQ-CLAIM-2026-000001"

    again = await stub.SubmitClaim(claim(operator_id="clerk-8"))  # the same claim, another clerk
    assert again.SerializeToString() == reply.SerializeToString()

    sync = sync_client(redis_server.url)
    acc = accumulators(sync, PERSON)  # on the person's plan-year, like a stay settled at the counter
    assert (acc["ded.inpatient"], acc["fund.basic"], acc["stays.inpatient"]) == (84_000, 1_292_800, 1)

    ledger = Ledger(ledger_dsn)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    (month,) = statements.institution_statements(ledger, "2026-06", PAYEE)
    assert (month.settlements, month.total_fen, month.fund_total_fen, month.cash_fen) == (
        1, 2_000_000, 1_292_800, 707_200,
    )  # fmt: skip
    assert month.funds == {"310100": 1_292_800}
    payable = ledger.query(
        "SELECT debit, credit, amount_fen FROM transfers WHERE credit = ?", [f"payable:500000/500103:{PAYEE}"]
    )
    assert [(str(d), int(a)) for d, _, a in payable] == [("fund:500000/500103:employee:310100", 1_292_800)]
    # month end closes institutions: the person's claim is not a clearing application, and does not
    # stop the month from closing (it has no bank account in the institutions' file)
    assert me.close_month(ledger, "2026-06", None, JULY, AFTER, ACCOUNTS) == []


async def test_a_claim_number_is_idempotent_and_reuse_is_refused(
    stub: Any, redis_server: EmbeddedRedis
) -> None:
    await stub.SubmitClaim(claim("CQ-CLAIM-2026-000002"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitClaim(claim("CQ-CLAIM-2026-000002", total_fen=2_100_000))
    code, info = error_of(caught.value)
    assert (code, info.reason) == (grpc.StatusCode.ALREADY_EXISTS, "MESSAGE_ID_REUSED")
    assert "CQ-CLAIM-2026-000002" in caught.value.details()


async def test_a_case_the_policy_does_not_pay_is_refused_and_writes_nothing(
    stub: Any, redis_server: EmbeddedRedis
) -> None:
    sync = sync_client(redis_server.url)
    before = {k: sync.dump(k) for k in sync.keys("*")}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitClaim(claim("CQ-CLAIM-2026-000003", claim_case=claims_pb.CLAIM_CASE_NON_DESIGNATED))
    code, info = error_of(caught.value)
    assert (code, info.reason, info.metadata["code"]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "CLAIM_CASE_NOT_COVERED", "421",
    )  # fmt: skip
    assert {k: sync.dump(k) for k in sync.keys("*")} == before


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"total_fen": 100_000}, ["total_fen"]),  # smaller than its parts (300,000)
        ({"claim_no": ""}, ["claim_no"]),
        ({"claim_case": 0}, ["claim_case"]),
        ({"discharge_date": ""}, ["discharge_date"]),
        ({"visit_date": "2026-06-10"}, ["visit_date"]),  # an inpatient claim has a stay's dates
        ({"discharge_date": "2026-07-01"}, ["discharge_date"]),  # after the gateway's today (06-15)
        ({"over_limit_fen": -1}, ["over_limit_fen"]),
        ({"institution_level": 9}, ["institution_level"]),
    ],
)
async def test_bad_claims_name_the_field(stub: Any, changes: dict[str, Any], fields: list[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SubmitClaim(claim(**{"claim_no": "CQ-CLAIM-2026-000009", **changes}))
    code, bad = error_of(caught.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in bad.field_violations] == fields


CLAIM_FILE = Path(__file__).resolve().parents[2] / "examples" / "claims" / "cq-out-of-city-inpatient.json"


async def medsettle(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_claim_command_submits_a_claim_file(claims_gateway: Gateway, tmp_path: Path) -> None:
    target = f"127.0.0.1:{claims_gateway.port}"
    code, out, err = await medsettle("claim", str(CLAIM_FILE), "--target", target, "--insecure")
    assert code == 0, err
    reply = json.loads(out)
    assert (reply["claim_no"], reply["person_id"]) == ("CQ-CLAIM-2026-000001", PERSON)
    assert (reply["split"]["fund_total_fen"], reply["split"]["cash_fen"]) == ("1292800", "707200")
    again = await medsettle("claim", str(CLAIM_FILE), "--target", target, "--insecure")
    assert (again[0], json.loads(again[1])) == (0, reply)  # idempotent by claim number

    bad = json.loads(CLAIM_FILE.read_text(encoding="utf-8"))
    bad["case"] = "abroad"
    path = tmp_path / "bad-claim.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    code, out, err = await medsettle("claim", str(path), "--target", target, "--insecure")
    assert (code, out) == (2, "")
    assert "bad-claim.json: case: 'abroad' is not one of: non_designated, emergency, out_of_city" in err

    bad = json.loads(CLAIM_FILE.read_text(encoding="utf-8")) | {"total_fen": 1000, "claim_no": "CQ-X-1"}
    path.write_text(json.dumps(bad), encoding="utf-8")
    code, out, err = await medsettle("claim", str(path), "--target", target, "--insecure")
    assert code == 1 and "INVALID_ARGUMENT" in err and "total_fen:" in err


async def test_a_booked_claim_reconciles_by_claim_number(
    claims_gateway: Gateway, stub: Any, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    await stub.SubmitClaim(claim("CQ-CLAIM-2026-000010"))
    sync = sync_client(redis_server.url)
    ledger = Ledger(ledger_dsn)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{claims_gateway.port}") as channel:
        ledger_stub = pb_grpc.LedgerServiceStub(channel)
        envelope = pb.Envelope(
            institution_code=PAYEE, terminal_id="agency", operator_id="clerk", message_id="REC-C1"
        )
        item = pb.ReconcileItem(
            message_id="CQ-CLAIM-2026-000010", total_fen=2_000_000, fund_total_fen=1_292_800
        )
        answer = await ledger_stub.Reconcile(
            pb.ReconcileRequest(envelope=envelope, date_from="2026-06-15", date_to="2026-06-15", items=[item])
        )
    assert answer.gateway_totals.count == 1 and answer.gateway_totals.fund_total_fen == 1_292_800
    assert [(i.message_id, i.status) for i in answer.items] == [
        ("CQ-CLAIM-2026-000010", pb.ITEM_STATUS_MATCHED)
    ]


async def test_the_auditor_splits_a_claim_again_and_finds_the_ledger_agrees(
    claims_gateway: Gateway, stub: Any, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    """A claim and a settlement after it in the same plan-year (it sees the claim's deductible and
    stay): the auditor re-splits both from their recorded inputs, folds the plan-year and checks the
    ledger: no difference. A claim's recorded split altered is found."""
    from gateway.audit import audit_redis

    from ..gateway.conftest import Terminal

    submitted = await stub.SubmitClaim(claim("CQ-CLAIM-2026-000020"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{claims_gateway.port}") as channel:
        settled = await pb_grpc.SettlementServiceStub(channel).Settle(
            Terminal().settle([("T000006", 2_000, 1)])
        )
    assert settled.settlement_id
    sync = sync_client(redis_server.url)
    ledger = Ledger(ledger_dsn)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    report = await audit_redis(redis_server.url, ledger_dsn)
    assert report.differences == [] and report.settlements == 2, report.lines()

    record = keys.settlement_key(submitted.claim_id)  # the claim now records 1 fen more from the fund
    original = sync.hget(record, "m")
    money = json.loads(original)
    money["f"]["310100"] += 1
    money["c"] -= 1
    sync.hset(record, "m", json.dumps(money))
    found = (await audit_redis(redis_server.url, None)).differences
    assert any(submitted.claim_id in line and "split again" in line for line in found), found


async def test_a_claim_is_reversed_back_out_of_the_persons_payable(
    stub: Any, redis_server: EmbeddedRedis, ledger_dsn: str
) -> None:
    submitted = await stub.SubmitClaim(claim("CQ-CLAIM-2026-000030"))
    reverse = claims_pb.ReverseClaimRequest(
        reversal_no="CQ-REV-2026-000001", claim_no="CQ-CLAIM-2026-000030", person=pb.PersonRef(card_no=CARD)
    )
    mirror = await stub.ReverseClaim(reverse)
    assert mirror.settlement_id == submitted.claim_id
    assert (mirror.split.total_fen, mirror.split.fund_total_fen, mirror.split.cash_fen) == (
        -2_000_000, -1_292_800, -707_200,
    )  # fmt: skip
    assert (await stub.ReverseClaim(reverse)).SerializeToString() == mirror.SerializeToString()  # idempotent
    sync = sync_client(redis_server.url)
    acc = accumulators(sync, PERSON)
    assert (acc.get("ded.inpatient", 0), acc.get("fund.basic", 0), acc.get("stays.inpatient", 0)) == (0, 0, 0)

    ledger = Ledger(ledger_dsn)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    (month,) = statements.institution_statements(ledger, "2026-06", PAYEE)
    assert (month.settlements, month.total_fen, month.fund_total_fen, month.cash_fen) == (0, 0, 0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # a reversal number names one reversal
        await stub.ReverseClaim(
            claims_pb.ReverseClaimRequest(
                reversal_no="CQ-REV-2026-000001",
                claim_no="CQ-CLAIM-2026-000001",
                person=pb.PersonRef(card_no=CARD),
            )
        )
    assert error_of(caught.value)[1].reason == "MESSAGE_ID_REUSED"
