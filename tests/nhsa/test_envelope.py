"""Envelope semantics over real HTTP: malformed bodies and fields answered -2 naming the field (HTTP 200,
never a 500), msgid as the idempotency key (a resend gets the original bytes, a reuse is refused), the
sign-in, the REST paths, -1 when the outcome is unknown (Redis gone, a fault)."""

from __future__ import annotations

import json

import pytest

from adapters.embedded_redis import EmbeddedRedis
from gateway.nhsa.amounts import dumps
from gateway.nhsa.app import HANDLED
from gateway.server import Gateway

from .conftest import CARD, HOSPITAL, PERSON, National, msgid

pytestmark = pytest.mark.asyncio


async def answer_of(his: National, body: bytes, path: str = "/fsi/api/rsfComIfsService/callService") -> dict:
    status, raw = await his.raw(body, path)
    assert status in (200, 404), raw  # never a 500
    answer: dict = json.loads(raw)
    assert answer["infcode"] == -2, answer
    return answer


async def test_malformed_bodies_are_refused_naming_what_is_wrong(
    his: National, national_gateway: Gateway
) -> None:
    cases = {
        b"{not json": "body: not JSON",
        b"[1, 2]": "body: a JSON object",
        b'{"infno": "9001"}': "msgid: required",
        dumps({"infno": "9001", "msgid": msgid()}).encode(): "fixmedins_code: required",
        dumps(
            {"infno": "9999", "msgid": msgid(), "fixmedins_code": HOSPITAL}
        ).encode(): "infno: 9999 is not served",
        dumps({"infno": "1101", "msgid": "x" * 41, "fixmedins_code": HOSPITAL}).encode(): "msgid: at most 40",
        dumps(
            {"infno": "1101", "msgid": msgid(), "fixmedins_code": HOSPITAL, "input": [1]}
        ).encode(): "input: a JSON",
        dumps(
            {"infno": "1101", "msgid": msgid(), "fixmedins_code": HOSPITAL, "opter": {"a": 1}}
        ).encode(): "opter:",
        dumps({"infno": {"x": 1}, "msgid": msgid(), "fixmedins_code": HOSPITAL}).encode(): "infno: text",
        b'{"infno": "1101", "msgid": "M1", "fixmedins_code": "H1", "input": {"a": NaN}}': "body: not JSON",
    }
    for body, expected in cases.items():
        answer = await answer_of(his, body)
        assert expected in answer["err_msg"], (body, answer["err_msg"])
    # what a sender puts in infno never becomes a metric label: the labels stay the served transactions
    served = {*national_gateway.nhsa.t.handlers, "unknown"}
    assert {labels[0] for labels in HANDLED._metrics} <= served


async def test_a_body_beyond_the_limit_is_refused(his: National, national_gateway: Gateway) -> None:
    limit = national_gateway.config.nhsa_limits.body_bytes_max
    envelope = his.envelope("1101", {"data": {"pad": "x" * limit}})
    answer = await answer_of(his, dumps(envelope).encode())
    assert f"body: more than {limit} bytes" in answer["err_msg"]


async def test_malformed_business_fields_name_the_national_field(his: National) -> None:
    mdtrt_id = await his.register()
    row = {
        "feedetl_sn": "1",
        "mdtrt_id": mdtrt_id,
        "psn_no": PERSON,
        "med_list_codg": "T000001",
        "pric": "10.00",
        "cnt": 1,
        "det_item_fee_sumamt": "10.00",
    }
    cases = {
        "input.feedetail[0].pric: yuan with at most two decimals": {**row, "pric": "10.005"},
        "input.feedetail[0].cnt: a whole number": {**row, "cnt": "1.5"},
        "input.feedetail[0].det_item_fee_sumamt: 11.00 is not pric x cnt = 10.00 (AMOUNT_MISMATCH 438)": {
            **row,
            "det_item_fee_sumamt": 11,
        },
        "input.feedetail[0].med_list_codg: required": {**row, "med_list_codg": ""},
        "input.feedetail[0].cnt: whole units between 1": {**row, "cnt": 0},
        "input.feedetail[0].mdtrt_id: no visit": {**row, "mdtrt_id": "M001-260615-0000000000000000"},
    }
    for expected, detail in cases.items():
        err = await his.refused("2204", {"feedetail": [detail]})
        assert expected in err, err
    # the engine's rejection, named by the detail's serial number
    err = await his.refused("2204", {"feedetail": [{**row, "med_list_codg": "X999999"}]})
    assert (err.startswith("feedetail[1]: ") and "ITEM_UNKNOWN" in err) or "X999999" in err, err
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    err = await his.refused("2206", his.settle_data(mdtrt_id, "abc"))
    assert "input.data.medfee_sumamt: yuan with at most two decimals" in err
    err = await his.refused("2206", his.settle_data(mdtrt_id, "1.00", psn_setlway="02"))
    assert "psn_setlway: 02" in err and "TRANSACTION_UNSUPPORTED 439" in err
    err = await his.refused("1101", {"data": {"mdtrt_cert_type": "01", "mdtrt_cert_no": "E1"}})
    assert "mdtrt_cert_type: 01 (e-voucher) is not served" in err


