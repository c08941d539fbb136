"""Policy files (TOML) -> validated, immutable `Policy` values. The language is documented in
docs/POLICY_LANGUAGE.md; every error names the file, the field path and the reason."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from gateway.engine.audit_rules import AuditKind, AuditPolicy, AuditRule, Severity
from gateway.engine.model import (
    GRADE_OF,
    GRADES,
    LEVEL_NAMES,
    ApprovalKind,
    ItemKind,
    PersonType,
    Scheme,
    Sex,
    VisitType,
)
from gateway.engine.policy import (
    AgeBonus,
    Band,
    BandScope,
    BasicLayer,
    Benefit,
    CapOn,
    ClaimCase,
    ClaimRule,
    Corrections,
    Deductible,
    DeductibleScope,
    DiseasePayment,
    Level3Rule,
    OutOfRegionRule,
    Penalty,
    PersonRule,
    Plan,
    Policy,
    Ratio,
    RatioMeasure,
    StayDate,
    StayRule,
    SupplementaryLayer,
    TierSwitch,
)
from rules_cache.reader import DataError, Reader

AUDIT_RULES_MAX = 10_000  # per policy file; rules are indexed by code, so the count bounds memory only


def load_policy_file(path: Path) -> Policy:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DataError(path.name, "", f"not valid TOML: {exc}") from None
    return parse_policy(data, path.name)


def parse_policy(data: dict[str, Any], source: str) -> Policy:
    top = Reader(data, source)
    plans: dict[tuple[Scheme, int], Plan] = {}
    raw_plans: dict[tuple[Scheme, int], Reader] = {}
    for reader in top.tables("plans"):
        key = plan_key(reader)
        if key in raw_plans:
            raise reader.error(f"duplicate plan: {key[0]} tier {key[1]} is already defined")
        raw_plans[key] = reader
    defaults = first_selfpay(top.table("first_selfpay_bp"))
    for key, reader in raw_plans.items():
        plans[key] = parse_plan(resolve_extends(reader, raw_plans), defaults)
    if not plans:
        raise top.error("a policy needs at least one [[plans]] entry", "plans")
    tier_switch = parse_tiers(top.table("tiers"))
    for scheme, tier in plans:
        if tier not in tier_switch.tiers_low_to_high.get(scheme, ()):
            raise top.error(f"plan {scheme} tier {tier} is not listed in [tiers].{scheme}", "tiers")
    corrections = top.opt_table("corrections")
    mode = Corrections.REFUSE
    if corrections is not None:
        mode = corrections.enum("later_settlements", Corrections, Corrections.REFUSE)
        corrections.done()
    policy = Policy(
        region=top.text("region"),
        name=top.text("name"),
        version=top.text("version"),
        effective_from=top.day("effective_from"),
        effective_to=top.opt_day("effective_to"),
        plans=plans,
        tier_switch=tier_switch,
        level3=parse_level3(top.opt_table("level3_out_of_district")),
        out_of_region=parse_out_of_region(top.opt_table("out_of_region")),
        corrections=mode,
        stay_date=top.enum("stay_date", StayDate, StayDate.DISCHARGE),
        audit=parse_audit(top.opt_table("audit")),
        claims=parse_claims(top.opt_table("claims")),
        source=source,
    )
    top.done()
    return policy


def plan_key(reader: Reader) -> tuple[Scheme, int]:
    return reader.enum("scheme", Scheme), reader.integer("tier", minimum=1)


def resolve_extends(reader: Reader, raw_plans: dict[tuple[Scheme, int], Reader]) -> Reader:
    """`extends = "resident:1"`: start from that plan's table and override key by key (tables merge,
    everything else replaces)."""
    if not reader.has("extends"):
        return reader
    target = reader.text("extends")
    scheme, _, tier = target.partition(":")
    try:
        base = raw_plans[(Scheme(scheme), int(tier))]
    except (ValueError, KeyError):
        raise reader.error(f"extends {target!r}: no such plan (write scheme:tier)", "extends") from None
    if base.has("extends"):
        raise reader.error("extends a plan that itself extends another", "extends")
    merged = deep_merge(base.data, {k: v for k, v in reader.data.items() if k != "extends"})
    return Reader(merged, reader.source, reader.path)


def deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


def first_selfpay(reader: Reader) -> dict[ItemKind, int]:
    result = {kind: reader.bp(kind.value) for kind in ItemKind}
    reader.done()
    return result


def parse_plan(r: Reader, defaults: dict[ItemKind, int]) -> Plan:
    scheme, tier = plan_key(r)
    own_defaults = r.opt_table("first_selfpay_bp")
    benefits = {
        visit: parse_benefit(r.table(visit.value), visit) for visit in VisitType if r.has(visit.value)
    }
    layers = tuple(parse_layer(layer) for layer in r.tables("layers"))
    plan = Plan(
        scheme=scheme,
        tier=tier,
        benefits=benefits,
        layers=layers,
        first_selfpay_bp=first_selfpay(own_defaults) if own_defaults else defaults,
        caps=counters_and_caps(r, benefits, layers),
    )
    r.done()
    return plan


def counters_and_caps(
    r: Reader, benefits: dict[VisitType, Benefit], layers: tuple[SupplementaryLayer, ...]
) -> tuple[tuple[str, int], ...]:
    """Each accumulator has one role (a fund's payments, an eligible cost, a layer's base, a deductible,
    a count of stays, a lump sum) and one owner. Only the basic layers of several visit types may share
    one counter, and then they must share its annual maximum too: two rules paying from one counter
    against different maxima would together pay beyond either. Returns every (counter, maximum)."""
    owner: dict[str, tuple[str, str]] = {}  # counter -> (role, who)
    caps: dict[str, int] = {}

    def claim(key: str, role: str, who: str, shareable: bool, cap: int | None, where: str) -> None:
        if key in owner:
            other_role, other = owner[key]
            if not (shareable and other_role == role and other.startswith("basic ")):
                raise r.error(
                    f"counter {key!r} of {who} is already the {other_role} counter of {other}", where
                )
            if caps.get(key) != cap:
                raise r.error(
                    f"counter {key!r} is shared by {other} and {who} with different annual maxima", where
                )
            return
        owner[key] = (role, who)
        if cap is not None:
            caps[key] = cap

    for visit, benefit in benefits.items():
        basic = benefit.basic
        where = f"{visit.value}"
        if basic is not None:
            who = f"basic {visit.value}"
            fund_cap = basic.annual_max_fen if basic.annual_max_on is CapOn.FUND else None
            cost_cap = basic.annual_max_fen if basic.annual_max_on is CapOn.COST else None
            claim(basic.fund_key, "fund", who, True, fund_cap, f"{where}.fund_key")
            claim(basic.cost_key, "eligible cost", who, True, cost_cap, f"{where}.cost_key")
            ded = basic.deductible
            if ded is not None:
                claim(ded.key, "deductible", who, True, ded.yearly_cap_fen, f"{where}.deductible.key")
                if ded.stays_key is not None:
                    claim(ded.stays_key, "stays", who, True, None, f"{where}.deductible.stays_key")
        if benefit.lump_sums_fen:
            claim(
                benefit.lump_sum_key,
                "lump sum",
                f"{visit.value} lump sums",
                False,
                None,
                f"{where}.lump_sum_key",
            )
    for visit, benefit in benefits.items():  # per-disease payments: their own, uncapped counters
        for i, disease in enumerate(benefit.per_disease):
            key, where = disease.fund_key, f"{visit.value}.per_disease[{i}].fund_key"
            if key in owner and owner[key][0] != "per-disease fund":
                raise r.error(
                    f"counter {key!r} is already the {owner[key][0]} counter of {owner[key][1]}", where
                )
            owner[key] = ("per-disease fund", f"per-disease {disease.name}")
    for i, layer in enumerate(layers):
        who = f"layer {layer.name}"
        claim(layer.fund_key, "fund", who, False, layer.annual_max_fen, f"layers[{i}].fund_key")
        claim(layer.base_key, "base", who, False, None, f"layers[{i}].base_key")
    return tuple(sorted(caps.items()))


def parse_benefit(r: Reader, visit: VisitType) -> Benefit:
    excludes = set(r.strs("account_excludes"))
    unknown = excludes - {"full_selfpay", "over_limit"}
    if unknown:
        raise r.error(
            f"unknown exclusion(s) {sorted(unknown)}: use full_selfpay, over_limit", "account_excludes"
        )
    lump_sums: dict[str, dict[int, int]] = {}
    lump_table = r.opt_table("lump_sums_fen")
    if lump_table is not None:
        for event in lump_table.data:
            lump_sums[event] = by_level(lump_table.table(event))
        lump_table.done()
    if visit is VisitType.MATERNITY and not lump_sums:
        raise r.error("a maternity benefit needs lump_sums_fen", "lump_sums_fen")
    pooled = r.flag("pooled", visit is not VisitType.MATERNITY)
    basic = parse_basic(r) if pooled else None
    benefit = Benefit(
        basic=basic,
        account_allowed=r.flag("account", True),
        account_excludes_full_selfpay="full_selfpay" in excludes,
        account_excludes_over_limit="over_limit" in excludes,
        lump_sums_fen=lump_sums,
        lump_sum_fund_code=r.text("lump_sum_fund_code", "510100"),
        lump_sum_key=r.text("lump_sum_key", "fund.maternity"),
        lump_sums_per_year=r.integer("lump_sums_per_year", 1, minimum=1, maximum=12),
        requires_registration=r.flag("requires_registration", visit is VisitType.SPECIAL),
        per_disease=tuple(
            parse_disease_payment(d, basic.fund_code if basic is not None else None)
            for d in r.tables("per_disease")
        ),
    )
    r.done()
    return benefit


def parse_disease_payment(r: Reader, default_fund: str | None) -> DiseasePayment:
    """`[[plans.<visit>.per_disease]]`: a fixed fund payment per stay for listed diagnoses."""
    diagnoses = r.strs("diagnoses")
    if not diagnoses or not all(diagnoses):
        raise r.error("list the diagnosis codes (or their prefixes) the payment is for", "diagnoses")
    if r.has("personal_fen") == r.has("personal_max_fen"):
        raise r.error("give exactly one of personal_fen (fixed) or personal_max_fen (capped)")
    fund_code = r.text("fund_code", default_fund) if default_fund else r.text("fund_code")
    rule = DiseasePayment(
        name=r.text("name"),
        diagnoses=diagnoses,
        fund_fen=r.integer("fund_fen"),
        fund_code=fund_code,
        fund_key=r.text("fund_key", "fund.per_disease"),
        personal_fen=r.opt_int("personal_fen"),
        personal_max_fen=r.opt_int("personal_max_fen"),
    )
    r.done()
    return rule


def by_level(r: Reader, minimum: int = 0, maximum: int | None = None) -> dict[int, int]:
    """Every level 0-8: the grades 0-3 must be given (or `all`); a tier (community, township, county,
    city, provincial, by name or by its number 4-8) not given takes its grade's value."""
    if r.has("all"):
        amount = r.integer("all", minimum=minimum, maximum=maximum)
        r.done()
        return dict.fromkeys(GRADE_OF, amount)
    missing = [lv for lv in GRADES if str(lv) not in r.data]
    if missing:
        raise r.error(f"missing level(s) {missing}: give every level 0-3, or `all`")
    result = {lv: r.integer(str(lv), minimum=minimum, maximum=maximum) for lv in GRADES}
    for code, name in LEVEL_NAMES.items():
        if r.has(name) and r.has(str(code)):
            raise r.error(f"level {name} given twice (as {name} and as {code})", name)
        key = name if r.has(name) else str(code)
        given = r.has(key)
        value = r.integer(key, minimum=minimum, maximum=maximum) if given else result[GRADE_OF[code]]
        result[code] = value
    r.done()
    return result


