"""A development PKI (made once per session by the same code as `medsettle certs`), gateways serving real
mTLS on a real redis-server with the demo data, and channels presenting a given client certificate."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from adapters.embedded_redis import EmbeddedRedis
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.edge import certs
from gateway.edge.limits import EdgeLimits
from gateway.edge.tls import ClientTls, ServerTls, channel
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW

HOSPITAL = "H50010300001"
HOSPITAL_2 = "H50010300002"
PHARMACY = "P50010300001"
CARD = "Y53736293"
INSTITUTIONS = Path(__file__).resolve().parents[2] / "citydata" / "institutions.csv"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.ensure_pki(root, INSTITUTIONS)
    layout = certs.Layout(root)
    past = certs.now_utc() - dt.timedelta(days=3)
    certs.issue_client(layout, HOSPITAL, "expired", file_name="expired", not_before=past, days=1)
    certs.issue_client(layout, HOSPITAL, "bound to T1", terminal="T1")
    foreign = certs.Layout(tmp_path_factory.mktemp("foreign-pki"))
    certs.create_ca(foreign)
    certs.issue_client(foreign, HOSPITAL, "signed by another CA", file_name="foreign")
    (layout.root / "clients" / "foreign.crt").write_bytes(foreign.client_cert("foreign").read_bytes())
    certs.write_private(layout.client_key("foreign"), foreign.client_key("foreign").read_bytes())
    return root


def client_tls(pki: Path, name: str) -> ClientTls:
    return ClientTls.for_institution(pki, name)


StartGateway = Callable[..., Awaitable[Gateway]]


@pytest_asyncio.fixture
async def start_gateway(redis_server: EmbeddedRedis, pki: Path) -> AsyncIterator[StartGateway]:
    """Starts gateways on the test's redis-server: mTLS with the session PKI unless tls=None."""
    started: list[Gateway] = []
    loaded = False

    async def start(
        limits: EdgeLimits | None = None,
        tls: Any = "pki",
        ledger_dsn: str | None = None,
        crl: Path | None = None,
    ) -> Gateway:
        nonlocal loaded
        if not loaded:
            client = redis_client(redis_server.url, Config())
            await load_citydata_dir(client, Config().citydata, index=INDEX)
            await client.aclose()
            loaded = True
        if tls == "pki":
            base = ServerTls.from_dir(pki)
            tls = ServerTls(
                base.cert, base.key, base.client_ca, crl or base.crl, reload_check_interval_ms=100
            )
        config = Config(
            listen="127.0.0.1:0", redis_url=redis_server.url_for("gateway"), health_interval_ms=100, tls=tls,
            limits=limits or EdgeLimits(), ledger_dsn=ledger_dsn, index_key=INDEX_KEY,
        )  # fmt: skip
        gw = await Gateway(config, config.redis_url or "", now=lambda: NOW).start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


@pytest_asyncio.fixture
async def tls_gateway(start_gateway: StartGateway) -> Gateway:
    return await start_gateway()


@pytest.fixture
def connect(pki: Path) -> Iterator[Callable[..., grpc.aio.Channel]]:
    """connect(gateway, name) -> an asyncio channel presenting clients/<name>.crt (closed at the end)."""
    opened: list[grpc.aio.Channel] = []

    def make(gw: Gateway, name: str | None, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
        ch = channel(f"127.0.0.1:{gw.port}", None if name is None else client_tls(pki, name), options)
        opened.append(ch)
        return ch

    yield make
    # channels close with the event loop of the test; nothing to await here


def status_of(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, dict[str, Any]]:
    """The code and the rich details: reason (ErrorInfo), retry_delay_s (RetryInfo), fields (BadRequest)."""
    out: dict[str, Any] = {}
    status = rpc_status.from_call(exc)
    for detail in status.details if status else []:
        info, retry, bad = (
            error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo(), error_details_pb2.BadRequest()
        )  # fmt: skip
        if detail.Unpack(info):
            out["reason"] = info.reason
        elif detail.Unpack(retry):
            out["retry_delay_s"] = retry.retry_delay.ToMilliseconds() / 1000
        elif detail.Unpack(bad):
            out["fields"] = {v.field: v.description for v in bad.field_violations}
    return exc.code(), out
