"""Who may call: a client certificate signed by the configured CA, refused at the handshake when missing,
foreign or expired, refused on the next call once revoked (no restart); an institution acts only for
itself, a terminal-bound certificate only for its terminal, a probe only probes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters.embedded_redis import EmbeddedRedis
from gateway import logs
from gateway.edge import certs
from gateway.protos import pb, pb_grpc
from gateway.server import Gateway

from .conftest import CARD, HOSPITAL, HOSPITAL_2, PHARMACY, StartGateway, status_of

pytestmark = pytest.mark.asyncio
Connect = Callable[..., grpc.aio.Channel]
STAY = [("F000001", 3530, 5), ("T000049", 120000, 1)]


def envelope(institution: str, message_id: str, terminal: str = "T1") -> Any:
    return pb.Envelope(
        institution_code=institution, terminal_id=terminal, operator_id="op", message_id=message_id
    )


def settle_request(institution: str, message_id: str, terminal: str = "T1") -> Any:
    return pb.SettleRequest(
        envelope=envelope(institution, message_id, terminal), person=pb.PersonRef(card_no=CARD),
        bill=pb.Bill(
            visit_type=pb.VISIT_TYPE_INPATIENT,
            lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in STAY],
        ),
    )  # fmt: skip


async def ping(ch: grpc.aio.Channel) -> None:
    await pb_grpc.DiagnosticsServiceStub(ch).Ping(pb.PingRequest(), timeout=5)


async def test_a_terminal_with_its_certificate_settles(tls_gateway: Gateway, connect: Connect) -> None:
    stub = pb_grpc.SettlementServiceStub(connect(tls_gateway, HOSPITAL))
    settled = await stub.Settle(settle_request(HOSPITAL, "M-OK-1"), timeout=5)
    assert settled.settlement_id.startswith("S")


@pytest.mark.parametrize("name", [None, "foreign", "expired"])
async def test_no_foreign_or_expired_certificate_is_refused_at_the_handshake(
    tls_gateway: Gateway, connect: Connect, name: str | None, pki: Path
) -> None:
    if name is None:  # TLS, the right CA, but no client certificate
        ch = grpc.aio.secure_channel(
            f"127.0.0.1:{tls_gateway.port}",
            grpc.ssl_channel_credentials(certs.Layout(pki).ca_cert.read_bytes()),
        )
    else:
        ch = connect(tls_gateway, name)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ping(ch)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # no connection: nothing reached a handler
    await ch.close()


async def test_plaintext_is_refused_by_a_tls_gateway(tls_gateway: Gateway, connect: Connect) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ping(connect(tls_gateway, None))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_revoked_certificate_is_refused_without_restart(
    start_gateway: StartGateway, connect: Connect, pki: Path, tmp_path: Path
) -> None:
    layout = certs.Layout(pki)
    certs.issue_client(layout, PHARMACY, "to be revoked", file_name="revoked-pharmacy")
    crl = tmp_path / "revoked.crl"  # this test's own CRL: the session PKI's stays empty
    gw = await start_gateway(crl=crl)
    open_channel = connect(gw, "revoked-pharmacy")
    await ping(open_channel)  # accepted while valid
    own = certs.Layout(tmp_path)
    own.root.mkdir(exist_ok=True)
    for part in ("ca.crt", "ca.key"):
        (own.root / part).write_bytes((pki / part).read_bytes())
    certs.revoke(own, [layout.client_cert("revoked-pharmacy")])
    assert own.crl == crl
    await asyncio.sleep(0.3)  # the gateway rereads the CRL at most every 100 ms in this test
    for ch in (open_channel, connect(gw, "revoked-pharmacy")):  # the open connection and a new one
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ping(ch)
        code, details = status_of(info.value)
        assert (code, details["reason"]) == (grpc.StatusCode.UNAUTHENTICATED, "CERTIFICATE_REVOKED")
    await ping(connect(gw, PHARMACY))  # everyone else is unaffected


async def test_a_crl_not_signed_by_the_ca_revokes_nothing(
    start_gateway: StartGateway, connect: Connect, tmp_path: Path
) -> None:
    forged = certs.Layout(tmp_path)
    certs.create_ca(forged)
    certs.issue_client(forged, HOSPITAL, "x", file_name="x")
    gw = await start_gateway(crl=forged.crl)
    certs.revoke(forged, [forged.client_cert("x")])
    await asyncio.sleep(0.3)
    await ping(connect(gw, HOSPITAL))


@pytest.mark.parametrize(
    "call",
    ["QueryEligibility", "PreSettle", "Settle", "Reverse", "GetSettlement", "Reconcile", "GetStatement"],
)
async def test_a_certificate_of_one_institution_cannot_act_for_another(
    tls_gateway: Gateway, connect: Connect, redis_server: EmbeddedRedis, call: str
) -> None:
    ch = connect(tls_gateway, HOSPITAL)
    other = envelope(HOSPITAL_2, "M-X-1")
    requests = {
        "QueryEligibility": pb.QueryEligibilityRequest(envelope=other, person=pb.PersonRef(card_no=CARD)),
        "PreSettle": settle_request(HOSPITAL_2, "M-X-1"),
        "Settle": settle_request(HOSPITAL_2, "M-X-1"),
        "Reverse": pb.ReverseRequest(envelope=other, settlement_id="S001-260615-0000000000000000"),
        "GetSettlement": pb.GetSettlementRequest(
            envelope=other, settlement_id="S001-260615-0000000000000000"
        ),
        "Reconcile": pb.ReconcileRequest(envelope=other, date_from="2026-06-01", date_to="2026-06-30"),
        "GetStatement": pb.StatementRequest(envelope=other, month="2026-06"),
    }
    service = "LedgerService" if call in ("Reconcile", "GetStatement") else "SettlementService"
    stub = (pb_grpc.LedgerServiceStub if service == "LedgerService" else pb_grpc.SettlementServiceStub)(ch)
    keys_before = redis.Redis.from_url(redis_server.url).dbsize()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, call)(requests[call], timeout=5)
    code, details = status_of(info.value)
    assert (code, details["reason"]) == (grpc.StatusCode.PERMISSION_DENIED, "INSTITUTION_MISMATCH")
    assert HOSPITAL in info.value.details() and HOSPITAL_2 in info.value.details()
    assert redis.Redis.from_url(redis_server.url).dbsize() == keys_before, "nothing written"


async def test_one_institution_cannot_see_anothers_settlement(tls_gateway: Gateway, connect: Connect) -> None:
    mine = pb_grpc.SettlementServiceStub(connect(tls_gateway, HOSPITAL))
    theirs = pb_grpc.SettlementServiceStub(connect(tls_gateway, HOSPITAL_2))
    settled = await mine.Settle(settle_request(HOSPITAL, "M-OWN-1"), timeout=5)
    # the other hospital, with its own certificate and its own envelope, asks for it: not found
    sid = settled.settlement_id
    for call, request in (
        (
            theirs.GetSettlement,
            pb.GetSettlementRequest(envelope=envelope(HOSPITAL_2, "Q1"), settlement_id=sid),
        ),
        (theirs.Reverse, pb.ReverseRequest(envelope=envelope(HOSPITAL_2, "Q2"), settlement_id=sid)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(request, timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    got = await mine.GetSettlement(
        pb.GetSettlementRequest(envelope=envelope(HOSPITAL, "Q3"), settlement_id=settled.settlement_id)
    )
    assert got.status == pb.SETTLEMENT_STATUS_SETTLED


async def test_a_terminal_bound_certificate_acts_only_for_its_terminal(
    tls_gateway: Gateway, connect: Connect
) -> None:
    stub = pb_grpc.SettlementServiceStub(connect(tls_gateway, f"{HOSPITAL}-T1"))
    await stub.PreSettle(settle_request(HOSPITAL, "M-T-1", terminal="T1"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.PreSettle(settle_request(HOSPITAL, "M-T-2", terminal="T2"), timeout=5)
    code, details = status_of(info.value)
    assert (code, details["reason"]) == (grpc.StatusCode.PERMISSION_DENIED, "TERMINAL_MISMATCH")


async def test_a_probe_certificate_probes_and_does_nothing_else(
    tls_gateway: Gateway, connect: Connect
) -> None:
    ch = connect(tls_gateway, certs.ROLE_PROBE)
    reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await ping(ch)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pb_grpc.SettlementServiceStub(ch).PreSettle(settle_request(HOSPITAL, "M-P-1"), timeout=5)
    code, details = status_of(info.value)
    assert (code, details["reason"]) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


async def test_the_callers_certificate_is_in_the_request_log(
    tls_gateway: Gateway, connect: Connect, pki: Path
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logs.REQUEST_LOG.addHandler(handler)
    old = logs.REQUEST_LOG.level
    logs.REQUEST_LOG.setLevel(logging.INFO)
    try:
        await pb_grpc.SettlementServiceStub(connect(tls_gateway, HOSPITAL)).PreSettle(
            settle_request(HOSPITAL, "M-L-1"), timeout=5
        )
    finally:
        logs.REQUEST_LOG.removeHandler(handler)
        logs.REQUEST_LOG.setLevel(old)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    serial = x509.load_pem_x509_certificate(
        certs.Layout(pki).client_cert(HOSPITAL).read_bytes()
    ).serial_number
    assert line["client_cert_serial"] == format(serial, "x") and line["client_institution"] == HOSPITAL
    assert line["institution"] == HOSPITAL and line["outcome"] == "OK"


def server_serial(port: int, pki: Path) -> int:
    layout = certs.Layout(pki)
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.load_cert_chain(str(layout.client_cert(HOSPITAL)), str(layout.client_key(HOSPITAL)))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_new_server_certificate_is_used_without_restart(
    start_gateway: StartGateway, connect: Connect, pki: Path, tmp_path: Path
) -> None:
    from gateway.edge.tls import ServerTls

    own = certs.Layout(tmp_path)  # this test's copy of the server files, so the session PKI stays put
    for part in ("server.crt", "server.key"):
        (tmp_path / part).write_bytes((pki / part).read_bytes())
    gw = await start_gateway(
        tls=ServerTls(
            own.server_cert, own.server_key, certs.Layout(pki).ca_cert, reload_check_interval_ms=100
        )
    )
    before = await asyncio.to_thread(server_serial, gw.port, pki)
    old_channel = connect(gw, HOSPITAL)
    await ping(old_channel)
    signer = certs.Layout(pki)
    new = certs.issue_server(signer, out=tmp_path / "next")  # issued beside, then swapped in
    (tmp_path / "next.key").replace(own.server_key)
    (tmp_path / "next.crt").replace(own.server_cert)
    await asyncio.sleep(0.3)
    after = await asyncio.to_thread(server_serial, gw.port, pki)
    assert before != after == new.serial_number
    await ping(old_channel)  # the connection made before the rotation still works
    await ping(connect(gw, HOSPITAL))
