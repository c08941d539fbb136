"""The visit's diagnoses (2203 diseinfo) reach the bill the service layer splits: the policy's audit rules
limited to listed diagnoses and per-disease payment see them, and a bill with more diagnoses than a
bill may carry is refused naming the national field."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.codec import DIAGNOSES_MAX

from .conftest import PERSON, National

pytestmark = pytest.mark.asyncio


async def visit_with(his: National, codes: list[str]) -> str:
    mdtrt_id = await his.register()
    diseases: list[dict[str, Any]] = [{"diag_code": c, "diag_name": "诊断"} for c in codes]
    info = {"mdtrtinfo": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "med_type": "11"}, "diseinfo": diseases}
    assert await his.ok("2203", info) == {}
    return mdtrt_id


async def test_the_diagnoses_of_the_visit_are_on_the_bill(his: National) -> None:
    fine = await visit_with(his, ["J06.900", "I10.x00"])
    await his.upload(fine, [("T000002", "25.00", 1)])
    assert (await his.ok("2206", his.settle_data(fine, "25.00")))["setlinfo"]["medfee_sumamt"] == "25.00"

    # the fee upload splits its lines under the visit's bill: that is where too many diagnoses show
    too_many = await visit_with(his, [f"J{i:02d}.900" for i in range(DIAGNOSES_MAX + 1)])
    with pytest.raises(AssertionError) as refused:
        await his.upload(too_many, [("T000002", "25.00", 1)])
    err = str(refused.value)
    assert "diseinfo[].diag_code" in err and f"at most {DIAGNOSES_MAX}" in err
