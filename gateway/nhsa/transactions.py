"""Each national transaction (infno) as a translation: its input read and checked (every field named as
the national interface names it), turned into the request the gRPC servicer takes, answered by that
same servicer object (and so by the same service layer), and its answer written as the national output.
No business rule is implemented here: splits, limits, idempotency of money, reversals and
reconciliation are all the service layer's.

What the national interface has and MedSettle's API does not is kept in Redis by adapters/nhsa_store.py:
visits (2201/2401) with their fee details (2204/2301), the settlement in flight per visit, sign-ins."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from typing import Any

import cachetools
import redis.exceptions

from adapters import redis_keys as keys
from adapters.nhsa_store import NhsaStore, Visit, new_visit_id
from gateway import codec
from gateway.edge import privacy
from gateway.edge.refusals import Refused
from gateway.engine import Rejection
from gateway.errors import InvalidInput, Rejected, Unavailable
from gateway.nhsa import outputs
from gateway.nhsa.amounts import BadNumber, fen, scaled, yuan
from gateway.nhsa.codes import NationalRejection as NR
from gateway.nhsa.codes import tagged
from gateway.nhsa.envelope import REJECTED, SYSTEM_ERROR, NhsaError, Request, rejected
from gateway.nhsa.limits import NationalLimits
from gateway.protos import pb
from gateway.servicer import LedgerServicer, SettlementServicer
from rules_cache.records import QUANTITY_MAX
from telemetry import metrics

log = logging.getLogger(__name__)
# What a transaction leaves to be written with its answer (the settlement's finish): set by the handler,
# run by the front end once the answer's text exists, so both go to Redis in one script.
AFTER_ANSWER: contextvars.ContextVar[Callable[[tuple[str, str, str]], Awaitable[None]] | None] = (
    contextvars.ContextVar("nhsa_after_answer", default=None)
)
SIGN_IN_CACHE_S = 5.0  # how long a process trusts a sign-in it has seen
SIGN_INS_CACHED_MAX = 50_000  # sign-ins remembered per process


VISIT_OF_MED_TYPE = {
    "11": pb.VISIT_TYPE_OUTPATIENT,
    "12": pb.VISIT_TYPE_OUTPATIENT,
    "13": pb.VISIT_TYPE_OUTPATIENT,
    "14": pb.VISIT_TYPE_SPECIAL,
    "21": pb.VISIT_TYPE_INPATIENT,
    "41": pb.VISIT_TYPE_PHARMACY,
}
OUTPATIENT_MED_TYPES = ("11", "12", "13", "14")
REVERSIBLE_BY_2601 = ("2207", "2304", "2102")
FIELD_OF_PATH = {
    "code": "med_list_codg",
    "unit_price_fen": "pric",
    "quantity": "cnt",
    "service_date": "fee_ocur_time",
    "line_no": "feedetl_sn",
}
BILL_FIELDS = {
    "bill.visit_date": "begntime",
    "bill.admission_date": "begndate",
    "bill.discharge_date": "enddate",
    "bill.lines": "feedetail",
    "bill.stay_id": "mdtrt_id",
    "bill.disease_code": "dise_codg",
    "bill.diagnosis_codes": "diseinfo[].diag_code",
    "bill.visit_type": "med_type",
    "bill.interim": "mid_setl_flag",
    "envelope.message_id": "msgid",
    "envelope.institution_code": "fixmedins_code",
    "envelope.operator_id": "opter",
    "person.card_no": "mdtrt_cert_no",
    "person.id_number": "mdtrt_cert_no",
}
FIELD_OF_REJECTION = {  # the national field a rejection is about (others name their rule only)
    Rejection.PERSON_NOT_FOUND: "mdtrt_cert_no",
    Rejection.CARD_LOST: "mdtrt_cert_no",
    Rejection.CARD_FROZEN: "mdtrt_cert_no",
    Rejection.CARD_CANCELLED: "mdtrt_cert_no",
    Rejection.INSTITUTION_UNKNOWN: "fixmedins_code",
    Rejection.MESSAGE_ID_REUSED: "msgid",
    Rejection.MESSAGE_ID_VOID: "msgid",
    Rejection.SETTLEMENT_NOT_FOUND: "setl_id",
}
DEPENDENCY_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, Unavailable)
UNKNOWN_OUTCOME = "outcome unknown: query with 5203 or reverse with 2601 under the same msgid"


def node(data: dict[str, Any], name: str) -> dict[str, Any]:
    """input.<name>, an object ({} when absent)."""
    value = data.get(name)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise rejected(f"input.{name}", "an object is required")
    return value


def rows(data: dict[str, Any], name: str, *also_in: dict[str, Any]) -> list[dict[str, Any]]:
    """input.<name>[] (or the same list inside input.data, where some vendors put it)."""
    value = data.get(name)
    for other in also_in:
        if value is None:
            value = other.get(name)
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise rejected(f"input.{name}", "a list of objects is required")
    return value


def text(data: dict[str, Any], name: str, path: str, required: bool = False, limit: int = 60) -> str:
    value = data.get(name)
    if value is None:
        out = ""
    elif isinstance(value, str | int) and not isinstance(value, bool):
        out = str(value).strip()
    else:
        raise rejected(f"{path}.{name}", "text is required")
    if required and not out:
        raise rejected(f"{path}.{name}", "required")
    if len(out) > limit or (out and not out.isprintable()):
        raise rejected(f"{path}.{name}", f"at most {limit} printable characters")
    return out


def amount(data: dict[str, Any], name: str, path: str, required: bool = True) -> int | None:
    value = data.get(name)
    if value is None or value == "":
        if required:
            raise rejected(f"{path}.{name}", "required (yuan, two decimals)")
        return None
    try:
        return fen(value)
    except BadNumber as exc:
        raise rejected(f"{path}.{name}", f"yuan with at most two decimals: {exc}") from None


def count_of(value: Any, field: str) -> int:
    try:
        return scaled(value, 0)
    except BadNumber as exc:
        raise rejected(field, f"a whole number: {exc}") from None


def day_text(value: str) -> str:
    """The date part of a national time ("2026-06-15 10:20:00" -> "2026-06-15"); the codec checks it."""
    return value[:10] if len(value) >= 10 else value


def request_hash(req: Request) -> str:
    """What makes a resend 'the same request': the transaction and its input (not the envelope's
    times, device or operator), key order aside."""
    text_ = json.dumps([req.infno, req.input], sort_keys=True, ensure_ascii=False)
    return hashlib.blake2b(text_.encode(), digest_size=16).hexdigest()


def national_field(path: str, details: list[dict[str, Any]]) -> str:
    """A proto path of a violation in national terms: bill.lines[3].quantity -> feedetail[sn].cnt."""
    if path.startswith("bill.lines[") and "]." in path:
        index_text, _, rest = path[len("bill.lines[") :].partition("].")
        sn = (
            details[int(index_text)]["feedetl_sn"]
            if index_text.isdigit() and int(index_text) < len(details)
            else index_text
        )
        return f"feedetail[{sn}].{FIELD_OF_PATH.get(rest, rest)}"
    return BILL_FIELDS.get(path, path)


def bill_lines(details: list[dict[str, Any]]) -> list[Any]:
    """A visit's checked fee details as the bill's lines, numbered in upload order."""
    return [
        pb.BillLine(
            code=d["code"], unit_price_fen=d["pric"], quantity=d["cnt"], line_no=i + 1, service_date=d["at"]
        )
        for i, d in enumerate(details)
    ]


class Translation:
    """The transactions of one gateway process, over the process's servicers and the national store."""

    def __init__(
        self,
        servicer: SettlementServicer,
        ledger: LedgerServicer,
        store: NhsaStore,
        now: Callable[[], datetime],
        limits: NationalLimits,
        sign_in_required: bool = True,
    ) -> None:
        self.servicer, self.ledger, self.store, self.now, self.limits = servicer, ledger, store, now, limits
        self.sign_in_required = sign_in_required
        # current sign-ins seen by this process, so a transaction does not ask Redis each time; a 9002
        # made through another process is seen here within SIGN_IN_CACHE_S
        self.signed_in: cachetools.TTLCache[tuple[str, str], bool] = cachetools.TTLCache(
            SIGN_INS_CACHED_MAX, SIGN_IN_CACHE_S
        )
        self.handlers: dict[str, Callable[[Request], Awaitable[Any]]] = {
            "9001": self.sign_in,
            "9002": self.sign_out,
            "1101": self.person_info,
            "2201": self.register,
            "2401": self.admit,
            "2202": self.cancel_visit,
            "2402": self.discharge,
            "2203": self.visit_info,
            "2204": self.upload,
            "2301": self.upload,
            "2205": self.cancel_fees,
            "2302": self.cancel_fees,
            "2206": self.presettle,
            "2207": self.settle,
            "2303": self.presettle,
            "2304": self.settle,
            "2208": self.cancel_settlement,
            "2305": self.cancel_settlement,
            "2101": self.pharmacy_presettle,
            "2102": self.pharmacy_settle,
            "2103": self.cancel_settlement,
            "2601": self.reverse_message,
            "5203": self.query,
            "3201": self.reconcile_totals,
            "3202": self.reconcile_detail,
        }

    # ---------------------------------------------------------------- calling the service layer

    async def call(self, run: Awaitable[Any], details: list[dict[str, Any]] | None = None) -> Any:
        """The servicer's answer, or its failure in national terms: an input violation or a business
        rejection is -2 naming the field or the rule; store trouble is -1 (outcome unknown)."""
        try:
            return await run
        except InvalidInput as exc:
            named = "; ".join(f"{national_field(f, details or [])}: {d}" for f, d in exc.violations)
            raise NhsaError(REJECTED, f"{named} {tagged(NR.FIELD_INVALID)}") from None
        except Rejected as exc:
            metrics.REJECTIONS.labels(exc.code.name).inc()
            where = f"{FIELD_OF_REJECTION[exc.code]}: " if exc.code in FIELD_OF_REJECTION else ""
            if exc.line_no is not None and details and 0 < exc.line_no <= len(details):
                where = f"feedetail[{details[exc.line_no - 1]['feedetl_sn']}]: "
            raise NhsaError(REJECTED, f"{where}{exc} ({exc.code.name} {int(exc.code)})") from None
        except Refused as exc:
            raise NhsaError(REJECTED, f"{exc.message} ({exc.reason})") from None

    def envelope(self, req: Request, message_id: str | None = None) -> Any:
        return pb.Envelope(
            institution_code=req.institution,
            terminal_id=req.get("dev_no")[:40],
            operator_id=req.get("opter")[:40],
            message_id=message_id or req.msgid,
            sent_at=req.get("inf_time"),
        )

    async def person_record(self, psn_no: str, field: str) -> dict[str, Any]:
        """The person's record as the core system exported it (names, sex, birth date), to fill the
        national person fields; psn_no is MedSettle's person id."""
        if not psn_no or len(psn_no) > codec.CODE_LEN_MAX:
            raise rejected(field, "a psn_no from 1101 is required")
        raw = await self.store.client.get(keys.person_key(psn_no))
        if raw is None:
            raise NhsaError(REJECTED, f"{field}: no insured person {psn_no} (PERSON_NOT_FOUND 101)")
        out: dict[str, Any] = json.loads(raw)
        return out

    def ref_of(self, cert_type: str, cert_no: str, record: dict[str, Any] | None, path: str) -> Any:
        """mdtrt_cert_type 03 (card) -> the card number; 02 (ID number) -> the ID number; none -> the
        person's ID number from the record of psn_no. 01 (e-voucher) needs the platform's token
        service, which MedSettle does not run."""
        if cert_type == "03" and cert_no:
            return pb.PersonRef(card_no=cert_no)
        if cert_type == "02" and cert_no:
            return pb.PersonRef(id_number=cert_no)
        if cert_type == "01":
            raise rejected(
                f"{path}.mdtrt_cert_type",
                "01 (e-voucher) is not served: swipe the card (03) or give the ID number (02)",
                NR.TRANSACTION_UNSUPPORTED,
            )
        if cert_type and cert_type not in ("02", "03"):
            raise rejected(f"{path}.mdtrt_cert_type", "02 (ID number) or 03 (card)")
        if record is not None:
            return pb.PersonRef(id_number=record["id_number"])
        raise rejected(f"{path}.mdtrt_cert_no", "required with mdtrt_cert_type")

    def person_fields(self, record: dict[str, Any], on: date) -> dict[str, Any]:
        birth = date.fromisoformat(record["birth_date"])
        age = on.year - birth.year - int((on.month, on.day) < (birth.month, birth.day))
        return {
            "psn_name": codec.mask_name(record.get("name", "")),
            "certno": privacy.mask_id_number(record.get("id_number", "")),
            "gend": {"M": "1", "F": "2"}.get(record.get("sex", ""), "9"),
            "brdy": record["birth_date"],
            "age": age,
            "cvlserv_flag": "1" if "civil_servant" in record.get("tags", []) else "0",
        }

    # ---------------------------------------------------------------- 9001 / 9002

    async def sign_in(self, req: Request) -> Any:
        data = node(req.input, "signIn")
        opter_no = text(data, "opter_no", "input.signIn", required=True, limit=30)
        sign_no = f"{self.now():%Y%m%d}{secrets.randbelow(10**12):012d}"
        at = self.now().strftime("%Y-%m-%d %H:%M:%S")
        record = {
            "opter_no": opter_no,
            "mac": text(data, "mac", "input.signIn", limit=100),
            "ip": text(data, "ip", "input.signIn", limit=100),
            "at": at,
        }
        await self.store.sign_in(
            req.institution, sign_no, record, self.limits.sign_in_retention_hours * 3_600_000
        )
        return {"signinoutb": {"sign_time": at, "sign_no": sign_no}}

    async def sign_out(self, req: Request) -> Any:
        data = node(req.input, "signOut") or node(req.input, "data")
        sign_no = text(data, "sign_no", "input.signOut", limit=30) or req.get("sign_no")
        self.signed_in.pop((req.institution, sign_no), None)
        if not sign_no or not await self.store.sign_out(req.institution, sign_no):
            raise rejected(
                "input.signOut.sign_no", "not a current sign-in of this institution", NR.SIGN_NO_INVALID
            )
        return {"signoutoutb": {"sign_time": self.now().strftime("%Y-%m-%d %H:%M:%S")}}

    async def check_sign_in(self, req: Request) -> None:
        if not self.sign_in_required or req.infno in ("9001",):
            return
        sign_no = req.get("sign_no")
        if not sign_no:
            raise rejected("sign_no", "required: sign in with 9001 first", NR.SIGN_NO_INVALID)
        if (req.institution, sign_no) in self.signed_in:
            return
        if not await self.store.signed_in(req.institution, sign_no):
            raise rejected(
                "sign_no",
                f"{sign_no} is not a current sign-in of {req.institution} (9001)",
                NR.SIGN_NO_INVALID,
            )
        self.signed_in[(req.institution, sign_no)] = True

    # ---------------------------------------------------------------- 1101

    async def person_info(self, req: Request) -> Any:
        data = node(req.input, "data")
        cert_type = text(data, "mdtrt_cert_type", "input.data", limit=3)
        cert_no = text(data, "mdtrt_cert_no", "input.data", limit=40) or text(
            data, "certno", "input.data", limit=40
        )
        if not cert_type and cert_no:
            cert_type = "02"  # psn_cert_type + certno: an ID number
        if not cert_no:
            raise rejected("input.data.mdtrt_cert_no", "a card number (03) or an ID number (02) is required")
        ref = self.ref_of(cert_type, cert_no, None, "input.data")
        request = pb.QueryEligibilityRequest(envelope=self.envelope(req), person=ref)
        found = await self.call(self.servicer.QueryEligibility(request))
        record = await self.person_record(found.person_id, "input.data.mdtrt_cert_no")
        person = self.person_fields(record, self.now().date())
        insuinfo = []
        for e in found.enrolments:
            insutype = outputs.INSUTYPE_OF_SCHEME.get(e.scheme, "")
            insuinfo.append(
                {
                    "balc": yuan(found.account_balance_fen) if insutype == "310" else yuan(0),
                    "insutype": insutype,
                    "psn_type": outputs.PSN_TYPE.get(e.person_type, e.person_type),
                    "psn_insu_stas": "1",
                    "psn_insu_date": e.valid_from,
                    "paus_insu_date": e.valid_to or None,
                    "cvlserv_flag": person["cvlserv_flag"],
                    "insuplc_admdvs": e.district or e.region,
                    "emp_name": "",
                }
            )
        return {
            "baseinfo": {
                "psn_no": found.person_id,
                "psn_cert_type": "01",
                "certno": person["certno"],
                "psn_name": person["psn_name"],
                "gend": person["gend"],
                "naty": "",
                "brdy": person["brdy"],
                "age": person["age"],
                "exp_content": None,
            },
            "insuinfo": insuinfo,
            "idetinfo": [
                {
                    "psn_idet_type": r.kind,
                    "psn_type_lv": r.code,
                    "begntime": r.valid_from,
                    "endtime": r.valid_to or None,
                    "memo": None,
                }
                for r in found.registrations
            ],
            "exp_content": None if found.covered_here else found.not_covered_reason,
        }

    # ---------------------------------------------------------------- 2201 / 2401 / 2202 / 2402 / 2203

    async def open_visit(
        self, req: Request, data: dict[str, Any], path: str, med_type: str
    ) -> dict[str, Any]:
        psn_no = text(data, "psn_no", path, required=True, limit=40)
        cert_type = text(data, "mdtrt_cert_type", path, limit=3)
        cert_no = text(data, "mdtrt_cert_no", path, limit=40)
        begntime = text(data, "begntime", path, limit=19) or self.now().strftime("%Y-%m-%d %H:%M:%S")
        record = await self.person_record(psn_no, f"{path}.psn_no")
        ref = self.ref_of(cert_type, cert_no, record, path)
        request = pb.QueryEligibilityRequest(envelope=self.envelope(req), person=ref)
        found = await self.call(self.servicer.QueryEligibility(request))  # the card's state checked here
        if found.person_id != psn_no:
            raise rejected(f"{path}.mdtrt_cert_no", f"belongs to another person than psn_no {psn_no}")
        if not found.covered_here:
            raise NhsaError(REJECTED, f"{path}.psn_no: {found.not_covered_reason}")
        if med_type not in VISIT_OF_MED_TYPE:
            raise rejected(
                f"{path}.med_type",
                f"{med_type} is not served (11, 12, 13, 14, 21, 41)",
                NR.TRANSACTION_UNSUPPORTED,
            )
        mdtrt_id = new_visit_id(psn_no, f"{self.now():%y%m%d}")
        meta = {
            "mdtrt_id": mdtrt_id,
            "psn_no": psn_no,
            "inst": req.institution,
            "status": "open",
            "med_type": med_type,
            "insutype": text(data, "insutype", path, limit=6),
            "begntime": begntime,
            "mdtrt_cert_type": cert_type or ("03" if ref.HasField("card_no") else "02"),
            "cert_no": ref.card_no or ref.id_number,
            "ipt_otp_no": text(data, "ipt_otp_no", path, limit=30) or text(data, "ipt_no", path, limit=30),
            "enddate": "",
            "dise_codg": "",
            **self.person_fields(record, self.now().date()),
        }
        if found.enrolments:
            meta["psn_type"] = outputs.PSN_TYPE.get(found.enrolments[0].person_type, "")
        await self.store.create_visit(mdtrt_id, meta)
        return {"mdtrt_id": mdtrt_id, "psn_no": psn_no, "ipt_otp_no": meta["ipt_otp_no"], "exp_content": None}

    async def register(self, req: Request) -> Any:
        data = node(req.input, "data")
        med_type = text(data, "med_type", "input.data", limit=6) or "11"
        if med_type not in OUTPATIENT_MED_TYPES:
            raise rejected(
                "input.data.med_type",
                "2201 registers an outpatient visit (11, 12, 13, 14); admit a stay with 2401",
            )
        return {"data": await self.open_visit(req, data, "input.data", med_type)}

    async def admit(self, req: Request) -> Any:
        data = node(req.input, "mdtrtinfo")
        med_type = text(data, "med_type", "input.mdtrtinfo", limit=6) or "21"
        if med_type != "21":
            raise rejected(
                "input.mdtrtinfo.med_type", "2401 admits an inpatient stay (21)", NR.TRANSACTION_UNSUPPORTED
            )
        return {"result": await self.open_visit(req, data, "input.mdtrtinfo", med_type)}

    async def visit_of(self, req: Request, data: dict[str, Any], path: str) -> Visit:
        mdtrt_id = text(data, "mdtrt_id", path, required=True, limit=30)
        psn_no = text(data, "psn_no", path, limit=40)
        visit = await self.store.visit(mdtrt_id)
        if (
            visit is None
            or visit.meta["inst"] != req.institution
            or (psn_no and visit.meta["psn_no"] != psn_no)
        ):
            raise rejected(
                f"{path}.mdtrt_id",
                f"no visit {mdtrt_id} of this person at {req.institution}"
                " (registered with 2201 or 2401, kept for"
                f" {self.limits.visit_retention_days} days after its last use)",
                NR.VISIT_NOT_FOUND,
            )
        return visit

    async def cancel_visit(self, req: Request) -> Any:
        data = node(req.input, "data")
        visit = await self.visit_of(req, data, "input.data")
        outcome = await self.store.update_meta(visit.mdtrt_id, {**visit.meta, "status": "cancelled"})
        if outcome[0] != "ok":
            what = (
                "a settlement is in flight"
                if outcome[0] == "settling"
                else f"settlement {outcome[-1]} stands"
            )
            raise rejected(
                "input.data.mdtrt_id", f"cannot cancel: {what}; cancel it first (2208/2305)", NR.VISIT_CLOSED
            )
        return {}

    async def discharge(self, req: Request) -> Any:
        data = node(req.input, "dscginfo")
        visit = await self.visit_of(req, data, "input.dscginfo")
        endtime = text(data, "endtime", "input.dscginfo", required=True, limit=19)
        await self.store.set_meta(visit.mdtrt_id, {**visit.meta, "enddate": endtime})
        return {}

    async def visit_info(self, req: Request) -> Any:
        """2203: the visit's medical type and diagnoses; a special-disease visit (14) settles under the
        first diagnosis code."""
        data = node(req.input, "mdtrtinfo") or node(req.input, "data")
        visit = await self.visit_of(req, data, "input.mdtrtinfo")
        meta = dict(visit.meta)
        med_type = text(data, "med_type", "input.mdtrtinfo", limit=6)
        if med_type:
            meta["med_type"] = med_type
        diseases = rows(req.input, "diseinfo")
        if diseases:
            meta["dise_codg"] = text(diseases[0], "diag_code", "input.diseinfo[0]", limit=40)
            # every diagnosis, for the policy's audit rules (限定支付范围) and per-disease payment; how many
            # a bill may carry is the codec's check, named back as diseinfo[].diag_code
            meta["diag_codes"] = [
                code
                for i, row in enumerate(diseases)
                if (code := text(row, "diag_code", f"input.diseinfo[{i}]", limit=40))
            ]
        await self.store.set_meta(visit.mdtrt_id, meta)
        return {}

    # ---------------------------------------------------------------- 2204 / 2301 / 2205 / 2302

    def details(self, raw: list[dict[str, Any]], path: str, mdtrt_id: str | None) -> list[dict[str, Any]]:
        """Fee details checked one by one: pric x cnt = det_item_fee_sumamt, whole units, one visit."""
        if len(raw) > self.limits.fee_details_per_upload_max:
            raise rejected(
                path,
                f"at most {self.limits.fee_details_per_upload_max} details per message",
                NR.FEE_DETAIL_REJECTED,
            )
        out, seen = [], set()
        for i, row in enumerate(raw):
            where = f"{path}[{i}]"
            sn = text(row, "feedetl_sn", where, required=True, limit=30)
            if "|" in sn or sn in seen:
                raise rejected(
                    f"{where}.feedetl_sn", f"{sn} appears twice or holds '|'", NR.FEE_DETAIL_REJECTED
                )
            seen.add(sn)
            if mdtrt_id is not None and text(row, "mdtrt_id", where, limit=30) not in ("", mdtrt_id):
                raise rejected(f"{where}.mdtrt_id", "every detail of one message belongs to one visit")
            price = amount(row, "pric", where)
            cnt = count_of(row.get("cnt"), f"{where}.cnt")
            assert price is not None
            if not 1 <= cnt <= QUANTITY_MAX:
                raise rejected(f"{where}.cnt", f"whole units between 1 and {QUANTITY_MAX}")
            total = amount(row, "det_item_fee_sumamt", where, required=False)
            if total is not None and total != price * cnt:
                raise rejected(
                    f"{where}.det_item_fee_sumamt",
                    f"{yuan(total).text()} is not pric x cnt = {yuan(price * cnt).text()}",
                    NR.AMOUNT_MISMATCH,
                )
            out.append(
                {
                    "feedetl_sn": sn,
                    "code": text(row, "med_list_codg", where, required=True, limit=40),
                    "pric": price,
                    "cnt": cnt,
                    "bch": text(row, "chrg_bchno", where, limit=30),
                    "at": text(row, "fee_ocur_time", where, limit=19),
                    "medins": text(row, "medins_list_codg", where, limit=50),
                }
            )
        return out

    def bill(
        self,
        meta: dict[str, Any],
        details: list[dict[str, Any]],
        med_type: str,
        data: dict[str, Any],
        interim: bool = False,
    ) -> Any:
        visit_type = VISIT_OF_MED_TYPE.get(med_type)
        if visit_type is None:
            raise rejected(
                "input.data.med_type",
                f"{med_type} is not served (11, 12, 13, 14, 21, 41)",
                NR.TRANSACTION_UNSUPPORTED,
            )
        out = pb.Bill(
            visit_type=visit_type,
            lines=bill_lines(details),
            disease_code=text(data, "dise_codg", "input.data", limit=40) or meta.get("dise_codg", ""),
            diagnosis_codes=list(meta.get("diag_codes", [])),
            decline_account=text(data, "acct_used_flag", "input.data", limit=1) == "0",
        )
        if visit_type == pb.VISIT_TYPE_INPATIENT:
            out.stay_id = meta["mdtrt_id"]
            out.interim = interim
            out.admission_date = day_text(text(data, "begndate", "input.data", limit=19) or meta["begntime"])
            end = text(data, "enddate", "input.data", limit=19) or meta.get("enddate", "")
            out.discharge_date = day_text(end)
        else:
            out.visit_date = day_text(meta["begntime"])
        return out

    def person_ref(self, meta: dict[str, Any]) -> Any:
        if meta["mdtrt_cert_type"] == "03":
            return pb.PersonRef(card_no=meta["cert_no"])
        return pb.PersonRef(id_number=meta["cert_no"])

    async def upload(self, req: Request) -> Any:
        raw = rows(req.input, "feedetail")
        if not raw:
            raise rejected("input.feedetail", "at least one fee detail")
        mdtrt_id = text(raw[0], "mdtrt_id", "input.feedetail[0]", required=True, limit=30)
        visit = await self.visit_of(req, raw[0], "input.feedetail[0]")
        inpatient = visit.meta["med_type"] == "21"
        if inpatient != (req.infno == "2301"):
            raise rejected(
                "infno",
                f"{'2301' if inpatient else '2204'} uploads this visit's details"
                f" (med_type {visit.meta['med_type']})",
            )
        if visit.meta["status"] != "open":
            raise rejected("input.feedetail[0].mdtrt_id", "the visit is cancelled", NR.VISIT_CLOSED)
        new = self.details(raw, "input.feedetail", mdtrt_id)
        first = max((line.get("seq", 0) for line in visit.lines.values()), default=-1) + 1
        for i, d in enumerate(new):
            d["seq"] = first + i  # upload order: bill line numbers stay the same from 2206 to 2207
        for i, d in enumerate(new):
            if d["feedetl_sn"] in visit.lines:
                raise rejected(
                    f"input.feedetail[{i}].feedetl_sn",
                    f"{d['feedetl_sn']} is already uploaded; cancel it first (2205/2302)",
                    NR.FEE_DETAIL_REJECTED,
                )
        held = len(visit.lines) + len(new)
        if held > self.limits.fee_details_per_visit_max:
            raise rejected(
                "input.feedetail",
                f"a visit holds at most {self.limits.fee_details_per_visit_max}"
                f" details ({len(visit.lines)} held)",
                NR.FEE_DETAIL_REJECTED,
            )
        # the split of the open details with the new ones, by the service layer, before anything is kept:
        # a detail it refuses (an unknown code, a date outside the stay) is refused here, nothing written
        details = [*visit.open_lines(), *new]
        bill = self.bill(visit.meta, details, visit.meta["med_type"], {})
        request = pb.SettleRequest(envelope=self.envelope(req), person=self.person_ref(visit.meta), bill=bill)
        answer = await self.call(self.servicer.PreSettle(request), details)
        outcome = await self.store.add_lines(mdtrt_id, new, self.limits.fee_details_per_visit_max)
        if outcome[0] != "ok":
            why = {
                "full": "the visit's limit of details was reached meanwhile",
                "duplicate": f"{outcome[-1]} was uploaded meanwhile",
                "closed": "the visit was cancelled meanwhile",
                "missing": "the visit expired",
            }.get(outcome[0], outcome[0])
            raise rejected("input.feedetail", why, NR.FEE_DETAIL_REJECTED)
        results = outputs.line_results(answer.split, details)
        return {"result": results[len(details) - len(new) :]}

    async def cancel_fees(self, req: Request) -> Any:
        data = node(req.input, "data")
        visit = await self.visit_of(req, data, "input.data")
        sn = text(data, "feedetl_sn", "input.data", limit=30)
        batch = text(data, "chrg_bchno", "input.data", limit=30)
        if sn and sn not in ("0000", "0"):
            sns = [sn]
        else:  # "0000" (or none): every open detail, of the charge batch if one is named
            sns = [d["feedetl_sn"] for d in visit.open_lines() if not batch or d["bch"] == batch]
        if not sns:
            return {}
        outcome = await self.store.remove_lines(visit.mdtrt_id, sns)
        if outcome[0] != "ok":
            why = {
                "unknown": f"{outcome[1]} is not a detail of this visit",
                "settled": f"{outcome[1]} is settled by {outcome[-1]}: cancel that settlement first"
                " (2208/2305)",
                "settling": f"{outcome[1]} is being settled by message {outcome[-1]}",
            }.get(outcome[0], outcome[0])
            raise rejected("input.data.feedetl_sn", why, NR.FEE_DETAIL_REJECTED)
        return {}

    # ---------------------------------------------------------------- 2206 / 2207 / 2303 / 2304

    def settle_inputs(
        self, req: Request, visit: Visit, data: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], str]:
        med_type = text(data, "med_type", "input.data", limit=6) or visit.meta["med_type"]
        if (med_type == "21") != (visit.meta["med_type"] == "21"):
            raise rejected(
                "input.data.med_type", f"{med_type} does not fit visit type {visit.meta['med_type']}"
            )
        if (med_type == "21") != (req.infno in ("2303", "2304")):
            raise rejected("infno", "2206/2207 settle outpatient visits, 2303/2304 inpatient stays")
        if text(data, "psn_setlway", "input.data", limit=2) == "02":
            raise rejected(
                "input.data.psn_setlway",
                "02 (by fixed quota) is not served: 01 (by item)",
                NR.TRANSACTION_UNSUPPORTED,
            )
        if visit.meta["status"] != "open":
            raise rejected("input.data.mdtrt_id", "the visit is cancelled", NR.VISIT_CLOSED)
        batch = text(data, "chrg_bchno", "input.data", limit=30)
        details = [
            d for d in visit.open_lines() if not batch or d["bch"] == batch or req.infno in ("2303", "2304")
        ]
        if not details:
            raise rejected(
                "input.data.mdtrt_id",
                "no fee details to settle: upload them with 2204/2301"
                + (f" (charge batch {batch})" if batch else ""),
                NR.FEE_DETAIL_REJECTED,
            )
        stated = amount(data, "medfee_sumamt", "input.data")
        total = sum(d["pric"] * d["cnt"] for d in details)
        if stated != total:
            raise rejected(
                "input.data.medfee_sumamt",
                f"{yuan(stated or 0).text()} is not the total of the"
                f" {len(details)} open fee details, {yuan(total).text()}",
                NR.AMOUNT_MISMATCH,
            )
        return details, med_type

    async def presettle(self, req: Request) -> Any:
        data = node(req.input, "data") or node(req.input, "mdtrtinfo")
        visit = await self.visit_of(req, data, "input.data")
        details, med_type = self.settle_inputs(req, visit, data)
        interim = text(data, "mid_setl_flag", "input.data", limit=1) == "1"
        bill = self.bill(visit.meta, details, med_type, data, interim)
        request = pb.SettleRequest(envelope=self.envelope(req), person=self.person_ref(visit.meta), bill=bill)
        answer = await self.call(self.servicer.PreSettle(request), details)
        split = answer.split
        return {
            "setlinfo": outputs.setlinfo(split, visit.meta, None, None, req.msgid, med_type),
            "setldetail": outputs.setldetail(split),
        }

    async def settle(self, req: Request) -> Any:
        data = node(req.input, "data") or node(req.input, "mdtrtinfo")
        visit = await self.visit_of(req, data, "input.data")
        if req.msgid in visit.messages:  # this msgid settled the visit; its kept answer was lost
            return await self.original(req, visit, visit.messages[req.msgid], data)
        details, med_type = self.settle_inputs(req, visit, data)
        claimed = await self.store.claim_settlement(
            visit.mdtrt_id,
            visit.meta["psn_no"],
            req.institution,
            req.msgid,
            [d["feedetl_sn"] for d in details],
        )
        if claimed[0] == "same":  # this message settling already (its first answer was lost): its details
            sns = [s for s in claimed[1].split("|") if s]
            details = [visit.lines[s] for s in sns if s in visit.lines]
        elif claimed[0] == "busy":
            raise rejected(
                "input.data.mdtrt_id",
                f"message {claimed[1]} is settling this visit: resend it"
                " with its own msgid, or reverse it with 2601",
                NR.SETTLEMENT_IN_FLIGHT,
            )
        elif claimed[0] != "ok":
            raise rejected(
                "input.data.mdtrt_id",
                f"its details changed meanwhile ({' '.join(claimed)})",
                NR.FEE_DETAIL_REJECTED,
            )
        interim = text(data, "mid_setl_flag", "input.data", limit=1) == "1"
        bill = self.bill(visit.meta, details, med_type, data, interim)
        request = pb.SettleRequest(envelope=self.envelope(req), person=self.person_ref(visit.meta), bill=bill)
        try:
            raw = await self.call(self.servicer.Settle(request), details)
        except NhsaError as exc:
            if exc.infcode == REJECTED:  # nothing was settled: the visit may settle under another msgid
                await self.store.release_settlement(visit.mdtrt_id, req.msgid)
            raise
        except Exception:
            raise  # outcome unknown: the claim stays until this msgid is resent or reversed (2601)
        settled = pb.SettleResponse.FromString(raw)
        mdtrt_id, settlement_id = visit.mdtrt_id, settled.settlement_id

        async def finish(answer: tuple[str, str, str]) -> None:  # with the answer, in one script
            await self.store.finish_settlement(mdtrt_id, req.msgid, settlement_id, answer)

        AFTER_ANSWER.set(finish)
        return self.settled_output(
            settled.split, visit.meta, settled.settlement_id, settled.settled_at, settled.message_id, med_type
        )

    async def original(self, req: Request, visit: Visit, setl_id: str, data: dict[str, Any]) -> Any:
        """The first answer again, from the settlement the service keeps: nothing is settled twice."""
        request = pb.GetSettlementRequest(envelope=self.envelope(req), settlement_id=setl_id)
        found = await self.call(self.servicer.GetSettlement(request))
        s = found.settlement
        med_type = text(data, "med_type", "input.data", limit=6) or visit.meta["med_type"]
        return self.settled_output(s.split, visit.meta, s.settlement_id, s.settled_at, s.message_id, med_type)

    def settled_output(
        self, split: Any, meta: dict[str, Any], setl_id: str, at: str, msgid: str, med_type: str
    ) -> dict[str, Any]:
        setl_time = at[:19].replace("T", " ") if at else None
        return {
            "setlinfo": outputs.setlinfo(split, meta, setl_id, setl_time, msgid, med_type),
            "setldetail": outputs.setldetail(split),
        }

    # ---------------------------------------------------------------- 2101 / 2102 (pharmacy)

    async def pharmacy(self, req: Request) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
        data = node(req.input, "data")
        psn_no = text(data, "psn_no", "input.data", required=True, limit=40)
        record = await self.person_record(psn_no, "input.data.psn_no")
        ref = self.ref_of(
            text(data, "mdtrt_cert_type", "input.data", limit=3),
            text(data, "mdtrt_cert_no", "input.data", limit=40),
            record,
            "input.data",
        )
        med_type = text(data, "med_type", "input.data", limit=6) or "41"
        if med_type != "41":
            raise rejected("input.data.med_type", "a pharmacy sale is 41", NR.TRANSACTION_UNSUPPORTED)
        details = self.details(rows(req.input, "drugdetail", data), "input.drugdetail", None)
        if not details:
            raise rejected("input.drugdetail", "at least one drug detail")
        stated = amount(data, "medfee_sumamt", "input.data")
        total = sum(d["pric"] * d["cnt"] for d in details)
        if stated != total:
            raise rejected(
                "input.data.medfee_sumamt",
                f"{yuan(stated or 0).text()} is not the drug details' total {yuan(total).text()}",
                NR.AMOUNT_MISMATCH,
            )
        meta = {
            "mdtrt_id": text(data, "mdtrt_id", "input.data", limit=30),
            "psn_no": psn_no,
            "mdtrt_cert_type": "03" if ref.HasField("card_no") else "02",
            "begntime": text(data, "begntime", "input.data", limit=19),
            **self.person_fields(record, self.now().date()),
        }
        bill = pb.Bill(
            visit_type=pb.VISIT_TYPE_PHARMACY,
            visit_date=day_text(meta["begntime"]),
            decline_account=text(data, "acct_used_flag", "input.data", limit=1) == "0",
            lines=bill_lines(details),
        )
        return pb.SettleRequest(envelope=self.envelope(req), person=ref, bill=bill), meta, details

    async def pharmacy_presettle(self, req: Request) -> Any:
        request, meta, details = await self.pharmacy(req)
        answer = await self.call(self.servicer.PreSettle(request), details)
        return {
            "setlinfo": outputs.setlinfo(answer.split, meta, None, None, req.msgid, "41"),
            "setldetail": outputs.setldetail(answer.split),
        }

    async def pharmacy_settle(self, req: Request) -> Any:
        request, meta, details = await self.pharmacy(req)
        settled = pb.SettleResponse.FromString(await self.call(self.servicer.Settle(request), details))
        meta = {**meta, "mdtrt_id": meta["mdtrt_id"] or settled.settlement_id}
        return self.settled_output(
            settled.split, meta, settled.settlement_id, settled.settled_at, settled.message_id, "41"
        )

    # ---------------------------------------------------------------- 2208 / 2305 / 2103 / 2601

    async def cancel_settlement(self, req: Request) -> Any:
        data = node(req.input, "data")
        setl_id = text(data, "setl_id", "input.data", required=True, limit=40)
        psn_no = text(data, "psn_no", "input.data", required=True, limit=40)
        mdtrt_id = text(data, "mdtrt_id", "input.data", limit=30)
        visit = await self.visit_of(req, data, "input.data") if mdtrt_id and req.infno != "2103" else None
        if visit is not None and setl_id not in visit.parts:
            raise rejected(
                "input.data.setl_id",
                f"{setl_id} is not a settlement of visit {mdtrt_id} standing now",
                NR.VISIT_NOT_FOUND,
            )
        looked = pb.GetSettlementRequest(envelope=self.envelope(req), settlement_id=setl_id)
        found = await self.call(self.servicer.GetSettlement(looked))
        if found.settlement.person_id != psn_no:
            raise NhsaError(
                REJECTED,
                f"input.data.setl_id: no settlement {setl_id} of {psn_no} here (SETTLEMENT_NOT_FOUND 402)",
            )
        request = pb.ReverseRequest(envelope=self.envelope(req), settlement_id=setl_id)
        reversed_ = pb.ReverseResponse.FromString(await self.call(self.servicer.Reverse(request)))
        if visit is not None:
            await self.store.unsettle(visit.mdtrt_id, setl_id)
        record = await self.person_record(psn_no, "input.data.psn_no")
        meta = (
            visit.meta
            if visit is not None
            else {
                "mdtrt_id": mdtrt_id or setl_id,
                "psn_no": psn_no,
                "mdtrt_cert_type": "",
                **self.person_fields(record, self.now().date()),
            }
        )
        med_type = meta.get("med_type", "41")
        return self.settled_output(
            reversed_.split, meta, reversed_.reversal_id, reversed_.reversed_at, req.msgid, med_type
        )

    async def reverse_message(self, req: Request) -> Any:
        data = node(req.input, "data")
        psn_no = text(data, "psn_no", "input.data", required=True, limit=40)
        omsgid = text(data, "omsgid", "input.data", required=True, limit=codec.MESSAGE_ID_LEN_MAX)
        oinfno = text(data, "oinfno", "input.data", required=True, limit=4)
        if oinfno not in REVERSIBLE_BY_2601:
            raise rejected(
                "input.data.oinfno",
                f"2601 reverses {', '.join(REVERSIBLE_BY_2601)}; cancel a {oinfno} with its own transaction",
                NR.TRANSACTION_UNSUPPORTED,
            )
        record = await self.person_record(psn_no, "input.data.psn_no")
        request = pb.ReverseRequest(
            envelope=self.envelope(req),
            original_message_id=omsgid,
            person=pb.PersonRef(id_number=record["id_number"]),
        )
        reversed_ = pb.ReverseResponse.FromString(await self.call(self.servicer.Reverse(request)))
        mdtrt_id = await self.store.visit_of_message(psn_no, req.institution, omsgid)
        if mdtrt_id is not None:
            if reversed_.settlement_id:
                await self.store.unsettle(mdtrt_id, reversed_.settlement_id)
            await self.store.release_settlement(mdtrt_id, omsgid)
        return {}  # the national answer has no output node: infcode 0 is success

    # ---------------------------------------------------------------- 5203

    async def query(self, req: Request) -> Any:
        data = node(req.input, "data")
        setl_id = text(data, "setl_id", "input.data", required=True, limit=40)
        psn_no = text(data, "psn_no", "input.data", required=True, limit=40)
        request = pb.GetSettlementRequest(envelope=self.envelope(req), settlement_id=setl_id)
        found = await self.call(self.servicer.GetSettlement(request))
        if found.settlement.person_id != psn_no:
            raise NhsaError(
                REJECTED,
                f"input.data.setl_id: no settlement {setl_id} of {psn_no} here (SETTLEMENT_NOT_FOUND 402)",
            )
        mdtrt_id = text(data, "mdtrt_id", "input.data", limit=30)
        visit = await self.store.visit(mdtrt_id) if mdtrt_id else None
        record = await self.person_record(psn_no, "input.data.psn_no")
        meta = (
            visit.meta
            if visit is not None and visit.meta["psn_no"] == psn_no
            else {
                "mdtrt_id": mdtrt_id,
                "psn_no": psn_no,
                "mdtrt_cert_type": "",
                **self.person_fields(record, self.now().date()),
            }
        )
        s = found.settlement
        out = self.settled_output(
            found.current, meta, s.settlement_id, s.settled_at, s.message_id, meta.get("med_type", "11")
        )
        out["setlinfo"]["refd_setl_flag"] = "1" if found.status == pb.SETTLEMENT_STATUS_REVERSED else "0"
        return out

    # ---------------------------------------------------------------- 3201 / 3202

    def period(self, data: dict[str, Any]) -> tuple[str, str]:
        begin = day_text(text(data, "stmt_begndate", "input.data", required=True, limit=19))
        end = day_text(text(data, "stmt_enddate", "input.data", required=True, limit=19))
        return begin, end

    async def reconcile_totals(self, req: Request) -> Any:
        data = node(req.input, "data")
        begin, end = self.period(data)
        total = amount(data, "medfee_sumamt", "input.data") or 0
        fund = amount(data, "fund_pay_sumamt", "input.data") or 0
        account = amount(data, "acct_pay", "input.data") or 0
        count = count_of(data.get("fixmedins_setl_cnt", 0), "input.data.fixmedins_setl_cnt")
        totals = pb.Totals(
            count=count,
            total_fen=total,
            fund_total_fen=fund,
            account_fen=account,
            cash_fen=total - fund - account,
        )
        request = pb.ReconcileRequest(
            envelope=self.envelope(req), date_from=begin, date_to=end, totals=totals
        )
        answer = await self.call(self.ledger.Reconcile(request))
        ours = answer.gateway_totals
        optins = text(data, "setl_optins", "input.data", limit=6)
        if answer.matched:
            return {
                "stmtinfo": {
                    "setl_optins": optins,
                    "stmt_rslt": "000000",
                    "stmt_rslt_dscr": "平",
                    "exp_content": None,
                }
            }
        return {
            "stmtinfo": {
                "setl_optins": optins,
                "stmt_rslt": "000103",
                "stmt_rslt_dscr": f"对总账失败: 数据不一致(平台: 笔数{ours.count}/总额"
                f"{yuan(ours.total_fen).text()}/基金"
                f"{yuan(ours.fund_total_fen).text()}/个账{yuan(ours.account_fen).text()}; posted through"
                f" {answer.posted_through})",
                "exp_content": None,
            }
        }

    async def reconcile_detail(self, req: Request) -> Any:
        """3202 with the detail rows inline (`input.detail[]`), not as a file uploaded with 9101."""
        data = node(req.input, "data")
        if text(data, "file_qury_no", "input.data", limit=30):
            raise rejected(
                "input.data.file_qury_no",
                "file upload (9101) is not served: send the rows inline in input.detail[]",
                NR.TRANSACTION_UNSUPPORTED,
            )
        begin, end = self.period(data)
        detail = rows(req.input, "detail", data)
        if len(detail) > self.limits.reconcile_rows_max:
            raise rejected("input.detail", f"at most {self.limits.reconcile_rows_max} rows per message")
        items, known = [], {}
        for i, row in enumerate(detail):
            where = f"input.detail[{i}]"
            msgid = text(row, "medins_setl_id", where, limit=40) or text(row, "msgid", where, limit=40)
            if not msgid:
                raise rejected(f"{where}.medins_setl_id", "the settling message's msgid is required")
            if text(row, "refd_setl_flag", where, limit=1) == "1":
                raise rejected(f"{where}.refd_setl_flag", "send the settlements still standing only (0)")
            items.append(
                pb.ReconcileItem(
                    message_id=msgid,
                    total_fen=amount(row, "medfee_sumamt", where),
                    fund_total_fen=amount(row, "fund_pay_sumamt", where),
                    account_fen=amount(row, "acct_pay", where),
                )
            )
            known[msgid] = row
        items.sort(key=lambda item: item.message_id)
        total = amount(data, "medfee_sumamt", "input.data", required=False) or 0
        fund = amount(data, "fund_pay_sumamt", "input.data", required=False) or 0
        cash = amount(data, "cash_payamt", "input.data", required=False) or 0
        count = count_of(data.get("fixmedins_setl_cnt") or 0, "input.data.fixmedins_setl_cnt")
        totals = pb.Totals(
            count=count, total_fen=total, fund_total_fen=fund, account_fen=total - fund - cash, cash_fen=cash
        )
        request = pb.ReconcileRequest(
            envelope=self.envelope(req), date_from=begin, date_to=end, totals=totals, items=items
        )
        answer = await self.call(self.ledger.Reconcile(request))
        codes = {
            pb.ITEM_STATUS_MATCHED: "000000",
            pb.ITEM_STATUS_MISSING_ON_GATEWAY: "000102",
            pb.ITEM_STATUS_MISSING_AT_INSTITUTION: "000101",
            pb.ITEM_STATUS_AMOUNTS_DIFFER: "000103",
        }
        result = []
        for item in answer.items:
            row = known.get(item.message_id, {})
            theirs = item.gateway if item.status != pb.ITEM_STATUS_MISSING_ON_GATEWAY else item.institution
            result.append(
                {
                    "psn_no": row.get("psn_no", ""),
                    "mdtrt_id": row.get("mdtrt_id", ""),
                    "setl_id": item.settlement_id or row.get("setl_id", ""),
                    "msgid": item.message_id,
                    "stmt_rslt": codes.get(item.status, "000103"),
                    "refd_setl_flag": "0",
                    "memo": item.action,
                    "medfee_sumamt": yuan(theirs.total_fen),
                    "fund_pay_sumamt": yuan(theirs.fund_total_fen),
                    "acct_pay": yuan(theirs.account_fen),
                }
            )
        matched = answer.matched
        return {
            "stmtinfo": {
                "setl_optins": text(data, "setl_optins", "input.data", limit=6),
                "stmt_rslt": "000000" if matched else "000103",
                "stmt_rslt_dscr": "平" if matched else "对明细账失败: 见 result",
            },
            "result": result,
            "next_page_token": answer.next_page_token or None,
        }


def unknown_outcome(exc: BaseException) -> NhsaError:
    log.warning("national transaction failed, outcome unknown: %r", exc)
    return NhsaError(SYSTEM_ERROR, UNKNOWN_OUTCOME)
