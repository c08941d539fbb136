"""End to end in national messages only, over real HTTP against a gateway on a real redis-server with a
real ledger fed by the posting worker: a whole outpatient visit (9001, 1101, 2201, 2203, 2204, 2205,
2206, 2207 and its resend, 5203, a 2208 the rules refuse), a whole inpatient stay with an interim
settlement (2401, 2301, 2303, 2304 interim, 2301, 2304 final), 2601 of the final part, then 3201 and
3202 against the ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from adapters.embedded_redis import EmbeddedRedis
from adapters.ledger.store import Ledger
from adapters.redis_topology import sync_client
from gateway.nhsa.amounts import dumps, fen
from gateway.posting.worker import PostingWorker, WorkerConfig
from gateway.server import Gateway

from ..posting.test_worker import run_until_caught_up
from . import national_fields as check
from .conftest import CARD, HOSPITAL, PERSON, National, msgid, start, yuan_text

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def ledger_gateway(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Gateway]:
    dsn = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(dsn)
    ledger.migrate()
    ledger.close()
    gw = await start(redis_server, tmp_path, ledger_dsn=dsn)
    yield gw
    await gw.stop()


async def post_everything(gw: Gateway, redis_server: EmbeddedRedis) -> None:
    sync = sync_client(redis_server.url)  # one node or the cluster (MEDSETTLE_TEST_REDIS)
    ledger = Ledger(gw.config.ledger_dsn or "")
    await asyncio.to_thread(
        run_until_caught_up, PostingWorker(sync, ledger, WorkerConfig(consumer="w")), sync
    )
    ledger.close()


async def test_outpatient_visit_and_inpatient_stay_in_national_messages(
    ledger_gateway: Gateway, redis_server: EmbeddedRedis
) -> None:
    async with aiohttp.ClientSession() as session:
        his = National(session, f"http://127.0.0.1:{ledger_gateway.nhsa.port}")
        await his.sign_in()

        # ---- the card swipe: who, insured where, the account balance
        info = await his.ok("1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}})
        check.has(info["baseinfo"], check.BASEINFO, "baseinfo")
        for row in info["insuinfo"]:
            check.has(row, check.INSUINFO, "insuinfo[]")
        assert info["baseinfo"]["psn_no"] == PERSON and info["baseinfo"]["psn_name"] == "张*"
        balance = fen(info["insuinfo"][0]["balc"])
        assert balance == 425500

        # ---- an outpatient visit
        mdtrt_id = await his.register()
        assert (
            await his.ok(
                "2203",
                {
                    "mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "med_type": "11"},
                    "diseinfo": [{"diag_code": "J06.900", "diag_name": "上呼吸道感染"}],
                },
            )
            == {}
        )
        uploaded = await his.upload(
            mdtrt_id,
            [
                ("T000002", "25.00", 1),
                ("D000073", "36.80", 2),
                ("D000141", "48.00", 1),
                ("T000006", "20.00", 1),
            ],
        )
        lines = check.fee_results(uploaded)
        assert [r["feedetl_sn"] for r in uploaded["result"]] == ["1", "2", "3", "4"]
        assert uploaded["result"][1]["chrgitm_lv"] == "02" and lines[1]["in_scope"] == 5888  # 73.60 less 20%
        assert uploaded["result"][2]["chrgitm_lv"] == "03" and lines[2]["in_scope"] == 0  # class C
        # the HIS takes the blood test back off the bill before settling
        assert (
            await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "feedetl_sn": "4"}}) == {}
        )
        total = yuan_text(2500 + 7360 + 4800)
        pre = await his.ok("2206", his.settle_data(mdtrt_id, total))
        pre_f = check.settlement(pre)
        assert pre["setlinfo"]["setl_id"] is None and pre_f["balc"] == balance - pre_f["acct_pay"]

        settle_id = msgid()
        settled = await his.call("2207", his.settle_data(mdtrt_id, total), settle_id)
        assert settled["infcode"] == 0, settled["err_msg"]
        f = check.settlement(settled["output"])
        assert f == pre_f, "the settlement pays what the pre-settlement said"
        setl = settled["output"]["setlinfo"]
        assert setl["setl_id"].startswith("S") and setl["medins_setl_id"] == settle_id
        assert f["medfee_sumamt"] == 14660 and f["fulamt_ownpay_amt"] == 4800

        # a resend (the HIS never saw the answer) gets the original answer, byte for byte
        envelope = his.envelope("2207", his.settle_data(mdtrt_id, total), settle_id)
        first = await his.raw(dumps(envelope).encode())
        again = await his.raw(dumps(envelope).encode())
        assert first == again and (await his.send(envelope)) == settled
        # the same visit settled again under a new msgid: refused, nothing charged twice
        err = await his.refused("2207", his.settle_data(mdtrt_id, total))
        assert "no fee details to settle" in err and "FEE_DETAIL_REJECTED 436" in err

        queried = await his.ok(
            "5203", {"data": {"psn_no": PERSON, "setl_id": setl["setl_id"], "mdtrt_id": mdtrt_id}}
        )
        assert check.settlement(queried) == f and queried["setlinfo"]["refd_setl_flag"] == "0"

        # ---- an inpatient stay: admission, two days of fees, an interim settlement, more fees, the final
        admitted = await his.ok(
            "2401",
            {
                "mdtrtinfo": {
                    "psn_no": PERSON,
                    "insutype": "310",
                    "med_type": "21",
                    "begntime": "2026-06-10 08:00:00",
                    "mdtrt_cert_type": "03",
                    "mdtrt_cert_no": CARD,
                    "ipt_no": "ZY001",
                }
            },
        )
        check.has(admitted["result"], check.VISIT, "result")
        stay = admitted["result"]["mdtrt_id"]
        days = [("T000005", "15.00", 1), ("D000075", "32.30", 4), ("D000044", "8.50", 2)]
        check.fee_results(await his.upload(stay, days, infno="2301", day="2026-06-10"))
        check.fee_results(await his.upload(stay, days, infno="2301", first_sn=10, day="2026-06-11"))
        part1_total = yuan_text(2 * (1500 + 4 * 3230 + 2 * 850))
        stay_data = {
            "psn_no": PERSON,
            "mdtrt_id": stay,
            "medfee_sumamt": part1_total,
            "psn_setlway": "01",
            "insutype": "310",
            "acct_used_flag": "1",
            "mid_setl_flag": "1",
            "enddate": "2026-06-11",
        }
        pre1 = check.settlement(await his.ok("2303", {"data": stay_data}))
        part1 = await his.ok("2304", {"data": stay_data})
        p1 = check.settlement(part1)
        assert p1 == pre1 and p1["act_pay_dedc"] > 0
        check.fee_results(await his.upload(stay, days, infno="2301", first_sn=20, day="2026-06-14"))
        final_id = msgid()
        final_data = {
            **stay_data,
            "medfee_sumamt": yuan_text(1500 + 4 * 3230 + 2 * 850),
            "mid_setl_flag": "0",
            "enddate": "2026-06-15",
        }
        final = await his.ok("2304", {"data": final_data}, final_id)
        p2 = check.settlement(final)
        assert p2["medfee_sumamt"] == 1500 + 4 * 3230 + 2 * 850, "the final part settles the new fees only"
        if p1["act_pay_dedc"] < p1["inscp_scp_amt"]:
            assert p2["act_pay_dedc"] == 0, "one stay, one deductible: the interim part paid it"

        # ---- 2601: the final part reversed by its msgid; the stay's last fees may settle again
        assert await his.ok("2601", {"data": {"psn_no": PERSON, "omsgid": final_id, "oinfno": "2304"}}) == {}
        gone = await his.ok("5203", {"data": {"psn_no": PERSON, "setl_id": final["setlinfo"]["setl_id"]}})
        assert gone["setlinfo"]["refd_setl_flag"] == "1"
        again_final = await his.ok("2304", {"data": final_data})
        assert check.settlement(again_final) == p2

        # ---- 2208 of the outpatient settlement: later settlements stand on it, the rule says no (-2)
        refusal = await his.refused(
            "2208", {"data": {"psn_no": PERSON, "mdtrt_id": mdtrt_id, "setl_id": setl["setl_id"]}}
        )
        assert "LATER_SETTLEMENTS_EXIST 405" in refusal and again_final["setlinfo"]["setl_id"] in refusal

        # ---- 3201 / 3202 against the ledger, once the worker has booked everything
        await post_everything(ledger_gateway, redis_server)
        standing = [f, p1, check.settlement(again_final)]  # the first final part is reversed
        sums = {k: sum(s[k] for s in standing) for k in ("medfee_sumamt", "fund_pay_sumamt", "acct_pay")}
        totals = {
            "insutype": "310",
            "clr_type": "11",
            "setl_optins": "500103",
            "stmt_begndate": "2026-06-15",
            "stmt_enddate": "2026-06-15",
            "medfee_sumamt": yuan_text(sums["medfee_sumamt"]),
            "fund_pay_sumamt": yuan_text(sums["fund_pay_sumamt"]),
            "acct_pay": yuan_text(sums["acct_pay"]),
            "fixmedins_setl_cnt": 3,
        }
        balanced = await his.ok("3201", {"data": totals})
        check.has(balanced["stmtinfo"], check.STMTINFO, "stmtinfo")
        assert balanced["stmtinfo"]["stmt_rslt"] == "000000", balanced
        off = await his.ok("3201", {"data": {**totals, "fixmedins_setl_cnt": 4}})
        assert off["stmtinfo"]["stmt_rslt"] == "000103" and "笔数3" in off["stmtinfo"]["stmt_rslt_dscr"]

        rows = [
            {
                "setl_id": part1["setlinfo"]["setl_id"],
                "mdtrt_id": stay,
                "psn_no": PERSON,
                "medins_setl_id": part1["setlinfo"]["medins_setl_id"],
                "medfee_sumamt": yuan_text(p1["medfee_sumamt"]),
                "fund_pay_sumamt": yuan_text(p1["fund_pay_sumamt"]),
                "acct_pay": yuan_text(p1["acct_pay"]),
                "refd_setl_flag": "0",
            },
            {
                "setl_id": "S000-260615-0000000000000000",
                "mdtrt_id": stay,
                "psn_no": PERSON,
                "medins_setl_id": f"{HOSPITAL}202606150000009999",
                "medfee_sumamt": "1.00",
                "fund_pay_sumamt": "0.00",
                "acct_pay": "1.00",
                "refd_setl_flag": "0",
            },
        ]
        detail = await his.ok(
            "3202",
            {
                "data": {
                    "setl_optins": "500103",
                    "stmt_begndate": "2026-06-15",
                    "stmt_enddate": "2026-06-15",
                    "file_qury_no": "",
                },
                "detail": rows,
            },
        )
        results = {r["msgid"]: r for r in detail["result"]}
        for r in detail["result"]:
            check.has(r, check.STMT_ROW, "result[]")
        assert results[part1["setlinfo"]["medins_setl_id"]]["stmt_rslt"] == "000000"
        assert results[f"{HOSPITAL}202606150000009999"]["stmt_rslt"] == "000102"  # the platform has none
        one_sided = [r for r in detail["result"] if r["stmt_rslt"] == "000101"]
        assert sorted(r["msgid"] for r in one_sided) == sorted(
            [settle_id, again_final["setlinfo"]["medins_setl_id"]]
        )
        assert detail["stmtinfo"]["stmt_rslt"] == "000103"
