"""A Redis restart under steady Settle load fails at most the requests in flight at that moment: pooled
connections to the old server are found dead before a request uses them, never by a terminal's Settle
answered "outcome unknown" seconds or minutes later."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from adapters.embedded_redis import EmbeddedRedis
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway
from loadtest.synthetic import OUTPATIENT_10_LINES

from ..gateway.conftest import HOSPITAL
from ..posting.test_worker import PERSONS, add_persons

pytestmark = pytest.mark.asyncio
CALLERS = 16  # concurrent terminals: enough connections in the pool to have stale ones after the restart
BEFORE_S, AFTER_S = 2.0, 8.0
PAUSE_S = 0.25  # between one caller's calls: 64 calls/s in all, within the institution's rate limit


def settle_request(caller: int, n: int) -> Any:
    return pb.SettleRequest(
        envelope=pb.Envelope(
            institution_code=HOSPITAL, terminal_id=f"T{caller}", operator_id="op",
            message_id=f"RST{caller:02d}{n:07d}", sent_at="2026-06-15T10:30:00",
        ),
        person=pb.PersonRef(card_no=f"L{(caller * 7 + n) % PERSONS:08d}"),
        bill=pb.Bill(
            visit_type=pb.VISIT_TYPE_OUTPATIENT,
            lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in OUTPATIENT_10_LINES],
        ),
    )  # fmt: skip


async def test_a_redis_restart_fails_only_the_requests_in_flight(
    gateway: Gateway, redis_server: EmbeddedRedis
) -> None:
    await add_persons(gateway)
    calls: list[tuple[float, float, grpc.StatusCode]] = []  # (started, ended, code)
    stop = asyncio.Event()

    async def caller(index: int, stub: Any) -> None:
        n = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await stub.Settle(settle_request(index, n), timeout=5)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            calls.append((started, time.monotonic(), code))
            n += 1
            await asyncio.sleep(PAUSE_S)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.SettlementServiceStub(channel)
        tasks = [asyncio.create_task(caller(i, stub)) for i in range(CALLERS)]
        await asyncio.sleep(BEFORE_S)
        down = time.monotonic()
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)  # returns once the new server answers PING
        up = time.monotonic()
        await asyncio.sleep(AFTER_S)
        stop.set()
        await asyncio.gather(*tasks)
    failed_after = [c for c in calls if c[0] > up and c[2] != grpc.StatusCode.OK]
    failed_around = [c for c in calls if c[0] <= up and c[1] >= down and c[2] != grpc.StatusCode.OK]
    ok_after = [c for c in calls if c[0] > up and c[2] == grpc.StatusCode.OK]
    print(
        f"redis down {up - down:.2f}s; failed while down or in flight: {len(failed_around)}; started after"
        f" it was back: {len(ok_after)} ok, {len(failed_after)} failed"
    )
    assert len(ok_after) > 100, "the load went on after the restart"
    assert failed_after == [], f"{len(failed_after)} requests failed on stale connections after the restart"
