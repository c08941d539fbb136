"""Money routing by the seeds' rules, as a pure function from a posting event to balanced transfers.

Each transfer moves an amount from a debit account to a credit account, so every entry balances by
construction (and the ledger's CHECK constraints refuse anything else). Parties are agencies, named
`<region>/<district>`, or `<region>/city` for the city agency:

- The **insured party** is the insured district's agency: its fund (or the person's account) bears the
  cost.
- The **paying party** pays the institution. It is the insured district itself for care in that
  district; the treatment district's agency, advancing the money (就医地垫付), for care elsewhere in the
  city (Chongqing); the city agency for the hospitals it manages (Yancheng's level-3 hospitals); and the
  place of treatment's agency for cross-region care.
- When they differ, the insured party owes the paying party: the debt is cleared monthly through the
  city platform (inter-district) or between regions (cross-region).

Accounts (the prefix says whose books they are in):
    fund:<party>:<scheme>:<fund code>     the insured party's fund expense (debit = spent)
    personal:<party>:<person id>          the insured party's liability to the person's account
    payable:<party>:<institution>         what the party owes the institution for the month
    due:<debtor>><creditor>               the debtor party owes the creditor party
    receivable:<creditor><<debtor>        the creditor party's claim on the debtor party
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Transfer:
    debit: str
    credit: str
    amount_fen: int


KINDS = ("settle", "reverse", "refund", "adjust")


@dataclass(frozen=True, slots=True)
class Journal:
    """One ledger entry. A settlement has one settle entry, and maybe refunds, adjustments (when a
    correction of an earlier settlement re-adjudicated it) and one reversal: each a difference, never an
    edit of the original."""

    settlement_id: str
    kind: str  # settle | reverse | refund | adjust
    message_id: str
    at: str  # ISO time of the settlement (or reversal) at the gateway
    institution: str
    inst_region: str
    inst_district: str
    insured_region: str
    insured_district: str
    paying_party: str
    scheme: str
    visit: str
    total_fen: int  # signed: a reversal is negative
    fund_total_fen: int
    account_fen: int
    cash_fen: int
    funds: Mapping[str, int]  # fund code -> signed amount
    entry_id: str = ""  # unique per entry: the settlement id for its settle entry
    cause: str = ""  # an adjustment: the reversal or refund that caused it

    @property
    def key(self) -> str:
        return self.entry_id or self.settlement_id


class PostingError(ValueError):
    """The event cannot be booked as it is (a poison entry): missing fields, wrong types."""


def party(region: str, district: str) -> str:
    return f"{region}/{district}"


def paying_party(event: Mapping[str, Any]) -> str:
    if event["inst_region"] != event["insured_region"] or not event.get("city_managed"):
        return party(event["inst_region"], event["inst_district"])
    return party(event["inst_region"], "city")


def route(event: Mapping[str, Any]) -> tuple[Journal, list[Transfer]]:
    """The journal row and transfers of a posting event. A settle event's amounts are positive; a
    reversal's, refund's or adjustment's are signed differences, and a negative amount moves money back
    the way it came (the institution's payable returns it to the fund or to the person's account)."""
    try:
        kind = str(event.get("type", "settle"))
        insured = party(str(event["insured_region"]), str(event["insured_district"]))
        paying = paying_party(event)
        funds = {str(code): int(amount) for code, amount in dict(event["funds"]).items()}
        account, cash, total = int(event["account"]), int(event["cash"]), int(event["total"])
        sid = str(event["sid"])
        journal = Journal(
            settlement_id=sid,
            kind=kind,
            message_id=str(event.get("msgid", "")),
            at=str(event["at"]),
            institution=str(event["inst"]),
            inst_region=str(event["inst_region"]),
            inst_district=str(event["inst_district"]),
            insured_region=str(event["insured_region"]),
            insured_district=str(event["insured_district"]),
            paying_party=paying,
            scheme=str(event["scheme"]),
            visit=str(event["visit"]),
            total_fen=total,
            fund_total_fen=sum(funds.values()),
            account_fen=account,
            cash_fen=cash,
            funds={code: amount for code, amount in funds.items() if amount},
            entry_id=str(event.get("entry", sid)),
            cause=str(event.get("cause", "")),
        )
        person = str(event["person"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PostingError(f"malformed posting event: {exc!r}") from None
    if kind not in KINDS:
        raise PostingError(f"unknown entry kind {kind!r}")
    if kind == "settle" and min([account, cash, total, *funds.values()], default=0) < 0:
        raise PostingError("negative amount in a settle event")
    if journal.fund_total_fen + account + cash != total:
        raise PostingError(
            f"event does not add up: funds {journal.fund_total_fen} + {account} + {cash} != {total}"
        )
    sources = [(f"fund:{insured}:{journal.scheme}:{code}", amount) for code, amount in sorted(funds.items())]
    sources.append((f"personal:{insured}:{person}", account))
    transfers: list[Transfer] = []
    for source, amount in sources:
        if amount == 0:
            continue
        if paying == insured:
            legs = [(source, f"payable:{insured}:{journal.institution}")]
        else:  # the paying party advances; the insured party owes it
            legs = [
                (source, f"due:{insured}>{paying}"),
                (f"receivable:{paying}<{insured}", f"payable:{paying}:{journal.institution}"),
            ]
        for debit, credit in legs:
            transfers.append(
                Transfer(debit, credit, amount) if amount > 0 else Transfer(credit, debit, -amount)
            )
    return journal, transfers


def mirror(
    original: Journal, transfers: list[Transfer], event: Mapping[str, Any]
) -> tuple[Journal, list[Transfer]]:
    """A reversal event of the first format (no amounts in it): the compensating entry of the booked
    original, every transfer swapped. Streams written before reversals carried their amounts still hold
    such events; new reversals are routed like every other entry."""
    journal = Journal(
        settlement_id=original.settlement_id,
        kind="reverse",
        message_id=str(event.get("msgid", "")),
        at=str(event.get("at", original.at)),
        institution=original.institution,
        inst_region=original.inst_region,
        inst_district=original.inst_district,
        insured_region=original.insured_region,
        insured_district=original.insured_district,
        paying_party=original.paying_party,
        scheme=original.scheme,
        visit=original.visit,
        total_fen=-original.total_fen,
        fund_total_fen=-original.fund_total_fen,
        account_fen=-original.account_fen,
        cash_fen=-original.cash_fen,
        funds={code: -amount for code, amount in original.funds.items()},
        entry_id="R" + original.settlement_id[1:],
    )
    return journal, [Transfer(t.credit, t.debit, t.amount_fen) for t in transfers]


def balances(transfers: list[Transfer]) -> dict[str, int]:
    """Net debit balance per account (debits positive). Sums to zero over any set of transfers."""
    out: dict[str, int] = {}
    for t in transfers:
        out[t.debit] = out.get(t.debit, 0) + t.amount_fen
        out[t.credit] = out.get(t.credit, 0) - t.amount_fen
    return out
