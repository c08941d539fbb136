import json
import pytest
pytestmark = pytest.mark.asyncio
from .conftest import CARD, PERSON, National


async def test_outpatient(his: National) -> None:
    info = await his.ok("1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}})
    print(json.dumps(info, ensure_ascii=False))
    reg = await his.ok("2201", {"data": {"psn_no": PERSON, "insutype": "310", "begntime": "2026-06-15 10:00:00",
                               "mdtrt_cert_type": "03", "mdtrt_cert_no": CARD, "ipt_otp_no": "OP1", "med_type": "11"}})
    mdtrt = reg["data"]["mdtrt_id"]
    up = await his.ok("2204", {"feedetail": [{"feedetl_sn": "1", "mdtrt_id": mdtrt, "psn_no": PERSON, "med_list_codg": "D000073", "pric": "12.50", "cnt": 2, "det_item_fee_sumamt": 25, "fee_ocur_time": "2026-06-15 10:05:00"}]})
    print(json.dumps(up, ensure_ascii=False))
    pre = await his.ok("2206", {"data": {"psn_no": PERSON, "mdtrt_id": mdtrt, "medfee_sumamt": "25.00", "med_type": "11", "psn_setlway": "01", "acct_used_flag": "1"}})
    print(json.dumps(pre, ensure_ascii=False))
    st = await his.call("2207", {"data": {"psn_no": PERSON, "mdtrt_id": mdtrt, "medfee_sumamt": "25.00", "med_type": "11", "psn_setlway": "01", "acct_used_flag": "1"}})
    print(json.dumps(st, ensure_ascii=False))
