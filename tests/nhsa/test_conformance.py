"""Conformance: every request sample in the shared nhsa-samples/ (real production requests, vendor code
and test templates) replayed against the gateway, mapped onto the demo data where it names persons,
institutions, visits or settlements (shapes and amounts kept), answered with the infcode the interface
documents; and every field of the platform's published answers present in ours (NHSA.md)."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from gateway.nhsa.amounts import fen
from gateway.server import Gateway

from . import national_fields as check
from .conftest import CARD, ID_NUMBER, PERSON, RESIDENT, RESIDENT_CARD, National, msgid, start

pytestmark = pytest.mark.asyncio

SAMPLES = Path("/work/shared/domain/nhsa-samples")
if not SAMPLES.is_dir():  # the repository's copy when the shared folder is not mounted
    SAMPLES = Path(__file__).parent / "samples"


def request_samples() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.glob("*.json")):
        body = json.loads(path.read_text())
        for i, sample in enumerate(body["samples"]):
            if sample["kind"].startswith("request") and path.stem != "envelope":
                out.append((path.stem, i, sample))
    return out


def response_samples() -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in sorted(SAMPLES.glob("*.json")):
        for i, sample in enumerate(json.loads(path.read_text())["samples"]):
            payload = sample["payload"]
            if (
                sample["kind"].startswith("response")
                and isinstance(payload, dict)
                and isinstance(payload.get("output"), dict)
            ):
                out.append((path.stem, i, sample))
    return out


REQUESTS = request_samples()
# region-specific fields of the samples that the national field lists (NHSA.md) do not have
REGIONAL = {
    "cashPayamt",
    "crt_dedc",
    "dedc_std",
    "hifdm_pay",
    "inscp_amt",
    "insu_admdvs",
    "mdtrt_cert_no",
    "othfund_pay",
    "ownpay_hosp_part",
    "psn_insu_rlts_id",
    "psn_pay",
    "begndate",
    "enddate",
    "invono",
    "setl_type",
    "exp_content",
    "expContent",
    "cardecinfo",
    "idetinfo",
}


@pytest_asyncio.fixture
async def gateway_with_ledger(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Gateway]:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(dsn)
    ledger.migrate()
    ledger.close()
    gw = await start(redis_server, tmp_path, ledger_dsn=dsn)
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def his(gateway_with_ledger: Gateway) -> AsyncIterator[National]:
    async with aiohttp.ClientSession() as session:
        client = National(session, f"http://127.0.0.1:{gateway_with_ledger.nhsa.port}")
        await client.sign_in()
        yield client


def mapped(payload: Any, his: National, values: dict[str, str]) -> dict[str, Any]:
    """The sample with its persons, institution, ids and placeholders (<...>) put onto the demo data;
    a template's envelope (bound at runtime by its page or code) completed with the standard fields."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: value_of(k, walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    def value_of(key: str, value: Any) -> Any:
        if key in values:
            return values[key]
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            return {
                "insutype": "310",
                "stmt_begndate": "2026-06-15",
                "stmt_enddate": "2026-06-15",
                "inf_time": "2026-06-15 10:30:00",
            }.get(key, "")
        if key in ("stmt_begndate", "stmt_enddate") and value == "":
            return "2026-06-15"
        return value

    out = walk(copy.deepcopy(payload))
    envelope = his.envelope(out["infno"], out.get("input", {}))
    return {**envelope, **{k: v for k, v in out.items() if k in envelope}, **values_of_envelope(his)}


def values_of_envelope(his: National) -> dict[str, Any]:
    return {
        "fixmedins_code": his.institution,
        "msgid": msgid(his.institution),
        "sign_no": his.sign_no,
        "mdtrtarea_admvs": "500103",
        "insuplc_admdvs": "500103",
        "inf_time": "2026-06-15 10:30:00",
    }


async def settled_visit(
    his: National, card: str = CARD, person: str = PERSON, batch: str = "B1", price: str = "25.00"
) -> tuple[str, str, str]:
    """A registered, uploaded and settled outpatient visit: (mdtrt_id, setl_id, msgid of the 2207)."""
    mdtrt_id = await his.register(card, person)
    rows = [
        {
            "feedetl_sn": "1",
            "mdtrt_id": mdtrt_id,
            "psn_no": person,
            "chrg_bchno": batch,
            "med_list_codg": "T000001",
            "pric": price,
            "cnt": 1,
            "det_item_fee_sumamt": price,
            "fee_ocur_time": "2026-06-15 09:10:00",
        }
    ]
    await his.ok("2204", {"feedetail": rows})
    message_id = msgid()
    data = his.settle_data(mdtrt_id, price, person, chrg_bchno=batch, mdtrt_cert_no=card)
    out = await his.ok("2207", data, message_id)
    return mdtrt_id, out["setlinfo"]["setl_id"], message_id


