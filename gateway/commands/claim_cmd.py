"""`medsettle claim FILE`: submit one claim after the fact (手工报销) to a running gateway's ClaimService,
as agency staff (the bureau certificate of --certs, or --tls-cert/--tls-key/--tls-ca; --insecure for a
plaintext gateway), and print the split: what the funds owe the person. The file is JSON
(examples/claims/); it is checked before anything is sent, errors naming the file and the field.
Exit 0: the claim is booked (or was already: the same answer); 1: the gateway refused it; 2: a bad file."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

CASES = {"non_designated": 1, "emergency": 2, "out_of_city": 3}  # claims_pb.ClaimCase values
VISITS = {"outpatient": 1, "inpatient": 2, "pharmacy": 3, "special": 4}  # pb.VisitType values


def register(sub: Any) -> None:
    from gateway import cli

    p = sub.add_parser(
        "claim", help="submit a claim after the fact (手工报销) from a JSON file; print its split"
    )
    p.add_argument("file", help="the claim (JSON; see examples/claims/)")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--operator", help="the agency clerk (recorded; default: the login name)")
    p.add_argument("--timeout-ms", type=int, default=5000)
    cli.client_tls_flags(p)
    p.add_argument("--tls-cert", help="a bureau certificate instead of the one in --certs")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca", help="the CA of the gateway's certificate")
    p.set_defaults(func=lambda a: asyncio.run(claim_cmd(a)))


def request_of(path: Path, operator: str) -> Any:
    """The ClaimRequest a claim file describes; DataError naming the file and field when it is bad."""
    from gateway.protos import claims_pb, pb
    from rules_cache.reader import DataError, Reader

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path.name, "", f"not valid JSON: {exc}") from None
    r = Reader(data, path.name)
    person = r.table("person")
    ref = pb.PersonRef(card_no=person.text("card_no")) if person.has("card_no") else None
    if ref is None:
        ref = pb.PersonRef(id_number=person.text("id_number"))
    person.done()
    case, visit = r.text("case"), r.text("visit_type")
    if case not in CASES:
        raise r.error(f"{case!r} is not one of: {', '.join(CASES)}", "case")
    if visit not in VISITS:
        raise r.error(f"{visit!r} is not one of: {', '.join(VISITS)}", "visit_type")
    request = claims_pb.ClaimRequest(
        claim_no=r.text("claim_no"), person=ref, claim_case=CASES[case], visit_type=VISITS[visit],
        institution_name=r.text("institution_name") if r.has("institution_name") else "",
        institution_level=r.integer("institution_level", maximum=8),
        total_fen=r.integer("total_fen", minimum=1),
        full_selfpay_fen=r.integer("full_selfpay_fen", 0), over_limit_fen=r.integer("over_limit_fen", 0),
        first_selfpay_fen=r.integer("first_selfpay_fen", 0), operator_id=operator,
    )  # fmt: skip
    for name in ("admission_date", "discharge_date", "visit_date"):
        if r.has(name):
            setattr(request, name, r.day(name).isoformat())
    r.seen.add("description")
    r.done()
    return request


async def claim_cmd(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from gateway import cli
    from gateway.edge.certs import ROLE_BUREAU
    from gateway.edge.tls import channel
    from gateway.protos import claims_grpc
    from rules_cache.reader import DataError

    try:
        request = request_of(Path(args.file), cli.operator_of(args)[:40])  # operator_id: at most 40
    except (DataError, OSError) as exc:
        print(f"medsettle claim: {exc}", file=sys.stderr)
        return 2
    try:
        async with channel(args.target, cli.client_tls(args, ROLE_BUREAU)) as ch:
            reply = await claims_grpc.ClaimServiceStub(ch).SubmitClaim(
                request, timeout=args.timeout_ms / 1000
            )
    except grpc.aio.AioRpcError as exc:
        print(f"medsettle claim: {exc.code().name}: {exc.details()}", file=sys.stderr)
        status = rpc_status.from_call(exc)
        for detail in status.details if status is not None else ():
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                for v in bad.field_violations:
                    print(f"  {v.field}: {v.description}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            json_format.MessageToDict(reply, preserving_proto_field_name=True), ensure_ascii=False, indent=2
        )
    )
    return 0
