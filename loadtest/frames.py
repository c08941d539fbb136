"""Pre-built gRPC request frames for the C load generator: the API's messages (gateway.protos.pb, the
contract) over the synthetic persons of loadtest.synthetic, one length-prefixed gRPC message each,
written back to back into a file.

Every request is built by one function per message type (settle_request for PreSettle and Settle,
query_request, reverse_request), so a field the requests gain (bill dates, stay ids) is one edit here.
Settle frames carry one fresh envelope.message_id each and go round the persons (card L00000000,
L00000001, ...), so one person's commits never queue behind each other; Reverse frames take real
settlement ids, read back from the answers of Settles sent before them."""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.protos import pb
from loadtest.synthetic import INPATIENT_LINES, OUTPATIENT_10_LINES

HOSPITAL = "H50010300001"  # the synthetic persons are Chongqing employees; a Chongqing hospital
TERMINAL = "BENCH"
SETTLEMENT = "/medsettle.v1.SettlementService/"
PING_PATH = "/medsettle.v1.DiagnosticsService/Ping"
Line = tuple[str, int, int]  # catalog code, unit price fen, quantity


def sixty_lines() -> list[Line]:
    """A 60-line inpatient bill: the 10-line outpatient items and the demo stay, repeated."""
    base = [*OUTPATIENT_10_LINES, *INPATIENT_LINES]
    return [base[i % len(base)] for i in range(60)]


def grpc_message(message: Any) -> bytes:
    """One gRPC length-prefixed message: not compressed, 4-byte big-endian length, the body."""
    body: bytes = message.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def card_no(person: int) -> str:
    """The card of synthetic person number `person` (loadtest.synthetic.persons)."""
    return f"L{person:08d}"


def envelope(message_id: str, institution: str = HOSPITAL) -> Any:
    return pb.Envelope(institution_code=institution, terminal_id=TERMINAL, message_id=message_id)


def settle_request(message_id: str, person: int, visit_type: int, lines: list[Line]) -> Any:
    """The one place a PreSettle or Settle request is put together."""
    bill = pb.Bill(
        visit_type=visit_type,
        lines=[pb.BillLine(code=code, unit_price_fen=price, quantity=qty) for code, price, qty in lines],
    )
    return pb.SettleRequest(
        envelope=envelope(message_id), person=pb.PersonRef(card_no=card_no(person)), bill=bill
    )


def query_request(message_id: str, person: int) -> Any:
    return pb.QueryEligibilityRequest(
        envelope=envelope(message_id), person=pb.PersonRef(card_no=card_no(person))
    )


def reverse_request(message_id: str, settlement_id: str) -> Any:
    return pb.ReverseRequest(envelope=envelope(message_id), settlement_id=settlement_id)


def run_tag() -> str:
    """A prefix that makes this run's message ids unlike any earlier run's against the same Redis."""
    return secrets.token_hex(4).upper()


def message_id(tag: str, i: int) -> str:
    return f"{tag}{i:010d}"  # at most 40 characters (the envelope's limit): here 18 with an 8-char tag


def _ping(mid: str, person: int) -> Any:
    return pb.PingRequest()


def _query(mid: str, person: int) -> Any:
    return query_request(mid, person)


def _outpatient_10(mid: str, person: int) -> Any:
    return settle_request(mid, person, pb.VISIT_TYPE_OUTPATIENT, OUTPATIENT_10_LINES)


def _inpatient_60(mid: str, person: int) -> Any:
    return settle_request(mid, person, pb.VISIT_TYPE_INPATIENT, sixty_lines())


@dataclass(frozen=True, slots=True)
class Call:
    """One row of the benchmark: the method path and how request (message id, person number) is built.
    `distinct` calls change state (Settle, Reverse) and must never be sent twice; the others may go
    round their frames. Reverse has no builder: its frames need settlement ids (reverse_frames)."""

    name: str
    path: str
    distinct: bool
    build: Callable[[str, int], Any] | None


PING = Call("MedSettle Ping", PING_PATH, False, _ping)
QUERY = Call("QueryEligibility", SETTLEMENT + "QueryEligibility", False, _query)
PRESETTLE_10 = Call("PreSettle, 10 lines", SETTLEMENT + "PreSettle", False, _outpatient_10)
SETTLE_10 = Call("Settle, 10 lines", SETTLEMENT + "Settle", True, _outpatient_10)
SETTLE_60 = Call("Settle, 60 lines", SETTLEMENT + "Settle", True, _inpatient_60)
REVERSE = Call("Reverse", SETTLEMENT + "Reverse", True, None)


def write_frames(path: Path, messages: Iterable[Any]) -> int:
    """Writes the messages as a frames file; returns how many."""
    count = 0
    with path.open("wb") as f:
        for message in messages:
            f.write(grpc_message(message))
            count += 1
    return count


def call_frames(
    path: Path, call: Call, count: int, persons: int, tag: str | None = None, first_person: int = 0
) -> str:
    """Writes `count` requests of `call` (numbered 0..count-1 under a fresh tag) going round persons
    first_person .. first_person + persons - 1; returns the tag."""
    if call.build is None:
        raise ValueError(f"{call.name}: build its frames with reverse_frames")
    build = call.build
    tag = tag or run_tag()
    write_frames(path, (build(message_id(tag, i), first_person + i % persons) for i in range(count)))
    return tag


def reverse_frames(path: Path, settlement_ids: list[str], tag: str | None = None) -> int:
    """One Reverse per settlement id, each with its own message id."""
    tag = tag or run_tag()
    return write_frames(
        path, (reverse_request(message_id(tag, i), sid) for i, sid in enumerate(settlement_ids))
    )


def read_messages(path: Path) -> Iterator[bytes]:
    """The protobuf bodies of a frames file (or of a --responses file, which has the same format)."""
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset + 1)
        yield data[offset + 5 : offset + 5 + length]
        offset += 5 + length


def settlement_ids(responses: Path) -> list[str]:
    """The settlement ids in a --responses file of Settle answers, in the order they were answered."""
    return [pb.SettleResponse.FromString(body).settlement_id for body in read_messages(responses)]
