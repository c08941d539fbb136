"""Who sends a national message: a gateway serving HTTPS with the session's development PKI (a client
certificate optional), the x-ca (HMAC-SM3) and x-tif schemes with per-institution keys from the key
file, every failure provoked: no proof, a wrong key, a changed body, a stale timestamp, a replayed
nonce, an unknown key id, an institution other than the proven one (by certificate and by signature)."""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from adapters.embedded_redis import EmbeddedRedis
from gateway.edge import certs
from gateway.edge.tls import ServerTls
from gateway.nhsa.amounts import dumps, loads
from gateway.nhsa.signing import hmac_sm3_hex, tif_signature
from gateway.server import Gateway

from ..security.conftest import pki  # noqa: F401  (the session's development PKI)
from .conftest import HOSPITAL, HOSPITAL_2, SM3_SECRET, TIF_TOKEN, National, start

pytestmark = pytest.mark.asyncio
SIGN_IN = {"signIn": {"opter_no": "1022", "mac": "", "ip": ""}}


@pytest_asyncio.fixture
async def https_gateway(redis_server: EmbeddedRedis, tmp_path: Path, pki: Path) -> AsyncIterator[Gateway]:  # noqa: F811
    gw = await start(
        redis_server, tmp_path, tls=ServerTls.from_dir(pki), redis_url=redis_server.url_for("gateway")
    )
    yield gw
    await gw.stop()


def client_ssl(pki: Path, name: str | None) -> ssl.SSLContext:  # noqa: F811
    layout = certs.Layout(pki)
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    if name is not None:
        context.load_cert_chain(str(layout.client_cert(name)), str(layout.client_key(name)))
    return context


async def post(
    gw: Gateway, context: ssl.SSLContext, body: bytes, headers: dict[str, str] | None = None
) -> Any:
    url = f"https://127.0.0.1:{gw.nhsa.port}/fsi/api/rsfComIfsService/callService"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=body, headers={"Content-Type": "application/json", **(headers or {})}, ssl=context
        ) as response,
    ):
        assert response.status == 200
        return loads(await response.read())


def sign_in(institution: str) -> bytes:
    return dumps(National(None, "", institution).envelope("9001", SIGN_IN)).encode()  # type: ignore[arg-type]


def x_ca(
    body: bytes, institution: str = HOSPITAL, secret: str = SM3_SECRET, at: int | None = None
) -> dict[str, str]:
    ts = str(at if at is not None else int(time.time()))
    mac = hmac_sm3_hex(secret.encode(), ts.encode() + b"\n" + body)
    return {"x-ca-key": institution, "x-ca-signature": f"{ts}:{mac}"}


def x_tif(paasid: str = "paas-h2", token: str = TIF_TOKEN, nonce: str | None = None) -> dict[str, str]:
    ts, nonce = str(int(time.time())), nonce or secrets.token_hex(8)
    return {
        "x-tif-paasid": paasid,
        "x-tif-timestamp": ts,
        "x-tif-nonce": nonce,
        "x-tif-signature": tif_signature(ts, token, nonce),
    }


async def test_a_client_certificate_proves_its_institution_only(https_gateway: Gateway, pki: Path) -> None:  # noqa: F811
    mine = await post(https_gateway, client_ssl(pki, HOSPITAL), sign_in(HOSPITAL))
    assert mine["infcode"] == 0, mine["err_msg"]
    other = await post(https_gateway, client_ssl(pki, HOSPITAL), sign_in(HOSPITAL_2))
    assert other["infcode"] == -2 and "fixmedins_code" in other["err_msg"]
    assert "INSTITUTION_MISMATCH 432" in other["err_msg"]


async def test_unsigned_without_certificate_is_refused(https_gateway: Gateway, pki: Path) -> None:  # noqa: F811
    answer = await post(https_gateway, client_ssl(pki, None), sign_in(HOSPITAL))
    assert answer["infcode"] == -2 and "SIGNATURE_REJECTED 431" in answer["err_msg"]


async def test_x_ca_hmac_sm3_signature(https_gateway: Gateway, pki: Path) -> None:  # noqa: F811
    anonymous = client_ssl(pki, None)
    body = sign_in(HOSPITAL)
    assert (await post(https_gateway, anonymous, body, x_ca(body)))["infcode"] == 0
    cases = {
        "x-ca-signature: does not match": x_ca(body, secret="a guessed secret"),
        "x-ca-signature: more than 300 s": x_ca(body, at=int(time.time()) - 301),
        "x-ca-key: no SM3 key": x_ca(body, institution="H50010600001"),
    }
    for expected, headers in cases.items():
        answer = await post(https_gateway, anonymous, body, headers)
        assert answer["infcode"] == -2 and expected in answer["err_msg"], answer["err_msg"]
    changed = sign_in(HOSPITAL).replace(b'"1022"', b'"9999"')
    answer = await post(https_gateway, anonymous, changed, x_ca(body))
    assert "does not match the body" in answer["err_msg"]
    # signed correctly by the first hospital, for a message naming the second
    other = sign_in(HOSPITAL_2)
    answer = await post(https_gateway, anonymous, other, x_ca(other))
    assert "INSTITUTION_MISMATCH 432" in answer["err_msg"]


async def test_x_tif_signature_and_replay(https_gateway: Gateway, pki: Path) -> None:  # noqa: F811
    anonymous = client_ssl(pki, None)
    headers = x_tif()
    assert (await post(https_gateway, anonymous, sign_in(HOSPITAL_2), headers))["infcode"] == 0
    replayed = await post(https_gateway, anonymous, sign_in(HOSPITAL_2), headers)
    assert "x-tif-nonce: already used" in replayed["err_msg"]
    wrong = await post(https_gateway, anonymous, sign_in(HOSPITAL_2), x_tif(token="not the token"))
    assert "x-tif-signature: does not match" in wrong["err_msg"]
    unknown = await post(https_gateway, anonymous, sign_in(HOSPITAL_2), x_tif(paasid="nobody"))
    assert "x-tif-paasid: unknown" in unknown["err_msg"]
    other = await post(https_gateway, anonymous, sign_in(HOSPITAL), x_tif())
    assert "INSTITUTION_MISMATCH 432" in other["err_msg"]


async def test_a_signed_message_settles_nothing_before_its_proof(https_gateway: Gateway, pki: Path) -> None:  # noqa: F811
    """The refusal comes before any transaction runs: a refused 9001 leaves no sign-in behind."""
    anonymous = client_ssl(pki, None)
    body = sign_in(HOSPITAL)
    refused = await post(https_gateway, anonymous, body, x_ca(body, secret="wrong"))
    assert refused["infcode"] == -2 and refused["output"] == {}
    client = https_gateway.nhsa.t.store.client  # scan_iter: every master of a cluster, not one
    assert [k async for k in client.scan_iter(match="ms:*:nhsa:sign:*")] == []
