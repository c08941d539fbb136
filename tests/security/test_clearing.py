"""GetClearing (the bureau finance office's month end) over real mTLS: only a certificate of role bureau
may call it; a page of applications at a time; a bad month named in the answer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.posting import month_end as me
from gateway.protos import pb, pb_grpc

from ..posting.test_month_end import ACCOUNTS, AFTER, INSTITUTIONS, JULY, booked
from .conftest import StartGateway

pytestmark = pytest.mark.asyncio


async def test_get_clearing_needs_the_bureaus_certificate(
    start_gateway: StartGateway, connect: Callable[..., Any], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    ledger_dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(ledger_dsn)
    ledger.migrate()
    sync_client = redis.Redis.from_url(redis_server.url)
    gw = await start_gateway(ledger_dsn=ledger_dsn)
    await booked(gw, sync_client, ledger, 6)
    me.close_month(ledger, "2026-06", None, JULY, AFTER, ACCOUNTS)
    request = pb.ClearingRequest(month="2026-06", region="500000")
    answer = await pb_grpc.ClearingServiceStub(connect(gw, "bureau")).GetClearing(request)
    assert sorted(a.institution_code for a in answer.applications) == sorted(INSTITUTIONS)
    assert sum(s.amount_fen for s in answer.fund_spend) == sum(
        a.totals.fund_total_fen for a in answer.applications
    )
    page = await pb_grpc.ClearingServiceStub(connect(gw, "bureau")).GetClearing(
        pb.ClearingRequest(month="2026-06", page_size=1)
    )
    assert (
        len(page.applications) == 1 and page.next_after_institution == page.applications[0].institution_code
    )
    for name in ("H50010300001", "probe"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.ClearingServiceStub(connect(gw, name)).GetClearing(request)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await pb_grpc.ClearingServiceStub(connect(gw, "bureau")).GetClearing(pb.ClearingRequest(month="June"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "month" in bad.value.details()