async def test_a_resend_gets_the_original_answer_and_a_reuse_is_refused(
    his: National, national_gateway: Gateway
) -> None:
    data = {
        "data": {
            "psn_no": PERSON,
            "begntime": "2026-06-15 09:00:00",
            "mdtrt_cert_type": "03",
            "mdtrt_cert_no": CARD,
            "med_type": "11",
        }
    }
    message_id = msgid()
    body = dumps(his.envelope("2201", data, message_id)).encode()
    first = await his.raw(body)
    resent = await his.raw(
        dumps({**his.envelope("2201", data, message_id), "inf_time": "2026-06-15 10:31:00"}).encode()
    )
    assert first == resent, "the original answer, byte for byte: one visit, not two"
    client = national_gateway.nhsa.t.store.client  # scan_iter: every master of a cluster, not one
    visits = [k async for k in client.scan_iter(match="ms:*:nhsa:visit:*")]
    assert len(visits) == 1
    other = {"data": {**data["data"], "begntime": "2026-06-15 09:05:00"}}
    err = await his.refused("2201", other, message_id)
    assert "msgid:" in err and "MESSAGE_ID_REUSED 403" in err
    # a rejection is not kept: the same msgid, corrected, is answered
    bad_id = msgid()
    assert "mdtrt_cert_no" in await his.refused(
        "2201", {"data": {**data["data"], "mdtrt_cert_no": "NOPE"}}, bad_id
    )
    assert (await his.call("2201", data, bad_id))["infcode"] == 0


async def test_a_current_sign_in_is_required(his: National) -> None:
    signed = his.sign_no
    his.sign_no = ""
    assert "sign_no: required: sign in with 9001 first (SIGN_NO_INVALID 433)" in await his.refused(
        "1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}
    )
    his.sign_no = "20260615000000000000"
    assert "SIGN_NO_INVALID 433" in await his.refused(
        "1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}
    )
    his.sign_no = signed
    assert await his.ok("9002", {"signOut": {"sign_no": signed, "opter_no": "1022"}}) == {
        "signoutoutb": {"sign_time": "2026-06-15 10:30:00"}
    }
    assert "SIGN_NO_INVALID 433" in await his.refused(
        "1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}
    )


async def test_rest_paths_name_their_transaction(his: National) -> None:
    sign_in = his.envelope("9001", {"signIn": {"opter_no": "7"}})
    answer = await his.send(sign_in, "/fsi/api/signInSignOutService/signIn")
    assert answer["infcode"] == 0 and answer["output"]["signinoutb"]["sign_no"]
    info = await his.send(
        his.envelope("", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}),
        "/fsi/api/fsiPsnInfoService/queryPsnInfo",
    )
    assert info["infcode"] == 0 and info["output"]["baseinfo"]["psn_no"] == PERSON
    generic = await his.send(
        his.envelope("1101", {"data": {"mdtrt_cert_type": "03", "mdtrt_cert_no": CARD}}),
        "/fsi/api/trans/1101",
    )
    assert generic["infcode"] == 0
    wrong = await answer_of(
        his, dumps(his.envelope("2207", {})).encode(), "/fsi/api/signInSignOutService/signIn"
    )
    assert "infno: 2207 sent to the path of transaction 9001" in wrong["err_msg"]
    status, raw = await his.raw(b"{}", "/fsi/api/nothing/here")
    assert status == 404 and json.loads(raw)["infcode"] == -2


@pytest.mark.single_node
async def test_redis_gone_is_an_unknown_outcome(his: National, redis_server: EmbeddedRedis) -> None:
    mdtrt_id = await his.register()
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    redis_server.stop()
    answer = await his.call("2207", his.settle_data(mdtrt_id, "10.00"))
    assert (
        answer["infcode"] == -1
        and "outcome unknown: query with 5203 or reverse with 2601" in answer["err_msg"]
    )


async def test_a_fault_is_an_unknown_outcome_never_a_500(his: National, national_gateway: Gateway) -> None:
    async def broken(request: object) -> object:
        raise RuntimeError("a bug")

    national_gateway.nhsa.t.handlers["5203"] = broken
    status, raw = await his.raw(
        dumps(his.envelope("5203", {"data": {"setl_id": "S1", "psn_no": PERSON}})).encode()
    )
    assert status == 200 and json.loads(raw)["infcode"] == -1


async def test_a_resend_whose_kept_answer_was_lost_settles_nothing_twice(
    his: National, national_gateway: Gateway
) -> None:
    """The settlement committed, the answer was not kept (Redis failed between them): a resend of the
    2207 is answered with the same settlement, not a second one, nor a refusal."""
    mdtrt_id = await his.register()
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    message_id = msgid()
    first = await his.call("2207", his.settle_data(mdtrt_id, "10.00"), message_id)
    assert first["infcode"] == 0
    await national_gateway.nhsa.t.store.drop_claim(his.institution, message_id)  # the kept answer, lost
    again = await his.call("2207", his.settle_data(mdtrt_id, "10.00"), message_id)
    assert again["infcode"] == 0, again["err_msg"]
    assert again["output"] == first["output"], "the same settlement, the same amounts"
