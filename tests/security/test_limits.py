"""Every limit at the edge, provoked and refused in a way a terminal can act on (RESOURCE_EXHAUSTED with
google.rpc.RetryInfo, or the connection closed), visible in metrics, and recovered from."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
import redis
from prometheus_client import REGISTRY

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.edge import certs
from gateway.edge.limits import EdgeLimits
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway

from ..posting.test_worker import add_persons, run_until_caught_up, settle_many
from .conftest import CARD, HOSPITAL, HOSPITAL_2, StartGateway, status_of
from .test_identity import envelope, settle_request

pytestmark = pytest.mark.asyncio
Connect = Callable[..., grpc.aio.Channel]


def refusals(limit: str) -> float:
    return REGISTRY.get_sample_value("medsettle_edge_refusals_total", {"limit": limit}) or 0.0


async def presettle(stub: Any, institution: str, n: int) -> Any:
    return await stub.PreSettle(settle_request(institution, f"M-R-{n}"), timeout=10)


async def test_requests_per_second_per_institution_refused_with_a_retry_delay_then_recovered(
    start_gateway: StartGateway, connect: Connect
) -> None:
    gw = await start_gateway(EdgeLimits(requests_per_s_max=1, requests_burst_max=3))
    hospital = pb_grpc.SettlementServiceStub(connect(gw, HOSPITAL))
    other = pb_grpc.SettlementServiceStub(connect(gw, HOSPITAL_2))
    before = refusals("requests_per_s_max")
    outcomes = []
    for n in range(8):
        try:
            await presettle(hospital, HOSPITAL, n)
            outcomes.append("OK")
        except grpc.aio.AioRpcError as exc:
            code, details = status_of(exc)
            outcomes.append(code.name)
            assert details["reason"] == "RATE_LIMITED" and 0 < details["retry_delay_s"] <= 1.0
            delay = details["retry_delay_s"]
    assert outcomes[:3] == ["OK"] * 3 and "RESOURCE_EXHAUSTED" in outcomes[3:]
    assert refusals("requests_per_s_max") >= before + 1
    await presettle(other, HOSPITAL_2, 99)  # another institution has its own budget
    await asyncio.sleep(delay + 0.05)
    await presettle(hospital, HOSPITAL, 100)  # waited as told: served again


async def test_concurrent_calls_per_institution(
    start_gateway: StartGateway, connect: Connect, redis_server: EmbeddedRedis
) -> None:
    gw = await start_gateway(EdgeLimits(calls_in_flight_max=2))
    stub = pb_grpc.SettlementServiceStub(connect(gw, HOSPITAL))
    await presettle(stub, HOSPITAL, 0)  # warm: the card is cached, the next calls wait on Redis only
    redis.Redis.from_url(redis_server.url).execute_command("CLIENT", "PAUSE", "800", "ALL")
    held = [asyncio.create_task(presettle(stub, HOSPITAL, n)) for n in (1, 2)]
    await asyncio.sleep(0.3)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await presettle(stub, HOSPITAL, 3)
    code, details = status_of(info.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details["retry_delay_s"] > 0
    assert all(r.split.total_fen for r in await asyncio.gather(*held))  # the held calls finish normally
    await presettle(stub, HOSPITAL, 4)


async def test_eligibility_queries_per_card_per_minute(start_gateway: StartGateway, connect: Connect) -> None:
    gw = await start_gateway(EdgeLimits(eligibility_per_card_per_min_max=3))
    stub = pb_grpc.SettlementServiceStub(connect(gw, HOSPITAL))

    def query(card: str, n: int) -> Any:
        request = pb.QueryEligibilityRequest(
            envelope=envelope(HOSPITAL, f"E{n}"), person=pb.PersonRef(card_no=card)
        )
        return stub.QueryEligibility(request, timeout=5)

    for n in range(3):
        reply = await query(CARD, n)
        assert reply.masked_id_number == "500103************", "region of issue only (edge/privacy.py)"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await query(CARD, 3)
    code, details = status_of(info.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and 50 < details["retry_delay_s"] <= 60
    await query("L52326203", 4)  # another card is unaffected


async def test_guessing_id_numbers_is_cut_off(start_gateway: StartGateway, connect: Connect) -> None:
    """The attack on the old mask: ID numbers with candidate birth dates, one query each."""
    gw = await start_gateway(EdgeLimits(person_misses_per_min_max=5))
    stub = pb_grpc.SettlementServiceStub(connect(gw, HOSPITAL))
    codes = []
    for n, day in enumerate(range(1, 12)):
        guess = f"50010319780{3 if day < 10 else 4}{day:02d}7019"
        request = pb.QueryEligibilityRequest(
            envelope=envelope(HOSPITAL, f"G{n}"), person=pb.PersonRef(id_number=guess)
        )
        try:
            await stub.QueryEligibility(request, timeout=5)
            codes.append("OK")
        except grpc.aio.AioRpcError as exc:
            code, details = status_of(exc)
            codes.append(details.get("reason", code.name))
    assert codes[:5] == ["PERSON_NOT_FOUND"] * 5
    assert set(codes[5:]) == {"LIMIT_EXCEEDED"}, codes


def tls_context(pki: Path) -> ssl.SSLContext:
    layout = certs.Layout(pki)
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.load_cert_chain(str(layout.client_cert(HOSPITAL)), str(layout.client_key(HOSPITAL)))
    context.set_alpn_protocols(["h2"])
    return context


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


async def test_connections_beyond_the_cap_are_closed(start_gateway: StartGateway, connect: Connect) -> None:
    gw = await start_gateway(EdgeLimits(connections_max=5))
    flood = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(20)]
    try:
        closed = await asyncio.to_thread(lambda: sum(closed_within(s, 0.5) for s in flood))
        assert closed >= 15, f"{closed} of 20 idle connections closed with a cap of 5"
    finally:
        for s in flood:
            s.close()
    await asyncio.sleep(0.2)
    await pb_grpc.DiagnosticsServiceStub(connect(gw, HOSPITAL)).Ping(pb.PingRequest(), timeout=5)


async def test_a_connection_that_never_handshakes_is_closed(start_gateway: StartGateway) -> None:
    gw = await start_gateway(EdgeLimits(handshake_timeout_ms=300))
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as idle:
        started = time.monotonic()
        assert await asyncio.to_thread(closed_within, idle, 10)
        assert time.monotonic() - started < 5  # 300 ms configured; generous for a busy machine


def h2_client(port: int, pki: Path) -> tuple[ssl.SSLSocket, h2.connection.H2Connection, dict[Any, int]]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    tls = tls_context(pki).wrap_socket(raw, server_hostname="localhost")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    settings: dict[Any, int] = {}
    while not settings:
        for event in conn.receive_data(tls.recv(65536)):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                settings = {k: v.new_value for k, v in event.changed_settings.items()}
        tls.sendall(conn.data_to_send())
    return tls, conn, settings


def headers(path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost"),
        ("content-type", "application/grpc"), ("te", "trailers"),
    ]  # fmt: skip


def stream_outcome(
    tls: ssl.SSLSocket, conn: h2.connection.H2Connection, stream: int, timeout_s: float
) -> str:
    """Reads until the server ends the stream: its grpc-status, or 'reset'; 'open' if it never does."""
    tls.settimeout(timeout_s)
    try:
        while True:
            data = tls.recv(65536)
            if not data:
                return "closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    found = dict((k.decode() if isinstance(k, bytes) else k, v) for k, v in event.headers)
                    if "grpc-status" in found:
                        status = found["grpc-status"]
                        return status.decode() if isinstance(status, bytes) else str(status)
                if isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    return "reset"
            tls.sendall(conn.data_to_send())
    except TimeoutError:
        return "open"


async def test_a_client_that_never_sends_its_body_is_cut_off(start_gateway: StartGateway, pki: Path) -> None:
    gw = await start_gateway(EdgeLimits(body_read_timeout_ms=300))
    before = refusals("body_read_timeout_ms")

    def slow_body() -> tuple[str, float]:
        tls, conn, _ = h2_client(gw.port, pki)
        with tls:
            conn.send_headers(1, headers("/medsettle.v1.SettlementService/Settle"))  # and never the body
            tls.sendall(conn.data_to_send())
            started = time.monotonic()
            return stream_outcome(tls, conn, 1, 10), time.monotonic() - started

    outcome, took = await asyncio.to_thread(slow_body)
    assert outcome == str(grpc.StatusCode.DEADLINE_EXCEEDED.value[0]), outcome
    assert 0.25 < took < 5, took  # 300 ms configured
    assert refusals("body_read_timeout_ms") == before + 1


async def test_concurrent_streams_per_connection_are_announced_and_capped(
    start_gateway: StartGateway, pki: Path
) -> None:
    gw = await start_gateway(EdgeLimits(streams_per_connection_max=3, body_read_timeout_ms=2000))

    def open_streams() -> tuple[int, list[str]]:
        tls, conn, settings = h2_client(gw.port, pki)
        with tls:
            # h2 itself refuses to open more streams than the server announced; a hostile client would not
            conn._open_streams = lambda *a, **k: 0  # type: ignore[method-assign]
            for stream in (1, 3, 5, 7):  # headers only: the first three are held open, the fourth is over
                conn.send_headers(stream, headers("/medsettle.v1.SettlementService/Settle"))
            tls.sendall(conn.data_to_send())
            return settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS], [
                stream_outcome(tls, conn, 7, 3)
            ]

    announced, outcome = await asyncio.to_thread(open_streams)
    assert announced == 3
    assert outcome in (["reset"], ["closed"]), outcome


async def test_limits_are_exported_with_their_units(tls_gateway: Gateway) -> None:
    limits = EdgeLimits()
    names = (
        "requests_per_s_max", "calls_in_flight_max", "connections_max", "body_read_timeout_ms",
        "eligibility_per_card_per_min_max", "reconcile_page_items_max", "reconcile_response_bytes_max",
    )  # fmt: skip
    for name in names:
        value = REGISTRY.get_sample_value("medsettle_edge_limit", {"limit": name})
        assert value == float(getattr(limits, name)), name


async def test_reconcile_is_paged_and_each_page_bounded(
    start_gateway: StartGateway, connect: Connect, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    gw = await start_gateway(
        EdgeLimits(
            reconcile_page_items_max=7, reconcile_items_per_call_max=20, reconcile_response_bytes_max=1400
        ),
        ledger_dsn=dsn,
    )
    await add_persons(gw)
    await settle_many(gw, 40)  # 20 at this hospital
    sync = redis.Redis.from_url(redis_server.url)
    ledger = Ledger(dsn)
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    stub = pb_grpc.LedgerServiceStub(connect(gw, HOSPITAL))
    rows = ledger.query(
        "SELECT message_id, total_fen, fund_total_fen, account_fen FROM journal WHERE institution = ?"
        " AND kind = 'settle' ORDER BY message_id",
        [HOSPITAL],
    )
    ledger.close()
    ours = [
        pb.ReconcileItem(message_id=m, total_fen=t, fund_total_fen=f, account_fen=a) for m, t, f, a in rows
    ]
    assert len(ours) == 20
    period = {"date_from": "2026-06-01", "date_to": "2026-06-30"}
    with pytest.raises(grpc.aio.AioRpcError) as info:  # more than 20 items in one call
        await stub.Reconcile(
            pb.ReconcileRequest(envelope=envelope(HOSPITAL, "R0"), items=[*ours, *ours[:1]], **period)
        )
    assert status_of(info.value)[1]["fields"]["items"].startswith("at most 20")
    # the institution sends its items in sorted chunks of 6, the gateway answers pages of at most 7 results
    seen: list[str] = []
    token, pending, calls = "", list(ours), 0
    while True:
        calls += 1
        chunk = pending[:6]
        reply = await stub.Reconcile(
            pb.ReconcileRequest(
                envelope=envelope(HOSPITAL, f"R{calls}"), items=chunk, page_token=token,
                more_items_follow=len(pending) > 6, **period,
            )
        )  # fmt: skip
        assert len(reply.items) <= 7 and reply.ByteSize() <= 1400
        assert all(i.status == pb.ITEM_STATUS_MATCHED for i in reply.items)
        seen += [i.message_id for i in reply.items]
        token = reply.next_page_token
        covered = reply.items[-1].message_id if reply.items else ""
        pending = [i for i in pending if i.message_id > covered]
        if not token:
            break
        assert calls < 20
    assert seen == [i.message_id for i in ours], "every settlement exactly once, in order"
    assert calls > 3
    with pytest.raises(grpc.aio.AioRpcError) as info:  # a token is bound to its period
        await stub.Reconcile(
            pb.ReconcileRequest(
                envelope=envelope(HOSPITAL, "RX"),
                date_from="2026-06-02",
                date_to="2026-06-30",
                page_token=reply.next_page_token or "cjF8MjAyNi0wNi0wMXwyMDI2LTA2LTMwfE0",
            )
        )
    assert "page_token" in status_of(info.value)[1]["fields"]