def person_rules(r: Reader, key: str, deductible: bool) -> tuple[PersonRule, ...]:
    """`[[...person_rules]]`: a person type and/or an age range; the first that matches wins."""
    rules = []
    for rule in r.tables(key):
        min_age = rule.opt_int("min_age", maximum=150)
        max_age = rule.opt_int("max_age", maximum=150)
        if min_age is not None and max_age is not None and max_age < min_age:
            raise rule.error(f"max_age {max_age} is below min_age {min_age}", "max_age")
        person_type = (
            rule.to_enum(rule.raw("person_type"), PersonType, "person_type")
            if rule.has("person_type")
            else None
        )
        if deductible:
            standard = rule.opt_int("standard_fen")
            multiplier = rule.opt_int("multiplier_bp", maximum=100_000)
            if standard is None and multiplier is None:
                raise rule.error("give standard_fen, multiplier_bp or both")
            found = PersonRule(person_type, min_age, max_age, standard_fen=standard, multiplier_bp=multiplier)
        else:
            found = PersonRule(
                person_type, min_age, max_age, add_bp=rule.integer("add_bp", minimum=-10_000, maximum=10_000)
            )
        if person_type is None and min_age is None and max_age is None:
            raise rule.error("a rule needs a person_type, a min_age or a max_age")
        rule.done()
        rules.append(found)
    return tuple(rules)


