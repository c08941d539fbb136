"""Records <-> engine values. One codec per record kind, shared by the file importers (adapters) and,
later, by the Redis codecs, so a field means the same thing wherever it is read. Every error names the
source, the field path and the reason (rules_cache.reader.DataError)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

from gateway.engine.model import (
    GRADE_OF,
    LEVEL_CODES,
    LEVEL_NAMES,
    Approval,
    ApprovalKind,
    Bill,
    BillLine,
    Catalog,
    CatalogEntry,
    DiseaseRegistration,
    Enrolment,
    EnrolmentStatus,
    Institution,
    InstitutionType,
    ItemClass,
    ItemKind,
    Person,
    PersonState,
    PersonType,
    Scheme,
    Sex,
    TierChange,
    VisitType,
)
from rules_cache.reader import DataError, Reader

LINES_MAX = 500  # a bill longer than this is an input error, not a big bill
CATALOG_ENTRIES_MAX = 200_000  # a real provincial drug list has about 60,000
QUANTITY_MAX = 100_000
UNIT_PRICE_MAX_FEN = 100_000_000  # one million yuan per unit
BALANCE_IMPORT_MAX_FEN = 10_000_000_000  # 100 million yuan: a personal account balance beyond is an error
ACCUMULATOR_IMPORT_MAX = 10_000_000_000


def blank_to_none(row: dict[str, Any]) -> dict[str, Any]:
    """CSV has no null: an empty cell means 'not given'."""
    return {k: v for k, v in row.items() if v not in ("", None)}


def csv_int(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def catalog_entry(row: dict[str, Any], source: str, path: str) -> CatalogEntry:
    data = {k: csv_int(v) for k, v in blank_to_none(row).items()}
    for key in ("name", "unit", "code", "special_diseases", "selfpay_bp_by_scheme", "group"):
        if key in data:
            data[key] = str(data[key])
    r = Reader(data, source, path)
    by_scheme: dict[Scheme, int] = {}
    for part in r.text("selfpay_bp_by_scheme", "-").split(";"):
        if part == "-":
            continue
        scheme, _, bp = part.partition("=")
        if not bp.isdigit() or int(bp) > 10_000:
            raise r.error(f"expected scheme=basis_points, got {part!r}", "selfpay_bp_by_scheme")
        by_scheme[r.to_enum(scheme, Scheme, "selfpay_bp_by_scheme")] = int(bp)
    sex = r.text("sex", "-")
    group = r.text("group", "-")
    entry = CatalogEntry(
        code=r.text("code"),
        name=r.text("name"),
        kind=r.enum("kind", ItemKind),
        item_class=r.enum("class", ItemClass),
        selfpay_bp=r.opt_int("selfpay_bp", maximum=10_000),
        selfpay_bp_by_scheme=by_scheme,
        price_limit_fen=r.opt_int("price_limit_fen", minimum=1),
        min_level=r.opt_int("min_level", maximum=3),
        inpatient_only=bool(r.integer("inpatient_only", 0, maximum=1)),
        special_diseases=frozenset(d for d in r.text("special_diseases", "-").split(";") if d != "-"),
        sex=None if sex == "-" else r.to_enum(sex, Sex, "sex"),
        age_min=r.opt_int("age_min", maximum=150),
        age_max=r.opt_int("age_max", maximum=150),
        quantity_per_visit_max=r.opt_int("quantity_per_visit_max", minimum=1),
        effective_from=r.day("effective_from"),
        effective_to=r.opt_day("effective_to"),
        unit=r.text("unit", "-"),
        ref_price_fen=r.integer("ref_price_fen", 0),
        group="" if group == "-" else group,
    )
    r.done()
    return entry


def catalog(
    rows: Iterable[dict[str, Any]],
    region: str,
    version: str,
    source: str,
    where: Callable[[int], str] = lambda i: f"[{i}]",
    entries_max: int = CATALOG_ENTRIES_MAX,
) -> Catalog:
    """The one parser of a catalog, whatever it came from (a CSV export, a published blob, a case file):
    every row validated; a code may appear several times, with validity periods that do not overlap;
    overlapping periods are refused naming the code and the dates. `where(i)` names row i in errors."""
    by_code: dict[str, list[tuple[CatalogEntry, str]]] = {}
    for i, row in enumerate(rows):
        if i >= entries_max:
            raise DataError(source, "", f"more than {entries_max} entries in one catalog")
        entry = catalog_entry(row, source, where(i))
        by_code.setdefault(entry.code, []).append((entry, where(i)))
    for code, found in by_code.items():
        found.sort(key=lambda pair: pair[0].effective_from)
        for (earlier, _), (later, at) in itertools.pairwise(found):
            if earlier.effective_to is None or earlier.effective_to >= later.effective_from:
                until = earlier.effective_to.isoformat() if earlier.effective_to else "open-ended"
                raise DataError(
                    source,
                    f"{at}.effective_from",
                    f"{code}: the period from {later.effective_from} overlaps the one from"
                    f" {earlier.effective_from} to {until}; a code's periods must not overlap",
                )
    return Catalog.of(region, version, (e for found in by_code.values() for e, _ in found))


def institution_level(r: Reader) -> int:
    """A grade 0-3, or a tier 4-8 by number or by name (community, township, county, city, provincial)."""
    value = r.raw("level")
    if isinstance(value, str) and value in LEVEL_CODES:
        return LEVEL_CODES[value]
    if isinstance(value, str) or value not in GRADE_OF:
        names = ", ".join(LEVEL_NAMES.values())
        raise r.error(f"{value!r} is not a level: give 0-3, 4-8 or one of {names}", "level")
    return r.check_int(value, "level", 0, max(GRADE_OF))


def institution(row: dict[str, Any], source: str, path: str) -> Institution:
    data = {k: csv_int(v) for k, v in blank_to_none(row).items()}
    for key in ("code", "name", "region", "district", "visit_types"):
        if key in data:
            data[key] = str(data[key])
    if isinstance(data.get("visit_types"), str):
        data["visit_types"] = data["visit_types"].split(";")
    r = Reader(data, source, path)
    inst = Institution(
        code=r.text("code"),
        name=r.text("name"),
        type=r.enum("type", InstitutionType),
        level=institution_level(r),
        region=r.text("region"),
        district=r.text("district"),
        designated=bool(r.integer("designated", maximum=1)),
        visit_types=r.enums("visit_types", VisitType),
        city_managed=bool(r.integer("city_managed", 0, maximum=1)),
    )
    r.done()
    return inst


def person(data: dict[str, Any], source: str, path: str) -> Person:
    r = Reader(data, source, path)
    enrolments = []
    for e in r.tables("enrolments"):
        tiers = []
        for t in e.tables("tiers"):
            tiers.append(TierChange(t.integer("tier", minimum=1), t.day("applied_on")))
            t.done()
        if not tiers:
            raise e.error("an enrolment needs at least one tier", "tiers")
        enrolments.append(
            Enrolment(
                region=e.text("region"),
                district=e.text("district"),
                scheme=e.enum("scheme", Scheme),
                person_type=e.enum("person_type", PersonType),
                status=e.enum("status", EnrolmentStatus),
                valid_from=e.day("valid_from"),
                valid_to=e.opt_day("valid_to"),
                tiers=tuple(tiers),
            )
        )
        e.done()
    approvals = []
    for a in r.tables("approvals"):
        inst = a.data.get("institution")
        a.seen.add("institution")
        approvals.append(
            Approval(a.enum("kind", ApprovalKind), a.day("valid_from"), a.opt_day("valid_to"), inst or None)
        )
        a.done()
    diseases = []
    for d in r.tables("special_diseases"):
        diseases.append(DiseaseRegistration(d.text("code"), d.day("valid_from"), d.opt_day("valid_to")))
        d.done()
    result = Person(
        person_id=r.text("person_id"),
        name=r.text("name"),
        id_number=r.text("id_number"),
        card_no=r.text("card_no"),
        sex=r.enum("sex", Sex),
        birth_date=r.day("birth_date"),
        enrolments=tuple(enrolments),
        approvals=tuple(approvals),
        special_diseases=tuple(diseases),
        tags=frozenset(r.strs("tags")),
    )
    for key in ("card_status", "account_balance_fen", "accumulators"):
        r.seen.add(key)  # the mutable part: read by person_state() and by the card check
    r.done()
    return result


def person_state(data: dict[str, Any], source: str, path: str) -> PersonState:
    r = Reader({k: data[k] for k in ("account_balance_fen", "accumulators") if k in data}, source, path)
    acc = r.table("accumulators") if r.has("accumulators") else None
    year = 0
    values: dict[str, int] = {}
    if acc is not None:
        year = acc.integer("year", minimum=1900, maximum=9999)
        table = acc.table("values") if acc.has("values") else None
        if table is not None:
            values = {k: table.integer(k, maximum=ACCUMULATOR_IMPORT_MAX) for k in table.data}
        acc.seen.update({"values", "region", "scheme"})  # which plan: opening_plan()
        acc.done()
    state = PersonState(r.integer("account_balance_fen", 0, maximum=BALANCE_IMPORT_MAX_FEN), year, values)
    r.done()
    return state


def opening_plan(data: dict[str, Any], person: Person, source: str, path: str) -> tuple[str, Scheme] | None:
    """Which plan the exported accumulators belong to: `accumulators.region` and `.scheme`, by default
    the person's first enrolment. None when the export carries no accumulators."""
    acc = data.get("accumulators")
    if not isinstance(acc, dict) or not acc.get("values"):
        return None
    r = Reader(acc, source, f"{path}.accumulators" if path else "accumulators")
    first = person.enrolments[0] if person.enrolments else None
    if first is None and not (r.has("region") and r.has("scheme")):
        raise r.error("accumulators need a region and a scheme for a person without enrolments")
    region = r.text("region", first.region if first else None)
    scheme = r.enum("scheme", Scheme, first.scheme if first else None)
    return region, scheme


