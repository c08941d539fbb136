"""How settlements, plan-years and message records are written as Redis hash fields. Compact JSON for
the structured parts (a settlement is kept for two plan-years: bytes per settlement matter), integers as
decimal strings, binary answers as they are.

A person's year is one hash; each plan the person had that year is a prefix of its fields:

    <region>:<scheme>|o|<name>   opening accumulator (imported from the core system)
    <region>:<scheme>|a|<name>   accumulator = opening + Σ live deltas
    <region>:<scheme>|L          live settlement ids, in order, space separated
    <region>:<scheme>|s|<stay>   a stay's totals over its live parts
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from adapters.settlement_store import MessageRecord, StoredSettlement
from gateway.engine.corrections import LiveSettlement, Money, SettlementInputs
from gateway.engine.model import Bill, BillLine, StayTotals, VisitType
from gateway.engine.plan_year import Contribution, PlanKey, PlanYear


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys, UTF-8 as is: byte for byte what json.dumps(separators=(",", ":"),
    ensure_ascii=False, sort_keys=True) writes for these records (string keys, integers, strings,
    lists, None, booleans; a property test holds the two equal), so records written before and after
    read alike. orjson: the commit builds five to ten of these per Settle, several times faster."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------- values


def stay_json(s: StayTotals) -> list[Any]:
    return [
        s.parts, s.stay_no, s.in_scope_fen, s.eligible_fen, s.deductible_fen, s.lump_sum_fen,
        dict(s.quantities), s.closed,
    ]  # fmt: skip


def stay_from(v: list[Any]) -> StayTotals:
    return StayTotals(int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), int(v[5]), dict(v[6]), int(v[7]))


def bill_json(b: Bill) -> dict[str, Any]:
    out: dict[str, Any] = {
        "v": b.visit_type.value,
        "l": [[x.code, x.unit_price_fen, x.quantity, x.line_no] for x in b.lines],
    }
    optional = {
        "dc": b.disease_code, "me": b.maternity_event, "e": b.emergency or None,
        "na": (not b.use_account) or None, "st": b.stay_id, "i": b.interim or None,
    }  # fmt: skip
    out.update({k: v for k, v in optional.items() if v is not None})
    if b.diagnoses:  # absent when none, so earlier records read and write the same
        out["dx"] = list(b.diagnoses)
    return out


def bill_from(v: Mapping[str, Any]) -> Bill:
    return Bill(
        VisitType(v["v"]),
        tuple(BillLine(str(c), int(p), int(q), int(n)) for c, p, q, n in v["l"]),
        disease_code=v.get("dc"),
        maternity_event=v.get("me"),
        emergency=bool(v.get("e", False)),
        use_account=not v.get("na", False),
        stay_id=v.get("st"),
        interim=bool(v.get("i", False)),
        diagnoses=tuple(str(d) for d in v.get("dx", ())),
    )


def inputs_json(i: SettlementInputs) -> str:
    return dumps(
        {
            "b": bill_json(i.bill),
            "on": i.on.isoformat(),
            "inst": i.institution,
            "pv": i.policy_version,
            "cv": i.catalog_version,
            "iv": i.institutions_version,
            "pd": i.person_digest,
            "cap": i.account_cap_fen,
        }
    )  # fmt: skip


def inputs_from(raw: Any) -> SettlementInputs:
    v = json.loads(raw)
    return SettlementInputs(
        bill_from(v["b"]),
        date.fromisoformat(v["on"]),
        v["inst"],
        v["pv"],
        v["cv"],
        v["iv"],
        v["pd"],
        int(v["cap"]),
    )


def contribution_json(c: Contribution) -> str:
    return dumps({"d": dict(c.deltas), "s": c.stay_id, "p": stay_json(c.stay) if c.stay else None})


def contribution_from(settlement_id: str, raw: Any) -> Contribution:
    v = json.loads(raw)
    return Contribution(
        settlement_id,
        {k: int(x) for k, x in v["d"].items()},
        v.get("s"),
        stay_from(v["p"]) if v.get("p") else None,
    )


def money_json(m: Money) -> str:
    return dumps({"t": m.total_fen, "f": dict(m.funds), "a": m.account_fen, "c": m.cash_fen})


def money_from(raw: Any) -> Money:
    v = json.loads(raw)
    return Money(int(v["t"]), {k: int(x) for k, x in v["f"].items()}, int(v["a"]), int(v["c"]))


# ---------------------------------------------------------------- a person's year


def years_from(year: int, flat: Mapping[str, str]) -> dict[PlanKey, PlanYear]:
    """Every plan-year in one year hash (field name -> value)."""
    parts: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        plan, _, rest = name.partition("|")
        p = parts.setdefault(plan, {"o": {}, "a": {}, "L": (), "s": {}, "r": {}})
        kind, _, sub = rest.partition("|")
        if kind == "L":
            p["L"] = tuple(value.split())
        elif kind == "s":
            p["s"][sub] = stay_from(json.loads(value))
        else:
            p[kind][sub] = int(value)
    out = {}
    for plan, p in parts.items():
        region, _, scheme = plan.partition(":")
        key = PlanKey(region, scheme, year)
        out[key] = PlanYear(key, p["o"], p["L"], p["a"], p["s"], p["r"])
    return out


def year_fields(y: PlanYear) -> tuple[dict[str, str], dict[str, str]]:
    """(text fields, integer fields) that spell a plan-year in its year hash."""
    plan = y.key.plan
    texts = {f"{plan}|s|{sid}": dumps(stay_json(t)) for sid, t in y.stays.items()}
    texts[f"{plan}|L"] = " ".join(y.live)
    ints = {f"{plan}|a|{name}": str(v) for name, v in y.accumulators.items()}
    ints.update({f"{plan}|o|{name}": str(v) for name, v in y.opening.items()})
    ints.update({f"{plan}|r|{name}": str(v) for name, v in y.retired.items()})
    return texts, ints


def year_diff(old: PlanYear, new: PlanYear) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(text fields to set, integer fields to set, fields to delete) that turn `old` into `new`."""
    old_t, old_i = year_fields(old)
    new_t, new_i = year_fields(new)
    texts = {k: v for k, v in new_t.items() if old_t.get(k) != v}
    ints = {k: v for k, v in new_i.items() if old_i.get(k) != v}
    gone = sorted((set(old_t) - set(new_t)) | (set(old_i) - set(new_i)))
    return texts, ints, gone