def fixed_ratios(r: Reader, key: str) -> dict[str, int]:
    """`by_group` / `by_kind`: name -> { fund_bp } or { personal_bp } (the fund pays the rest)."""
    out: dict[str, int] = {}
    table = r.table(key)
    for name in table.data:
        entry = table.table(name)
        if entry.has("fund_bp") == entry.has("personal_bp"):
            raise entry.error("give exactly one of fund_bp or personal_bp")
        out[name] = entry.bp("fund_bp") if entry.has("fund_bp") else 10_000 - entry.bp("personal_bp")
        entry.done()
    table.done()
    return out


def parse_basic(r: Reader) -> BasicLayer:
    ded = r.opt_table("deductible")
    layer = BasicLayer(
        fund_code=r.text("fund_code"),
        ratio=parse_ratio(r.table("ratio")),
        fund_key=r.text("fund_key"),
        cost_key=r.text("cost_key"),
        deductible=parse_deductible(ded) if ded is not None else None,
        annual_max_fen=r.opt_int("annual_max_fen"),
        annual_max_on=r.enum("annual_max_on", CapOn, CapOn.FUND),
        annual_max_counts_deductible=r.flag("annual_max_counts_deductible", False),
    )
    if layer.annual_max_counts_deductible and (
        layer.annual_max_on is not CapOn.COST or layer.annual_max_fen is None or layer.deductible is None
    ):
        raise r.error(
            'needs annual_max_on = "cost", an annual_max_fen and a [deductible]',
            "annual_max_counts_deductible",
        )
    return layer