def bill(data: dict[str, Any], source: str, path: str) -> Bill:
    r = Reader(data, source, path)
    lines = []
    for i, line in enumerate(r.tables("lines")):
        lines.append(
            BillLine(
                code=line.text("code"),
                unit_price_fen=line.integer("unit_price_fen", maximum=UNIT_PRICE_MAX_FEN),
                quantity=line.integer("quantity", minimum=1, maximum=QUANTITY_MAX),
                line_no=line.integer("line_no", i + 1, minimum=1) if line.has("line_no") else i + 1,
                service_on=line.opt_day("service_date"),
            )
        )
        line.seen.add("line_no")
        line.done()
    if not lines:
        raise r.error("a bill needs at least one line", "lines")
    if len(lines) > LINES_MAX:
        raise r.error(f"{len(lines)} lines: at most {LINES_MAX} per bill", "lines")
    result = Bill(
        visit_type=r.enum("visit_type", VisitType),
        lines=tuple(lines),
        disease_code=r.text("disease_code") if r.has("disease_code") else None,
        maternity_event=r.text("maternity_event") if r.has("maternity_event") else None,
        emergency=r.flag("emergency", False),
        use_account=r.flag("use_account", True),
        stay_id=r.text("stay_id") if r.has("stay_id") else None,
        interim=r.flag("interim", False),
        visit_on=r.opt_day("visit_date"),
        admitted_on=r.opt_day("admission_date"),
        discharged_on=r.opt_day("discharge_date"),
        diagnoses=r.strs("diagnosis_codes"),
    )
    r.done()
    return result
