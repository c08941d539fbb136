"""Output nodes filled from MedSettle's answers: `setlinfo`, `setldetail[]`, fee detail `result[]`.
Every amount is the split's integer fen written as yuan with two decimals (amounts.Fixed); every fund
the split lists lands in exactly one column, so the platform's identities hold by construction:
medfee_sumamt = fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt + inscp_scp_amt,
psn_part_amt = acct_pay + psn_cash_pay, fund_pay_sumamt = Σ setldetail.fund_payamt."""

from __future__ import annotations

from typing import Any

from gateway.engine.money import BP_ONE
from gateway.nhsa.amounts import Fixed, ratio, yuan

FUND_NAMES = {
    "310100": "城镇职工基本医疗保险统筹基金",
    "310200": "城镇职工基本医疗保险个人账户基金",
    "320100": "公务员医疗补助资金",
    "330100": "职工大额医疗费用补助基金",
    "390100": "城乡居民基本医疗保险基金",
    "390200": "城乡居民大病医疗保险资金",
    "610100": "医疗救助基金",
    "510100": "生育基金",
}
COLUMN_OF_FUND = {"320100": "cvlserv_pay", "330100": "hifob_pay", "390200": "hifmi_pay", "610100": "maf_pay"}
FUND_COLUMNS = ("hifp_pay", "cvlserv_pay", "hifes_pay", "hifmi_pay", "hifob_pay", "maf_pay", "oth_pay")
CLASS_CODES = {1: "01", 2: "02", 3: "03"}  # pb.ItemClass -> chrgitm_lv
INSUTYPE_OF_SCHEME = {1: "310", 2: "390"}  # pb.Scheme -> insutype
PSN_TYPE = {  # our person types -> the national psn_type codes
    "in_service": "1101",
    "retiree": "1102",
    "flexible": "1103",
    "migrant_worker": "1104",
    "student": "1501",
    "child": "1502",
    "adult": "1503",
    "elderly": "1504",
}
CLR_TYPE_OF_MED_TYPE = {"21": "21", "41": "41", "51": "51", "52": "51"}  # else 11, outpatient


def fund_column(fund: Any) -> str:
    if fund.layer == "basic":
        return "hifp_pay"
    return COLUMN_OF_FUND.get(fund.fund_code, "oth_pay")


def pooled_selfpay_ratio(split: Any) -> Fixed:
    """pool_prop_selfpay: the share of what the pooled fund could pay on (in scope, past the
    deductible) that the person still carries, four decimals, rounded half-up in integers."""
    base = split.in_scope_fen - split.deductible_fen
    if base <= 0:
        return ratio(0)
    pooled = sum(f.amount_fen for f in split.funds if f.layer == "basic")
    carried = max(0, base - pooled)
    return ratio((carried * BP_ONE + base // 2) // base)


def setldetail(split: Any) -> list[dict[str, Any]]:
    """One row per fund the split lists (the personal account is `acct_pay` in setlinfo, not a row:
    so fund_pay_sumamt is their sum)."""
    return [
        {
            "fund_pay_type": f.fund_code,
            "inscp_scp_amt": yuan(split.in_scope_fen),
            "crt_payb_lmt_amt": yuan(f.remaining_max_fen) if f.remaining_max_fen >= 0 else None,
            "fund_payamt": yuan(f.amount_fen),
            "fund_pay_type_name": FUND_NAMES.get(f.fund_code, f.layer),
            "setl_proc_info": None,
        }
        for f in split.funds
    ]


def setlinfo(
    split: Any, visit: dict[str, Any], setl_id: str | None, setl_time: str | None, msgid: str, med_type: str
) -> dict[str, Any]:
    columns = dict.fromkeys(FUND_COLUMNS, 0)
    for f in split.funds:
        columns[fund_column(f)] += f.amount_fen
    return {
        "mdtrt_id": visit.get("mdtrt_id", ""),
        "setl_id": setl_id,
        "psn_no": visit.get("psn_no", ""),
        "psn_name": visit.get("psn_name", ""),
        "psn_cert_type": "01",
        "certno": visit.get("certno", ""),
        "gend": visit.get("gend", ""),
        "naty": "",
        "brdy": visit.get("brdy", ""),
        "age": visit.get("age", 0),
        "insutype": INSUTYPE_OF_SCHEME.get(split.scheme, visit.get("insutype", "")),
        "psn_type": visit.get("psn_type", ""),
        "cvlserv_flag": visit.get("cvlserv_flag", "0"),
        "setl_time": setl_time,
        "mdtrt_cert_type": visit.get("mdtrt_cert_type", ""),
        "med_type": med_type,
        "medfee_sumamt": yuan(split.total_fen),
        "fulamt_ownpay_amt": yuan(split.full_selfpay_fen),
        "overlmt_selfpay": yuan(split.over_limit_fen),
        "preselfpay_amt": yuan(split.first_selfpay_fen),
        "inscp_scp_amt": yuan(split.in_scope_fen),
        "act_pay_dedc": yuan(split.deductible_fen),
        **{name: yuan(columns[name]) for name in FUND_COLUMNS},
        "pool_prop_selfpay": pooled_selfpay_ratio(split),
        "fund_pay_sumamt": yuan(split.fund_total_fen),
        "psn_part_amt": yuan(split.person_share_fen),
        "acct_pay": yuan(split.account_fen),
        "psn_cash_pay": yuan(split.cash_fen),
        "hosp_part_amt": yuan(split.institution_fen),  # per-disease payment: what the institution bears
        "balc": yuan(split.account_balance_after_fen),
        "acct_mulaid_pay": yuan(0),
        "medins_setl_id": msgid,
        "clr_optins": split.insured_district or split.insured_region,
        "clr_way": "1" if setl_id else None,
        "clr_type": CLR_TYPE_OF_MED_TYPE.get(med_type, "11"),
    }


def line_results(split: Any, details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """2204/2301 `result[]`: the split of each uploaded detail, matched by position (details[i] is
    bill line i + 1)."""
    out = []
    by_no = {line.line_no: line for line in split.lines}
    for i, detail in enumerate(details):
        line = by_no.get(i + 1)
        if line is None:
            continue
        out.append(
            {
                "feedetl_sn": detail["feedetl_sn"],
                "det_item_fee_sumamt": yuan(line.amount_fen),
                "cnt": Fixed(detail["cnt"], 0),
                "pric": yuan(detail["pric"]),
                "pric_uplmt_amt": yuan(line.price_limit_fen),
                "selfpay_prop": ratio(line.selfpay_bp),
                "fulamt_ownpay_amt": yuan(line.full_selfpay_fen),
                "overlmt_amt": yuan(line.over_limit_fen),
                "preselfpay_amt": yuan(line.first_selfpay_fen),
                "inscp_scp_amt": yuan(line.in_scope_fen),
                "chrgitm_lv": CLASS_CODES.get(line.item_class, ""),
                "med_chrgitm_type": "",
                "bas_medn_flag": "0",
                "hi_nego_drug_flag": "0",
                "chld_medc_flag": None,
                "list_sp_item_flag": None,
                "lmt_used_flag": "0",
                "drt_reim_flag": "0",
                "memo": ",".join(line.flags) or None,
                "exp_content": None,
            }
        )
    return out