def parse_deductible(r: Reader) -> Deductible:
    stay_rule = r.enum("stay_rule", StayRule, StayRule.NONE)
    stays_key = r.text("stays_key") if stay_rule is not StayRule.NONE else None
    if stay_rule is StayRule.NONE and r.has("stays_key"):
        stays_key = r.text("stays_key")
    person_type_bp = (
        {
            r.to_enum(k, PersonType, f"person_type_bp.{k}"): v
            for k, v in r.int_map("person_type_bp", maximum=100_000).items()
        }
        if r.has("person_type_bp")
        else {}
    )
    rule = Deductible(
        by_level_fen=by_level(r.table("by_level")),
        key=r.text("key"),
        scope=r.enum("scope", DeductibleScope, DeductibleScope.VISIT),
        person_type_bp=person_type_bp,
        stay_rule=stay_rule,
        stays_key=stays_key,
        reduce_each_stay_bp=r.bp("reduce_each_stay_bp", 0),
        floor_fen=r.integer("floor_fen", 0),
        yearly_cap_fen=r.opt_int("yearly_cap_fen"),
        floor_by_level_fen=by_level(r.table("floor_by_level")) if r.has("floor_by_level") else None,
        person_rules=person_rules(r, "person_rules", deductible=True),
    )
    if r.has("floor_by_level") and r.has("floor_fen"):
        raise r.error("give floor_fen or floor_by_level, not both", "floor_by_level")
    if stay_rule is StayRule.REDUCE and rule.reduce_each_stay_bp == 0:
        raise r.error("stay_rule = reduce needs reduce_each_stay_bp > 0", "reduce_each_stay_bp")
    r.done()
    return rule


def parse_bands(r: Reader, key: str, shift_fen: int = 0) -> tuple[Band, ...]:
    bands: list[Band] = []
    previous = 0
    tables = list(r.tables(key))
    if not tables:
        raise r.error("needs at least one band", key)
    for i, band in enumerate(tables):
        upto = band.opt_int("upto_fen", minimum=1)
        ratio = band.bp("ratio_bp")
        if upto is None and i != len(tables) - 1:
            raise band.error("only the last band may be open (no upto_fen)", "upto_fen")
        if upto is not None and upto <= previous:
            raise band.error(f"bands must rise: {upto} <= {previous}", "upto_fen")
        if upto is not None and i == len(tables) - 1:
            raise band.error("the last band must be open (omit upto_fen)", "upto_fen")
        previous = upto or previous
        bands.append(Band(None if upto is None else upto + shift_fen, ratio))
        band.done()
    if shift_fen:
        bands.insert(0, Band(shift_fen, 0))
    return tuple(bands)


