"""A gateway with the national front end on (plaintext HTTP, and with TLS in test_signing.py), over the
shared embedded redis-server with the demo data, reached with a real HTTP client (aiohttp)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from adapters.embedded_redis import EmbeddedRedis
from gateway.config import Config
from gateway.data_loading import load_citydata_dir
from gateway.nhsa.amounts import dumps, fen, loads
from gateway.nhsa.signing import write_key_file
from gateway.server import Gateway, redis_client

from ..conftest import INDEX, INDEX_KEY, NOW
from . import national_fields

HOSPITAL = "H50010300001"  # level 3, Yuzhong 500103
HOSPITAL_2 = "H50010300002"
PHARMACY = "P50010300001"
CARD = "Y53736293"  # PSN500000000001 张伟, Chongqing employee, balance 4,255.00
PERSON = "PSN500000000001"
ID_NUMBER = "500103197803127019"
RESIDENT_CARD = "V01276858"  # PSN500000000005 陈秀英, Chongqing resident
RESIDENT = "PSN500000000005"
LOST_CARD = "Q45301612"
SM3_SECRET = "sm3-secret-of-the-first-hospital"
TIF_TOKEN = "tif-token-of-the-second-hospital"
KEYS = {
    HOSPITAL: {"sm3_secret": SM3_SECRET},
    HOSPITAL_2: {"tif_paasid": "paas-h2", "tif_token": TIF_TOKEN},
}
SEQUENCE = itertools.count(1)


def msgid(institution: str = HOSPITAL) -> str:
    return f"{institution}20260615103000{next(SEQUENCE) % 10_000:04d}{next(SEQUENCE) % 100:02d}"


class National:
    """An HIS talking the national interface over HTTP: envelopes, a sign-in, fresh msgids."""

    def __init__(self, session: aiohttp.ClientSession, base: str, institution: str = HOSPITAL) -> None:
        self.session, self.base, self.institution = session, base, institution
        self.sign_no = ""
        self.headers: Callable[[bytes], dict[str, str]] | None = None

    def envelope(self, infno: str, data: dict[str, Any], message_id: str | None = None, **extra: Any) -> Any:
        return {
            "infno": infno,
            "msgid": message_id or msgid(self.institution),
            "mdtrtarea_admvs": "500103",
            "insuplc_admdvs": "500103",
            "recer_sys_code": "YBXT",
            "dev_no": "",
            "dev_safe_info": "",
            "cainfo": "",
            "signtype": "",
            "infver": "V1.0",
            "opter_type": "1",
            "opter": "1022",
            "opter_name": "钟某",
            "inf_time": "2026-06-15 10:30:00",
            "fixmedins_code": self.institution,
            "fixmedins_name": "测试医院",
            "sign_no": self.sign_no,
            "input": data,
            **extra,
        }

    async def raw(
        self,
        body: bytes,
        path: str = "/fsi/api/rsfComIfsService/callService",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if self.headers is not None and headers is None:
            sent.update(self.headers(body))
        async with self.session.post(self.base + path, data=body, headers=sent) as response:
            return response.status, await response.read()

    async def send(
        self,
        envelope: Any,
        path: str = "/fsi/api/rsfComIfsService/callService",
        headers: dict[str, str] | None = None,
    ) -> Any:
        status, body = await self.raw(dumps(envelope).encode(), path, headers)
        assert status == 200, body
        answer = loads(body)  # amounts stay text: checked in integers
        national_fields.envelope(answer)
        return answer

    async def call(
        self, infno: str, data: dict[str, Any], message_id: str | None = None, **extra: Any
    ) -> Any:
        return await self.send(self.envelope(infno, data, message_id, **extra))

    async def ok(self, infno: str, data: dict[str, Any], message_id: str | None = None) -> Any:
        answer = await self.call(infno, data, message_id)
        assert answer["infcode"] == 0, answer["err_msg"]
        return answer["output"]

    async def sign_in(self) -> str:
        out = await self.ok("9001", {"signIn": {"opter_no": "1022", "mac": "00-11", "ip": "10.0.0.8"}})
        self.sign_no = out["signinoutb"]["sign_no"]
        return self.sign_no

    async def refused(self, infno: str, data: dict[str, Any], message_id: str | None = None) -> str:
        answer = await self.call(infno, data, message_id)
        assert answer["infcode"] == -2, answer
        return str(answer["err_msg"])

    async def register(self, card: str = CARD, person: str = PERSON, med_type: str = "11") -> str:
        data = {
            "psn_no": person,
            "insutype": "310",
            "begntime": "2026-06-15 09:00:00",
            "mdtrt_cert_type": "03",
            "mdtrt_cert_no": card,
            "ipt_otp_no": "OP1",
            "med_type": med_type,
        }
        return str((await self.ok("2201", {"data": data}))["data"]["mdtrt_id"])

    async def upload(
        self,
        mdtrt_id: str,
        lines: list[tuple[str, str, int]],
        person: str = PERSON,
        infno: str = "2204",
        first_sn: int = 1,
        day: str = "2026-06-15",
    ) -> Any:
        rows = [
            {
                "feedetl_sn": str(first_sn + i),
                "mdtrt_id": mdtrt_id,
                "psn_no": person,
                "chrg_bchno": "B1",
                "med_list_codg": code,
                "medins_list_codg": f"LOCAL-{code}",
                "pric": price,
                "cnt": cnt,
                "det_item_fee_sumamt": yuan_text(fen(price) * cnt),
                "fee_ocur_time": f"{day} 09:10:00",
            }
            for i, (code, price, cnt) in enumerate(lines)
        ]
        return await self.ok(infno, {"feedetail": rows})

    def settle_data(self, mdtrt_id: str, total: str, person: str = PERSON, **extra: Any) -> dict[str, Any]:
        return {
            "data": {
                "psn_no": person,
                "mdtrt_id": mdtrt_id,
                "medfee_sumamt": total,
                "med_type": "11",
                "psn_setlway": "01",
                "acct_used_flag": "1",
                "insutype": "310",
                "chrg_bchno": "B1",
                "mdtrt_cert_type": "03",
                "mdtrt_cert_no": CARD,
                **extra,
            }
        }


def yuan_text(amount_fen: int) -> str:
    whole, part = divmod(amount_fen, 100)
    return f"{whole}.{part:02d}"


async def start(redis_server: EmbeddedRedis, tmp_path: Path, **config: Any) -> Gateway:
    keys = tmp_path / "secrets" / "nhsa-keys.json"
    write_key_file(keys, KEYS)
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "redis_url": redis_server.url,
        "health_interval_ms": 100,
        "tls": None,
        "index_key": INDEX_KEY,
        "nhsa_listen": "127.0.0.1:0",
        "nhsa_keys_file": keys,
        **config,
    }
    cfg = Config(**settings)
    client = redis_client(redis_server.url, cfg)
    await load_citydata_dir(client, cfg.citydata, index=INDEX)
    await client.aclose()
    return await Gateway(cfg, redis_server.url, now=lambda: NOW).start()


@pytest_asyncio.fixture
async def national_gateway(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await start(redis_server, tmp_path)
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def his(national_gateway: Gateway) -> AsyncIterator[National]:
    async with aiohttp.ClientSession() as session:
        client = National(session, f"http://127.0.0.1:{national_gateway.nhsa.port}")
        await client.sign_in()
        yield client
