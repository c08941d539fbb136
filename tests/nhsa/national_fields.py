"""The field lists of NHSA.md (the national interface's outputs) and the platform's identities, checked
on every answer the tests receive. Amounts arrive as their JSON text and are compared in fen."""

from __future__ import annotations

import re
from typing import Any

from gateway.nhsa.amounts import fen

ENVELOPE = ("infcode", "inf_refmsgid", "refmsg_time", "respond_time", "err_msg", "output")
SETLINFO = [
    "mdtrt_id",
    "setl_id",
    "psn_no",
    "psn_name",
    "psn_cert_type",
    "certno",
    "gend",
    "naty",
    "brdy",
    "age",
    "insutype",
    "psn_type",
    "cvlserv_flag",
    "setl_time",
    "mdtrt_cert_type",
    "med_type",
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "pool_prop_selfpay",
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "oth_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "hosp_part_amt",
    "balc",
    "acct_mulaid_pay",
    "medins_setl_id",
    "clr_optins",
    "clr_way",
    "clr_type",
]
SETLDETAIL = [
    "fund_pay_type",
    "inscp_scp_amt",
    "crt_payb_lmt_amt",
    "fund_payamt",
    "fund_pay_type_name",
    "setl_proc_info",
]
FEE_RESULT = [
    "feedetl_sn",
    "det_item_fee_sumamt",
    "cnt",
    "pric",
    "pric_uplmt_amt",
    "selfpay_prop",
    "fulamt_ownpay_amt",
    "overlmt_amt",
    "preselfpay_amt",
    "inscp_scp_amt",
    "chrgitm_lv",
    "med_chrgitm_type",
]
BASEINFO = ["psn_no", "psn_cert_type", "certno", "psn_name", "gend", "naty", "brdy", "age"]
INSUINFO = [
    "balc",
    "insutype",
    "psn_type",
    "psn_insu_stas",
    "psn_insu_date",
    "paus_insu_date",
    "cvlserv_flag",
    "insuplc_admdvs",
    "emp_name",
]
VISIT = ["mdtrt_id", "psn_no", "ipt_otp_no"]
SIGNIN = ["sign_time", "sign_no"]
STMTINFO = ["setl_optins", "stmt_rslt", "stmt_rslt_dscr"]
STMT_ROW = [
    "psn_no",
    "mdtrt_id",
    "setl_id",
    "msgid",
    "stmt_rslt",
    "refd_setl_flag",
    "memo",
    "medfee_sumamt",
    "fund_pay_sumamt",
    "acct_pay",
]
MONEY = [
    "medfee_sumamt",
    "fulamt_ownpay_amt",
    "overlmt_selfpay",
    "preselfpay_amt",
    "inscp_scp_amt",
    "act_pay_dedc",
    "hifp_pay",
    "cvlserv_pay",
    "hifes_pay",
    "hifmi_pay",
    "hifob_pay",
    "maf_pay",
    "oth_pay",
    "fund_pay_sumamt",
    "psn_part_amt",
    "acct_pay",
    "psn_cash_pay",
    "hosp_part_amt",
    "balc",
    "acct_mulaid_pay",
]
YUAN = re.compile(r"^-?\d+\.\d\d$")
STAMP = re.compile(r"^\d{17}$")


def has(node: dict[str, Any], names: list[str] | tuple[str, ...], where: str) -> None:
    missing = [n for n in names if n not in node]
    assert not missing, f"{where} lacks {missing}"


def envelope(answer: dict[str, Any]) -> None:
    has(answer, ENVELOPE, "envelope")
    assert answer["infcode"] in (0, -1, -2)
    assert STAMP.match(answer["refmsg_time"]) and STAMP.match(answer["respond_time"])
    assert answer["refmsg_time"] <= answer["respond_time"]
    assert len(answer["inf_refmsgid"]) == 30 and answer["inf_refmsgid"].isdigit()
    if answer["infcode"] != 0:
        assert answer["err_msg"], "an error names its field or rule"


def settlement(output: dict[str, Any]) -> dict[str, int]:
    """setlinfo and setldetail: every field, every amount yuan with two decimals, the identities."""
    info, detail = output["setlinfo"], output["setldetail"]
    has(info, SETLINFO, "setlinfo")
    for row in detail:
        has(row, SETLDETAIL, "setldetail[]")
        assert YUAN.match(row["fund_payamt"]), row
    for name in MONEY:
        assert YUAN.match(info[name]), (name, info[name])
    assert re.match(r"^\d\.\d{4}$", info["pool_prop_selfpay"])
    f = {name: fen(info[name]) for name in MONEY}
    assert f["medfee_sumamt"] == (
        f["fulamt_ownpay_amt"] + f["overlmt_selfpay"] + f["preselfpay_amt"] + f["inscp_scp_amt"]
    )
    assert f["psn_part_amt"] == f["acct_pay"] + f["psn_cash_pay"]
    assert f["fund_pay_sumamt"] == sum(fen(row["fund_payamt"]) for row in detail)
    assert f["medfee_sumamt"] == f["fund_pay_sumamt"] + f["psn_part_amt"] + f["hosp_part_amt"]
    columns = ("hifp_pay", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay")
    assert f["fund_pay_sumamt"] == sum(f[c] for c in columns)
    return f


def fee_results(output: dict[str, Any]) -> list[dict[str, int]]:
    out = []
    for row in output["result"]:
        has(row, FEE_RESULT, "result[]")
        parts = [fen(row[n]) for n in ("fulamt_ownpay_amt", "overlmt_amt", "preselfpay_amt", "inscp_scp_amt")]
        assert fen(row["det_item_fee_sumamt"]) == sum(parts), row
        assert fen(row["det_item_fee_sumamt"]) == fen(row["pric"]) * int(row["cnt"])
        out.append({"total": fen(row["det_item_fee_sumamt"]), "in_scope": parts[3]})
    return out
