"""The national envelope: the request's common fields checked and named, the answer's envelope built
(`infcode`, `inf_refmsgid`, `refmsg_time`, `respond_time`, `err_msg`, `output`).

infcode 0 is success; -2 a business rejection shown to the operator, with err_msg naming the field or
the rule; -1 a system error whose outcome is unknown (the HIS must query with 5203 or reverse with 2601).
Nothing else is ever answered, and never an HTTP 500."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.codec import CODE_LEN_MAX, MESSAGE_ID_LEN_MAX
from gateway.nhsa.codes import NationalRejection, tagged

INPUT_CHARS_MAX = 40_000  # the national limit on `input`, in characters of its JSON text
OK, SYSTEM_ERROR, REJECTED = 0, -1, -2
OPTIONAL_TEXT = (
    "mdtrtarea_admvs",
    "insuplc_admdvs",
    "recer_sys_code",
    "dev_no",
    "dev_safe_info",
    "cainfo",
    "signtype",
    "infver",
    "opter_type",
    "opter",
    "opter_name",
    "inf_time",
    "fixmedins_name",
    "sign_no",
)
OPTIONAL_TEXT_MAX = 2000  # dev_safe_info's national length, the longest of them


class NhsaError(Exception):
    """An answer other than success: infcode -2 (rejected, nothing written) or -1 (outcome unknown)."""

    def __init__(self, infcode: int, err_msg: str) -> None:
        super().__init__(err_msg)
        self.infcode, self.err_msg = infcode, err_msg


def rejected(field: str, why: str, code: NationalRejection = NationalRejection.FIELD_INVALID) -> NhsaError:
    """A -2 answer naming the field and the rule."""
    return NhsaError(REJECTED, f"{field}: {why} {tagged(code)}")


@dataclass(frozen=True, slots=True)
class Request:
    infno: str
    msgid: str
    institution: str  # fixmedins_code
    input: dict[str, Any]
    fields: dict[str, str]  # the optional envelope fields, as text ("" when absent)

    def get(self, name: str) -> str:
        return self.fields.get(name, "")


def text_of(value: Any) -> str | None:
    """Numbers sent for text fields are read as their text; None and "" are absent."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return None
    if isinstance(value, str | int):
        return str(value).strip()
    return None


def parse(body: Any, infno_of_path: str | None = None) -> Request:
    """The envelope of a request (its `input` is each transaction's business). A REST path names its
    transaction: an envelope there naming another infno is refused."""
    if not isinstance(body, dict):
        raise rejected("body", "a JSON object (the national envelope) is required")
    out: dict[str, str] = {}
    for name in ("infno", "msgid", "fixmedins_code"):
        value = text_of(body.get(name))
        if value is None:
            raise rejected(name, "text is required")
        out[name] = value
    infno = out["infno"] or (infno_of_path or "")
    if not infno:
        raise rejected("infno", "required")
    if not infno.isdigit() or len(infno) > 8:
        raise rejected("infno", "the transaction number, 4 digits", NationalRejection.TRANSACTION_UNSUPPORTED)
    if infno_of_path is not None and infno != infno_of_path:
        raise rejected("infno", f"{infno} sent to the path of transaction {infno_of_path}")
    msgid, institution = out["msgid"], out["fixmedins_code"]
    if not msgid:
        raise rejected("msgid", "required (fixmedins_code 12 + yyyyMMddHHmmss + 4-digit sequence)")
    if len(msgid) > MESSAGE_ID_LEN_MAX or not msgid.isprintable() or " " in msgid:
        raise rejected("msgid", f"at most {MESSAGE_ID_LEN_MAX} printable characters without spaces")
    if not institution:
        raise rejected("fixmedins_code", "required")
    if len(institution) > CODE_LEN_MAX or not institution.isalnum():
        raise rejected("fixmedins_code", f"letters and digits, at most {CODE_LEN_MAX}")
    fields: dict[str, str] = {}
    for name in OPTIONAL_TEXT:
        value = text_of(body.get(name))
        if value is None:
            raise rejected(name, "text is required")
        if len(value) > OPTIONAL_TEXT_MAX:
            raise rejected(name, f"at most {OPTIONAL_TEXT_MAX} characters")
        fields[name] = value
    data = body.get("input")
    if data is None or data == "":
        data = {}
    if not isinstance(data, dict):
        raise rejected("input", "a JSON object is required (encrypted envelopes are not served here)")
    return Request(infno, msgid, institution, data, fields)


def stamp(at: datetime) -> str:
    """yyyyMMddHHmmssSSS, as the platform writes refmsg_time and respond_time."""
    return f"{at:%Y%m%d%H%M%S}{at.microsecond // 1000:03d}"


def answer(
    request_region: str,
    received: datetime,
    responded: datetime,
    infcode: int,
    output: Any,
    err_msg: str = "",
) -> dict[str, Any]:
    """The response envelope. inf_refmsgid is ours: region (6) + time (14) + serial (10)."""
    region = request_region if len(request_region) == 6 and request_region.isdigit() else "000000"
    serial = f"{secrets.randbelow(10**10):010d}"
    return {
        "infcode": infcode,
        "inf_refmsgid": f"{region}{received:%Y%m%d%H%M%S}{serial}",
        "refmsg_time": stamp(received),
        "respond_time": stamp(responded),
        "err_msg": err_msg or ("success" if infcode == OK else ""),
        "warn_msg": None,
        "cainfo": None,
        "signtype": None,
        "enctype": None,
        "output": output if output is not None else {},
    }