# ---------------------------------------------------------------- settlements and message records


def settlement_fields(
    settlement_id: str,
    person_id: str,
    plan: PlanKey,
    institution: str,
    message_id: str,
    response: bytes,
    live: LiveSettlement,
    route: Mapping[str, Any],
) -> dict[str, bytes | str]:
    return {
        "resp": response, "status": "settled", "pid": person_id, "plan": str(plan), "inst": institution,
        "msgid": message_id, "in": inputs_json(live.inputs), "c": contribution_json(live.contribution),
        "m": money_json(live.money), "r": dumps(dict(route)), "xn": "0",
    }  # fmt: skip


def live_fields(live: LiveSettlement) -> dict[str, bytes | str]:
    return {
        "in": inputs_json(live.inputs),
        "c": contribution_json(live.contribution),
        "m": money_json(live.money),
    }


def settlement_from(settlement_id: str, h: Mapping[bytes, bytes]) -> StoredSettlement:
    region, scheme, year = text(h[b"plan"]).split(":")
    live = LiveSettlement(
        contribution_from(settlement_id, h[b"c"]), inputs_from(h[b"in"]), money_from(h[b"m"])
    )
    count = int(h.get(b"xn", b"0"))
    return StoredSettlement(
        settlement_id,
        text(h[b"pid"]),
        PlanKey(region, scheme, int(year)),
        text(h[b"inst"]),
        text(h[b"msgid"]),
        text(h[b"status"]),
        bytes(h[b"resp"]),
        bytes(h.get(b"rev", b"")),
        live,
        json.loads(h[b"r"]),
        tuple(bytes(h[f"x:{n}".encode()]) for n in range(1, count + 1)),
    )


def message_fields(m: MessageRecord) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {"k": m.kind, "h": m.payload_hash, "pid": m.person_id}
    if m.settlement_id:
        out["sid"] = m.settlement_id
    if m.response_field:
        out["f"] = m.response_field
    if m.response:
        out["resp"] = m.response
    return out


def message_from(institution: str, message_id: str, flat: Iterable[Any]) -> MessageRecord | None:
    items = list(flat)
    h = {text(items[i]): items[i + 1] for i in range(0, len(items), 2)}
    if "k" not in h:
        return None
    return MessageRecord(
        institution,
        message_id,
        text(h["k"]),
        text(h["h"]),
        text(h.get("pid", b"")),
        text(h.get("sid", b"")),
        text(h.get("f", b"")),
        bytes(h.get("resp", b"")),
    )


# ---------------------------------------------------------------- what the ledger keeps of a commit


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """What one commit wrote for one settlement, carried to the ledger with its posting event: the
    settlement record's fields as written (the terminal's answers byte for byte among them), the message
    records, and the person's version and balance after. Replayed in order, a settlement's records give
    back its Redis hash, so the ledger can answer for a settlement that has left Redis, and rebuild it."""

    person_id: str
    plan: str  # <region>:<scheme>:<year>, or "" for a change of an existing settlement
    version: int
    balance_fen: int
    fields: Mapping[bytes, bytes]
    messages: Sequence[MessageRecord]


def as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def ledger_record_json(r: LedgerRecord) -> str:
    def encoded(fields: Mapping[bytes, bytes]) -> dict[str, str]:
        return {k.decode(): base64.b64encode(v).decode("ascii") for k, v in fields.items()}

    messages = [
        {"i": m.institution, "id": m.message_id, "f": encoded({as_bytes(k): as_bytes(v) for k, v in
                                                              message_fields(m).items()})}
        for m in r.messages
    ]  # fmt: skip
    return dumps(
        {"pid": r.person_id, "plan": r.plan, "ver": r.version, "bal": r.balance_fen,
         "f": encoded(r.fields), "m": messages}
    )  # fmt: skip


def ledger_record_from(raw: str | bytes) -> LedgerRecord:
    v = json.loads(raw)

    def decoded(fields: Mapping[str, str]) -> dict[bytes, bytes]:
        return {k.encode(): base64.b64decode(x) for k, x in fields.items()}

    messages = []
    for m in v["m"]:
        flat = [x for kv in decoded(m["f"]).items() for x in kv]
        found = message_from(m["i"], m["id"], flat)
        if found is not None:
            messages.append(found)
    return LedgerRecord(
        str(v["pid"]), str(v["plan"]), int(v["ver"]), int(v["bal"]), decoded(v["f"]), tuple(messages)
    )


def replayed(records: Iterable[LedgerRecord]) -> dict[bytes, bytes]:
    """A settlement's hash as its records, in commit order, wrote it."""
    out: dict[bytes, bytes] = {}
    for r in records:
        out.update(r.fields)
    return out