def parse_ratio(r: Reader) -> Ratio:
    if r.has("by_level") == r.has("bands"):
        raise r.error("give exactly one of by_level or bands")
    if r.has("by_level"):
        bands: tuple[Band, ...] = (Band(None, 0),)
        level_add = by_level(r.table("by_level"), 0, 10_000)
    else:
        bands = parse_bands(r, "bands")
        level_add = by_level(r.table("level_add_bp"), -10_000, 10_000) if r.has("level_add_bp") else {}
    person_add = (
        {
            r.to_enum(k, PersonType, f"person_type_add_bp.{k}"): v
            for k, v in r.int_map("person_type_add_bp", minimum=-10_000, maximum=10_000).items()
        }
        if r.has("person_type_add_bp")
        else {}
    )
    age = r.opt_table("age_bonus")
    bonus = None
    if age is not None:
        bonus = AgeBonus(age.integer("from_age"), age.bp("bp_per_year"), age.bp("max_bp"))
        age.done()
    ratio = Ratio(
        bands=bands,
        level_add_bp=level_add,
        bands_scope=r.enum("bands_scope", BandScope, BandScope.BILL),
        person_type_add_bp=person_add,
        age_bonus=bonus,
        measured_on=r.enum("bands_measured_on", RatioMeasure, RatioMeasure.ELIGIBLE),
        person_rules=person_rules(r, "person_rules", deductible=False),
        group_fund_bp=fixed_ratios(r, "by_group") if r.has("by_group") else {},
        kind_fund_bp={
            r.to_enum(k, ItemKind, f"by_kind.{k}"): v for k, v in fixed_ratios(r, "by_kind").items()
        }
        if r.has("by_kind")
        else {},
    )
    r.done()
    return ratio


def parse_layer(r: Reader) -> SupplementaryLayer:
    threshold = r.integer("threshold_fen", 0)
    measured_on = r.text("bands_measured_on", "excess")
    if measured_on not in ("excess", "total"):
        raise r.error(f"{measured_on!r} is not one of: excess, total", "bands_measured_on")
    if measured_on == "excess":
        bands = parse_bands(r, "bands", shift_fen=threshold)
    else:  # bands are absolute; nothing is paid below the threshold, so bands below it fall away
        above = tuple(b for b in parse_bands(r, "bands") if b.upto_fen is None or b.upto_fen > threshold)
        bands = (Band(threshold, 0), *above) if threshold else above
    layer = SupplementaryLayer(
        name=r.text("name"),
        fund_code=r.text("fund_code"),
        bands=bands,
        fund_key=r.text("fund_key"),
        base_key=r.text("base_key"),
        visit_types=r.enums("visit_types", VisitType, (VisitType.INPATIENT,)),
        threshold_fen=threshold,
        include_deductible=r.flag("include_deductible", False),
        include_copay=r.flag("include_copay", False),
        annual_max_fen=r.opt_int("annual_max_fen"),
        person_types=r.enums("person_types", PersonType),
        person_tags=frozenset(r.strs("person_tags")),
        include_first_selfpay=r.flag("include_first_selfpay", False),
        include_excess=r.flag("include_excess", True),
        level_add_bp=by_level(r.table("level_add_bp"), -10_000, 10_000) if r.has("level_add_bp") else {},
    )
    parts = (layer.include_excess, layer.include_copay, layer.include_deductible, layer.include_first_selfpay)
    if not any(parts):
        raise r.error("the layer's base would be empty: include at least one part", "include_excess")
    r.done()
    return layer


def parse_tiers(r: Reader) -> TierSwitch:
    order: dict[Scheme, tuple[int, ...]] = {}
    for scheme in Scheme:
        if r.has(scheme.value):
            tiers = r.raw(scheme.value)
            valid = (
                all(isinstance(t, int) and not isinstance(t, bool) for t in tiers)
                if isinstance(tiers, list)
                else False
            )
            if not valid or not tiers:
                raise r.error("expected a list of tier numbers, lowest benefit first", scheme.value)
            order[scheme] = tuple(tiers)
    rule = TierSwitch(order, r.integer("upgrade_wait_months", 0, maximum=24))
    r.done()
    return rule


def parse_penalty(r: Reader) -> Penalty:
    return Penalty(r.integer("deductible_bp", minimum=10_000, maximum=100_000), r.bp("ratio_minus_bp"))


def parse_level3(r: Reader | None) -> Level3Rule | None:
    if r is None:
        return None
    groups = []
    r.seen.add("exempt_groups")
    for i, group in enumerate(r.data.get("exempt_groups", [])):
        if not isinstance(group, list) or not all(isinstance(d, str) for d in group):
            raise r.error("expected a list of district codes", f"exempt_groups[{i}]")
        groups.append(frozenset(group))
    rule = Level3Rule(
        penalty=parse_penalty(r),
        visit_types=r.enums("visit_types", VisitType, (VisitType.INPATIENT,)),
        approval_kinds=r.enums("approvals", ApprovalKind),
        exempt_groups=tuple(groups),
    )
    r.done()
    return rule


