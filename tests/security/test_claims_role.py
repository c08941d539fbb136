"""ClaimService over real mTLS: only agency staff (a certificate of role bureau) may submit a claim after
the fact; an institution's or the probe's certificate is refused before anything is read or written;
`medsettle claim` presents the bureau's certificate of --certs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.protos import claims_grpc, claims_pb, pb

from .conftest import CARD, HOSPITAL, StartGateway, status_of

pytestmark = pytest.mark.asyncio
CLAIM_FILE = Path(__file__).resolve().parents[2] / "examples" / "claims" / "cq-out-of-city-inpatient.json"


def claim() -> Any:
    return claims_pb.ClaimRequest(
        claim_no="CQ-CLAIM-TLS-1", person=pb.PersonRef(card_no=CARD),
        claim_case=claims_pb.CLAIM_CASE_EMERGENCY, visit_type=pb.VISIT_TYPE_OUTPATIENT,
        institution_level=2, visit_date="2026-06-14", total_fen=60_000,
    )  # fmt: skip


async def test_only_the_bureau_may_submit_claims(
    start_gateway: StartGateway, connect: Callable[..., Any], pki: Path
) -> None:
    gw = await start_gateway()
    for name in (HOSPITAL, "probe"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await claims_grpc.ClaimServiceStub(connect(gw, name)).SubmitClaim(claim())
        code, details = status_of(refused.value)
        assert (code, details["reason"]) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
        reverse = claims_pb.ReverseClaimRequest(
            reversal_no="R1", claim_no="C1", person=pb.PersonRef(card_no=CARD)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await claims_grpc.ClaimServiceStub(connect(gw, name)).ReverseClaim(reverse)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    reply = await claims_grpc.ClaimServiceStub(connect(gw, "bureau")).SubmitClaim(claim())
    assert reply.split.fund_total_fen == 20_000  # 600.00 at level 2: deductible 200.00, 50% of 400.00

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "claim", str(CLAIM_FILE), "--target", f"localhost:{gw.port}",
        "--certs", str(pki), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert '"fund_total_fen": "1292800"' in out.decode()