@pytest.mark.parametrize(("infno", "index", "sample"), REQUESTS, ids=[f"{i}-{n}" for i, n, _ in REQUESTS])
async def test_request_sample_is_answered_as_documented(
    his: National, infno: str, index: int, sample: dict[str, Any]
) -> None:
    payload = sample["payload"]
    values: dict[str, str] = {}
    expected = 0
    if infno == "1101":
        values = {"certno": ID_NUMBER, "psn_name": "张伟"}
    elif infno == "2207":  # a resident's 9.00 registration fee, all in scope (Chongqing, 2021)
        mdtrt_id = await his.register(RESIDENT_CARD, RESIDENT, med_type="12")
        batch = payload["input"]["data"]["chrg_bchno"]
        rows = [
            {
                "feedetl_sn": "1",
                "mdtrt_id": mdtrt_id,
                "psn_no": RESIDENT,
                "chrg_bchno": batch,
                "med_list_codg": "T000001",
                "pric": 9,
                "cnt": 1,
                "det_item_fee_sumamt": 9,
            }
        ]
        await his.ok("2204", {"feedetail": rows})
        values = {"mdtrt_id": mdtrt_id, "psn_no": RESIDENT, "mdtrt_cert_no": RESIDENT_CARD}
    elif infno == "2208":
        mdtrt_id, setl_id, _ = await settled_visit(his)
        values = {"mdtrt_id": mdtrt_id, "setl_id": setl_id, "psn_no": PERSON}
    elif infno == "2601":
        _, _, omsgid = await settled_visit(his)
        values = {"omsgid": omsgid, "psn_no": PERSON, "oinfno": "2207"}
    elif infno == "3101":
        expected = -2  # pre-settlement audit rules: not served
    answer = await his.send(mapped(payload, his, values))
    assert answer["infcode"] == expected, answer["err_msg"]
    output = answer["output"]
    if infno == "9001":
        check.has(output["signinoutb"], check.SIGNIN, "signinoutb")
    elif infno == "1101":
        assert output["baseinfo"]["psn_no"] == PERSON
    elif infno == "2207":
        f = check.settlement(output)
        assert (
            f["medfee_sumamt"] == 900
            and f["inscp_scp_amt"] == 900
            and output["setlinfo"]["insutype"] == "390"
        )
    elif infno == "2208":
        f = check.settlement(output)
        assert f["medfee_sumamt"] == -2500, "the negative mirror of the cancelled settlement"
    elif infno == "2601":
        assert output == {}  # the national answer has no output node
    elif infno == "3101":
        assert "TRANSACTION_UNSUPPORTED 439" in answer["err_msg"]
    elif infno == "3201":  # the sample's one 2.00 account payment: the ledger has none
        assert output["stmtinfo"]["stmt_rslt"] == "000103"
        assert output["stmtinfo"]["setl_optins"] == payload["input"]["data"]["setl_optins"]
    elif infno == "3202":  # an empty template: nothing on either side
        assert output["stmtinfo"]["stmt_rslt"] == "000000" and output["result"] == []


async def our_outputs(his: National) -> dict[str, dict[str, Any]]:
    """One answer of ours per transaction that has a published platform answer."""
    out: dict[str, dict[str, Any]] = {}
    out["9001"] = await his.ok("9001", {"signIn": {"opter_no": "2", "mac": "", "ip": ""}})
    second = out["9001"]["signinoutb"]["sign_no"]
    out["9002"] = await his.ok("9002", {"signOut": {"sign_no": second, "opter_no": "2"}})
    out["1101"] = await his.ok("1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}})
    mdtrt_id = await his.register()
    out["2204"] = await his.upload(mdtrt_id, [("D000073", "4.52", 1)])
    total = "4.52"
    out["2206"] = await his.ok("2206", his.settle_data(mdtrt_id, total))
    out["2207"] = await his.ok("2207", his.settle_data(mdtrt_id, total))
    setl_id = out["2207"]["setlinfo"]["setl_id"]
    out["2208"] = await his.ok("2208", {"data": {"psn_no": PERSON, "mdtrt_id": mdtrt_id, "setl_id": setl_id}})
    stay = (
        await his.ok(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": PERSON,
                    "med_type": "21",
                    "begntime": "2026-06-12",
                    "mdtrt_cert_type": "03",
                    "mdtrt_cert_no": CARD,
                }
            },
        )
    )["result"]["mdtrt_id"]
    out["2301"] = await his.upload(stay, [("T000005", "15.00", 2)], infno="2301", day="2026-06-12")
    data = {"data": {"psn_no": PERSON, "mdtrt_id": stay, "medfee_sumamt": "30.00", "enddate": "2026-06-15"}}
    out["2303"] = await his.ok("2303", data)
    out["2304"] = await his.ok("2304", data)
    out["2305"] = await his.ok(
        "2305", {"data": {"psn_no": PERSON, "mdtrt_id": stay, "setl_id": out["2304"]["setlinfo"]["setl_id"]}}
    )
    return out


async def test_our_answers_carry_every_field_of_the_platforms_published_answers(his: National) -> None:
    ours = await our_outputs(his)
    mdtrt = await his.ok("2201", {"data": {"psn_no": PERSON, "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}})
    ours["2201"] = mdtrt
    for infno, index, sample in response_samples():
        if "9002" in sample["kind"]:
            infno = "9002"
        if infno not in ours:
            continue
        theirs, mine = sample["payload"]["output"], ours[infno]
        for node, value in theirs.items():
            if node in REGIONAL:
                continue
            assert node in mine, f"{infno}[{index}]: our output lacks {node}"
            their_row = value[0] if isinstance(value, list) and value else value
            my_value = mine[node]
            my_row = my_value[0] if isinstance(my_value, list) and my_value else my_value
            if isinstance(their_row, dict) and isinstance(my_row, dict):
                missing = sorted(set(their_row) - set(my_row) - REGIONAL)
                assert not missing, f"{infno}[{index}].{node}: our answer lacks {missing}"
    for infno in ("2206", "2207", "2208", "2303", "2304", "2305"):
        check.settlement(ours[infno])
    assert fen(ours["2208"]["setlinfo"]["medfee_sumamt"]) == -452