def parse_out_of_region(r: Reader | None) -> OutOfRegionRule | None:
    if r is None:
        return None
    unfiled = r.text("unfiled")
    if unfiled not in ("penalty", "reject"):
        raise r.error(f"{unfiled!r} is not one of: penalty, reject", "unfiled")
    rule = OutOfRegionRule(
        reject_unfiled=unfiled == "reject",
        penalty=parse_penalty(r) if unfiled == "penalty" else Penalty(10_000, 0),
        approval_kinds=r.enums("approvals", ApprovalKind),
    )
    r.done()
    return rule


def parse_audit(r: Reader | None) -> AuditPolicy | None:
    """`[audit]`: which severities block, and the `[[audit.rules]]` (docs/POLICY_LANGUAGE.md section 21)."""
    if r is None:
        return None
    blocking = r.enums("block", Severity)
    rules: list[AuditRule] = []
    ids: set[str] = set()
    for i, rule in enumerate(r.tables("rules")):
        if i >= AUDIT_RULES_MAX:
            raise r.error(f"more than {AUDIT_RULES_MAX} rules", "rules")
        parsed = parse_audit_rule(rule)
        if parsed.rule_id in ids:
            raise rule.error(f"rule id {parsed.rule_id!r} is used twice", "id")
        ids.add(parsed.rule_id)
        rules.append(parsed)
    r.done()
    return AuditPolicy.of(tuple(rules), blocking)


def parse_audit_rule(r: Reader) -> AuditRule:
    kind = r.enum("kind", AuditKind)
    codes = frozenset(r.strs("codes"))
    if not codes and kind is not AuditKind.DUPLICATE:
        raise r.error(f"a {kind} rule needs the catalog codes it looks at", "codes")
    common: dict[str, object] = {
        "rule_id": r.text("id"),
        "kind": kind,
        "severity": r.enum("severity", Severity),
        "codes": codes,
        "visit_types": r.enums(
            "visit_types", VisitType, (VisitType.PHARMACY,) if kind is AuditKind.DAYS_SUPPLY else ()
        ),
        "description": r.text("description", "-"),
    }
    if kind is AuditKind.SEX:
        common["sex"] = r.enum("sex", Sex)
    elif kind is AuditKind.AGE:
        common["min_age"] = r.opt_int("min_age", maximum=150)
        common["max_age"] = r.opt_int("max_age", maximum=150)
        if common["min_age"] is None and common["max_age"] is None:
            raise r.error("an age rule needs min_age, max_age or both", "min_age")
    elif kind is AuditKind.DAILY_QUANTITY:
        common["per_day_max"] = r.integer("per_day_max", minimum=1)
    elif kind is AuditKind.DIAGNOSIS:
        diagnoses = r.strs("diagnoses")
        if not diagnoses or not all(diagnoses):
            raise r.error("list the diagnosis codes (or their prefixes) the item is paid for", "diagnoses")
        common["diagnoses"] = diagnoses
    elif kind is AuditKind.VISIT_TYPE:
        common["allowed_visit_types"] = r.enums("allowed_visit_types", VisitType)
        if not common["allowed_visit_types"]:
            raise r.error("list the visit types the item is allowed at", "allowed_visit_types")
    elif kind is AuditKind.DAYS_SUPPLY:
        common["units_per_day"] = r.integer("units_per_day", minimum=1)
        common["days_max"] = r.integer("days_max", minimum=1, maximum=365)
    r.done()
    return AuditRule(**common)  # type: ignore[arg-type]


def parse_claims(r: Reader | None) -> dict[ClaimCase, ClaimRule]:
    """`[claims]`: one table per case that may be claimed after the fact (docs/POLICY_LANGUAGE.md
    section 23): `deductible_bp` (x the deductible), `ratio_minus_bp` (points off), `ratio_bp` (a fixed
    basic ratio instead of the plan's)."""
    if r is None:
        return {}
    out: dict[ClaimCase, ClaimRule] = {}
    for key in r.data:
        case = r.to_enum(key, ClaimCase, key)
        t = r.table(key)
        penalty = Penalty(t.integer("deductible_bp", 10_000, 10_000, 100_000), t.bp("ratio_minus_bp", 0))
        ratio = t.opt_int("ratio_bp", maximum=10_000)
        t.done()
        out[case] = ClaimRule(penalty, ratio)
    r.done()
    return out
