"""`medsettle demo`: a terminal that swipes demo cards at a demo hospital and a demo pharmacy, and checks
that every step behaves as a cashier would expect. Exit status 0 only when all of them do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.edge.tls import ClientTls, channel
from gateway.engine.money import yuan
from gateway.protos import pb, pb_grpc
from gateway.split_table import render_split

HOSPITAL = "H50010300001"  # 重庆医科大学附属第一医院, level 3, Yuzhong
PHARMACY = "P50010300001"  # 桐君阁大药房(解放碑店)
DEMO_CARD = "Y53736293"  # PSN500000000001, Chongqing employee in Yuzhong (citydata/persons.json)
LOST_CARD = "Q45301612"  # PSN500000000010, card reported lost
INPATIENT_LINES = [  # a five-day stay for an appendectomy
    ("F000001", 3530, 5),
    ("T000005", 1500, 5),
    ("T000049", 120000, 1),
    ("T000060", 120000, 1),
    ("D000004", 350, 10),
    ("M000003", 1800, 2),
    ("M000001", 300, 5),
    ("T000006", 2000, 2),
]
PHARMACY_LINES = [("D000001", 1250, 2), ("D000009", 1450, 1), ("D000147", 9800, 1)]


@dataclass
class Demo:
    stub: Any
    out: Callable[[str], None] = print
    failures: list[str] = field(default_factory=list)
    sequence: int = 0

    def envelope(self, institution: str) -> Any:
        self.sequence += 1
        now = datetime.now()
        # the national format (institution code 12 + yyyyMMddHHmmss + 4-digit sequence) with microseconds
        # added, so two demo runs in the same second never reuse a message id (34 characters)
        message_id = f"{institution}{now:%Y%m%d%H%M%S%f}{self.sequence % 100:02d}"
        return pb.Envelope(
            institution_code=institution, terminal_id="DEMO-01", operator_id="demo", message_id=message_id,
            sent_at=now.isoformat(timespec="seconds"),
        )  # fmt: skip

    def expect(self, ok: bool, what: str) -> None:
        self.out(f"  [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            self.failures.append(what)

    @staticmethod
    def bill(visit: int, lines: list[tuple[str, int, int]]) -> Any:
        return pb.Bill(
            visit_type=visit, lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in lines]
        )

    async def run(self, card: str, lost_card: str) -> int:
        person = pb.PersonRef(card_no=card)
        self.out(f"== 1101 card swipe at {HOSPITAL}: card {card}")
        elig = await self.stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=self.envelope(HOSPITAL), person=person)
        )
        balance = elig.account_balance_fen
        self.out(f"  {elig.masked_name} {elig.masked_id_number}, account balance {yuan(balance)}")
        for e in elig.enrolments:
            self.out(f"  enrolled {e.region}/{e.district} scheme {pb.Scheme.Name(e.scheme)} tier {e.tier}")
        self.expect(elig.covered_here and len(elig.enrolments) == 1, "insured and covered here")

        bill = self.bill(pb.VISIT_TYPE_INPATIENT, INPATIENT_LINES)
        self.out("== 2303 inpatient pre-settle")
        pre = await self.stub.PreSettle(
            pb.SettleRequest(envelope=self.envelope(HOSPITAL), person=person, bill=bill)
        )
        self.out(render_split(pre.split))
        parts = pre.split.fund_total_fen + pre.split.account_fen + pre.split.cash_fen
        self.expect(parts == pre.split.total_fen, "funds + account + cash = total, to the fen")

        request = pb.SettleRequest(envelope=self.envelope(HOSPITAL), person=person, bill=bill)
        self.out(f"== 2304 settle, message id {request.envelope.message_id}")
        settled = await self.stub.Settle(request)
        self.out(f"  settlement {settled.settlement_id} at {settled.settled_at}")
        self.out(render_split(settled.split))
        self.expect(settled.split.total_fen == pre.split.total_fen, "settle splits as the pre-settle did")

        self.out("== the reply was lost: the terminal sends the same message again")
        again = await self.stub.Settle(request)
        self.expect(
            again.SerializeToString() == settled.SerializeToString(), "the same answer, byte for byte"
        )
        after = await self.stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=self.envelope(HOSPITAL), person=person)
        )
        debited = balance - after.account_balance_fen
        self.expect(debited == settled.split.account_fen, f"the account was debited once ({yuan(debited)})")

        self.out("== a different bill under the same message id")
        other = pb.SettleRequest(
            envelope=request.envelope,
            person=person,
            bill=self.bill(pb.VISIT_TYPE_INPATIENT, INPATIENT_LINES[:1]),
        )
        code, reason = await self.failure(self.stub.Settle(other))
        self.expect(code == grpc.StatusCode.ALREADY_EXISTS, f"refused: {code.name} {reason}")

        self.out("== 2601 reverse by the original message id")
        reverse = pb.ReverseRequest(
            envelope=self.envelope(HOSPITAL), original_message_id=request.envelope.message_id, person=person
        )
        reversed_ = await self.stub.Reverse(reverse)
        self.out(f"  reversal {reversed_.reversal_id} of {reversed_.settlement_id}")
        self.out(render_split(reversed_.split))
        self.expect(reversed_.split.total_fen == -settled.split.total_fen, "the negative mirror")
        twice = await self.stub.Reverse(
            pb.ReverseRequest(envelope=self.envelope(HOSPITAL), settlement_id=settled.settlement_id)
        )
        self.expect(
            twice.SerializeToString() == reversed_.SerializeToString(), "reversing twice: same answer"
        )
        query = await self.stub.GetSettlement(
            pb.GetSettlementRequest(envelope=self.envelope(HOSPITAL), settlement_id=settled.settlement_id)
        )
        self.expect(query.status == pb.SETTLEMENT_STATUS_REVERSED, "5203 query: reversed")
        restored = await self.stub.QueryEligibility(
            pb.QueryEligibilityRequest(envelope=self.envelope(HOSPITAL), person=person)
        )
        self.expect(restored.account_balance_fen == balance, "the account balance is restored")

        self.out(f"== 2102 pharmacy at {PHARMACY}: the personal account pays")
        sale = await self.stub.Settle(
            pb.SettleRequest(
                envelope=self.envelope(PHARMACY),
                person=person,
                bill=self.bill(pb.VISIT_TYPE_PHARMACY, PHARMACY_LINES),
            )
        )
        self.out(f"  settlement {sale.settlement_id}")
        self.out(render_split(sale.split))
        self.expect(
            sale.split.fund_total_fen == 0 and sale.split.account_fen > 0, "no pooled fund at a pharmacy"
        )

        self.out("== 退费: the patient brings back one of the two boxes of D000001 (line 1)")
        refund = await self.stub.Refund(
            pb.RefundRequest(
                envelope=self.envelope(PHARMACY),
                settlement_id=sale.settlement_id,
                lines=[pb.RefundLine(line_no=1, quantity=1)],
            )
        )
        self.out(f"  refund {refund.refund_id}: the rest of the sale split again in place")
        self.out(render_split(refund.split))
        self.expect(
            refund.difference.total_fen == -1250 and refund.difference.account_fen == -1250,
            f"12.50 back to the personal account ({yuan(-refund.difference.account_fen)})",
        )

        self.out("== 2601 for a Settle that has not arrived yet (the terminal timed out sending it)")
        late = pb.SettleRequest(
            envelope=self.envelope(PHARMACY),
            person=person,
            bill=self.bill(pb.VISIT_TYPE_PHARMACY, PHARMACY_LINES),
        )
        void = await self.stub.Reverse(
            pb.ReverseRequest(
                envelope=self.envelope(PHARMACY), original_message_id=late.envelope.message_id, person=person
            )
        )
        self.expect(void.nothing_settled, "the reversal answers: nothing was settled under that message id")
        code, reason = await self.failure(self.stub.Settle(late))
        self.expect(
            code == grpc.StatusCode.FAILED_PRECONDITION and reason == "MESSAGE_ID_VOID",
            f"the Settle that arrives later is refused: {reason}",
        )

        self.out(f"== a lost card ({lost_card})")
        code, reason = await self.failure(
            self.stub.QueryEligibility(
                pb.QueryEligibilityRequest(
                    envelope=self.envelope(HOSPITAL), person=pb.PersonRef(card_no=lost_card)
                )
            )
        )
        self.expect(
            code == grpc.StatusCode.FAILED_PRECONDITION and reason == "CARD_LOST", f"refused: {reason}"
        )
        self.out(f"== demo {'passed' if not self.failures else 'FAILED: ' + '; '.join(self.failures)}")
        return 0 if not self.failures else 1

    @staticmethod
    async def failure(call: Any) -> tuple[grpc.StatusCode, str]:
        try:
            await call
        except grpc.aio.AioRpcError as exc:
            status = rpc_status.from_call(exc)
            reason = ""
            for detail in status.details if status else []:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    reason = info.reason
            return exc.code(), reason
        return grpc.StatusCode.OK, ""


class ByInstitution:
    """A SettlementService stub that sends each request over its envelope's institution's channel: each
    institution's terminal presents that institution's client certificate, as a real one would."""

    def __init__(self, stubs: dict[str, Any]) -> None:
        self.stubs = stubs

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def call(request: Any, **kwargs: Any) -> Any:
            return getattr(self.stubs[request.envelope.institution_code], method)(request, **kwargs)

        return call


async def run_demo(
    target: str,
    card: str,
    lost_card: str,
    out: Callable[[str], None] = print,
    certs: Path | None = None,
    insecure: bool = False,
    server_name: str | None = None,
) -> int:
    """mTLS with clients/<institution>.crt of `certs` for each institution the demo acts for; plaintext
    only with insecure=True (a gateway started with --insecure)."""
    if not insecure and certs is None:
        raise ValueError("the demo needs the certificates folder (or insecure=True)")
    channels = {}
    try:
        for institution in (HOSPITAL, PHARMACY):
            tls = None
            if not insecure:
                assert certs is not None
                base = ClientTls.for_institution(certs, institution)
                tls = ClientTls(base.ca, base.cert, base.key, server_name)
            channels[institution] = channel(target, tls)
        for ch in channels.values():
            await asyncio.wait_for(ch.channel_ready(), timeout=10)
        stub = ByInstitution({i: pb_grpc.SettlementServiceStub(ch) for i, ch in channels.items()})
        try:
            return await Demo(stub, out).run(card, lost_card)
        except grpc.aio.AioRpcError as exc:
            out(f"== demo FAILED: {exc.code().name}: {exc.details()}")
            return 1
    except (FileNotFoundError, TimeoutError) as exc:
        out(f"== demo FAILED: cannot reach {target} over {'plaintext' if insecure else 'mTLS'}: {exc!r}")
        return 1
    finally:
        for ch in channels.values():
            await ch.close()
