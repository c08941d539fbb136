"""Golden cases, line level. Chongqing employee, outpatient, level-2 hospital in the insured district,
yearly outpatient deductible already met, so each line's arithmetic stands alone.
Chongqing class-B defaults (citydata/policies/500000-chongqing.toml): drug 10%, item 10%, material 20%."""

from __future__ import annotations

from datetime import date

from gateway.engine.model import Sex

from .builders import CQ, bill, catalog, entry, institution, person, settle, state

HOSPITAL = institution(CQ, "500106", 2)
EMPLOYEE = person(CQ, "500106")
MET = state(0, ded_outpatient=20000)  # the 200-yuan yearly outpatient deductible is met


def one_line(e, price: int, qty: int, who=EMPLOYEE, inst=HOSPITAL, visit="outpatient"):  # type: ignore[no-untyped-def]
    s = settle(bill(visit, (e.code, price, qty)), who, inst, catalog(CQ, e), MET)
    return s.lines[0]


def test_class_a_is_all_in_scope() -> None:
    line = one_line(entry("D1", "A"), 1250, 4)  # 12.50 x 4 = 50.00
    assert (line.amount_fen, line.full_selfpay_fen, line.over_limit_fen) == (5000, 0, 0)
    assert (line.first_selfpay_fen, line.in_scope_fen) == (0, 5000)


def test_class_c_is_full_selfpay() -> None:
    line = one_line(entry("D1", "C"), 8800, 2)
    assert (line.full_selfpay_fen, line.in_scope_fen, line.flags) == (17600, 0, ("CLASS_C",))


def test_class_b_explicit_ratio_rounds_half_up() -> None:
    # 33.33 x 3 = 99.99; 15% of 9999 = 1499.85 -> 1500 fen; in scope 9999 - 1500 = 8499
    line = one_line(entry("D1", "B", selfpay_bp=1500), 3333, 3)
    assert (line.first_selfpay_fen, line.in_scope_fen, line.selfpay_bp) == (1500, 8499, 1500)


def test_class_b_default_ratio_differs_for_drugs_items_and_materials() -> None:
    # 100.00 each: drug 10% -> 1000, item 10% -> 1000, material 20% -> 2000
    assert one_line(entry("D1", "B", "drug"), 10000, 1).first_selfpay_fen == 1000
    assert one_line(entry("T1", "B", "item"), 10000, 1).first_selfpay_fen == 1000
    assert one_line(entry("M1", "B", "material"), 10000, 1).first_selfpay_fen == 2000


def test_class_b_ratio_by_scheme_overrides_the_entry_ratio() -> None:
    e = entry("D1", "B", selfpay_bp=1000, selfpay_bp_by_scheme={"resident": 1500})
    resident = person(CQ, "500106", "resident")
    assert one_line(e, 10000, 1).first_selfpay_fen == 1000  # employee: the entry's 10%
    assert one_line(e, 10000, 1, who=resident).first_selfpay_fen == 1500  # resident: 15%


def test_price_limited_material() -> None:
    # 120.00 x 2 with a 100.00 limit: over-limit (120-100) x 2 = 40.00; class B material 20% of 200.00
    # = 40.00 first self-pay; in scope 160.00
    line = one_line(entry("M1", "B", "material", price_limit_fen=10000), 12000, 2)
    assert (line.amount_fen, line.over_limit_fen, line.first_selfpay_fen, line.in_scope_fen) == (
        24000,
        4000,
        4000,
        16000,
    )
    assert line.flags == ("OVER_PRICE_LIMIT",) and line.price_limit_fen == 10000


def test_price_at_the_limit_is_not_over() -> None:
    line = one_line(entry("M1", "A", "material", price_limit_fen=10000), 10000, 1)
    assert (line.over_limit_fen, line.in_scope_fen) == (0, 10000)


def test_quantity_per_visit_limit_across_lines() -> None:
    # max 3 per visit: line 1 takes 2, line 2 asks for 2 and gets 1 covered, 1 unit (10.00) self-pay
    e = entry("D1", "A", quantity_per_visit_max=3)
    s = settle(bill("outpatient", ("D1", 1000, 2), ("D1", 1000, 2)), EMPLOYEE, HOSPITAL, catalog(CQ, e), MET)
    assert [(ln.full_selfpay_fen, ln.in_scope_fen) for ln in s.lines] == [(0, 2000), (1000, 1000)]
    assert s.lines[1].flags == ("OVER_QUANTITY",)


def test_restrictions_make_the_line_full_selfpay() -> None:
    cases = [
        (entry("D1", "A", min_level=3), "MIN_LEVEL"),  # level-3 only, at a level-2 hospital
        (entry("D1", "A", inpatient_only=True), "INPATIENT_ONLY"),
        (entry("D1", "A", special_diseases=frozenset({"M003"})), "SPECIAL_DISEASE_ONLY"),
        (entry("D1", "A", sex=Sex.FEMALE), "SEX"),  # the patient is a man
        (entry("D1", "A", age_max=14), "AGE"),  # the patient is 46
        (entry("D1", "A", effective_to=date(2025, 12, 31)), "NOT_EFFECTIVE"),
        (entry("D1", "A", effective_from=date(2027, 1, 1)), "NOT_EFFECTIVE"),
    ]
    for e, flag in cases:
        line = one_line(e, 5000, 1)
        assert (line.full_selfpay_fen, line.in_scope_fen, line.flags) == (5000, 0, (flag,)), flag


def test_special_disease_drug_is_covered_for_a_registered_patient() -> None:
    e = entry("D1", "B", selfpay_bp=500, special_diseases=frozenset({"M003"}))
    registered = person(CQ, "500106", diseases=("M003",))
    line = one_line(e, 20000, 1, who=registered)  # 5% of 200.00 = 10.00
    assert (line.full_selfpay_fen, line.first_selfpay_fen, line.in_scope_fen) == (0, 1000, 19000)


def test_level3_only_item_is_covered_at_level3() -> None:
    inst = institution(CQ, "500106", 3)
    line = one_line(entry("T1", "A", "item", min_level=3), 5000, 1, inst=inst)
    assert line.in_scope_fen == 5000
