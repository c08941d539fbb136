"""The README's national example on the real thing: `medsettle serve` on its embedded defaults (two
gateway processes sharing the national port) prints the national address, and an HIS presenting its
institution's certificate from the data folder settles an outpatient visit over HTTPS, as the README's
curl lines do; another institution's certificate is refused; SIGTERM stops the port."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.nhsa.amounts import dumps, fen, loads

from . import national_fields as check

CLI = [sys.executable, "-m", "gateway.cli"]
H = "H50010300001"


async def national(url: str, context: ssl.SSLContext, institution: str = H) -> list[Any]:
    answers: list[Any] = []
    sequence = iter(range(1000, 10_000))
    sign_no = ""

    async def send(
        session: aiohttp.ClientSession, infno: str, data: Any, fixmedins: str = institution
    ) -> Any:
        body = {"infno": infno, "msgid": f"{fixmedins}20261202103000{next(sequence)}",
                "fixmedins_code": fixmedins, "sign_no": sign_no, "input": data}  # fmt: skip
        async with session.post(url, data=dumps(body), ssl=context) as reply:
            assert reply.status == 200
            answer = loads(await reply.read())
        answers.append(answer)
        return answer

    async with aiohttp.ClientSession() as session:
        signed = await send(session, "9001", {"signIn": {"opter_no": "1"}})
        assert signed["infcode"] == 0, signed["err_msg"]
        sign_no = signed["output"]["signinoutb"]["sign_no"]
        card = {"psn_no": "PSN500000000001", "mdtrt_cert_type": "03", "mdtrt_cert_no": "Y53736293"}
        visit = (await send(session, "2201", {"data": {**card, "med_type": "11"}}))["output"]["data"][
            "mdtrt_id"
        ]
        rows = [
            {"feedetl_sn": "1", "mdtrt_id": visit, "med_list_codg": "T000002", "pric": 25, "cnt": 1},
            {"feedetl_sn": "2", "mdtrt_id": visit, "med_list_codg": "D000073", "pric": "36.80", "cnt": 2},
        ]
        await send(session, "2204", {"feedetail": rows})
        data = {"data": {"psn_no": "PSN500000000001", "mdtrt_id": visit, "medfee_sumamt": "98.60"}}
        await send(session, "2207", data)
        await send(session, "9001", {"signIn": {"opter_no": "1"}}, fixmedins="H50010300002")
    return answers


def test_serve_settles_a_visit_in_national_messages_over_https(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--metrics-port", "-1",
         "--workers", "2", "--no-worker"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    url = None
    try:
        for line in proc.stdout:
            match = re.search(
                r"national interface on (https://127.0.0.1:\d+/fsi/api/rsfComIfsService/callService)", line
            )
            if match:
                url = match.group(1)
            if "serving" in line:
                break
        assert url is not None, "serve prints the national interface's address"
        certs = tmp_path / "certs"
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        context.load_cert_chain(str(certs / "clients" / f"{H}.crt"), str(certs / "clients" / f"{H}.key"))
        answers = asyncio.run(national(url, context))
        assert [a["infcode"] for a in answers] == [0, 0, 0, 0, -2], [a["err_msg"] for a in answers]
        settled = answers[3]["output"]
        f = check.settlement(settled)
        assert f["medfee_sumamt"] == 9860 and settled["setlinfo"]["setl_id"].startswith("S")
        assert fen(settled["setlinfo"]["balc"]) == 425500 - f["acct_pay"]
        assert "INSTITUTION_MISMATCH 432" in answers[4]["err_msg"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    port = int(url.split(":")[2].split("/")[0]) if url else 0
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the national port is closed with the gateway processes
