"""Visits and fee details held in Redis, in the person's slot, with limits and expiry; one settlement in
flight per visit; cancellation rules; the pharmacy transactions (2101-2103) on the same service."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from adapters import redis_keys as keys
from adapters.embedded_redis import EmbeddedRedis
from adapters.nhsa_store import visit_key
from gateway.nhsa.amounts import dumps, fen, loads
from gateway.nhsa.limits import NationalLimits
from gateway.server import Gateway

from ..conftest import ON_CLUSTER
from . import national_fields as check
from .conftest import CARD, HOSPITAL_2, LOST_CARD, PERSON, PHARMACY, National, msgid, start

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def small_gateway(redis_server: EmbeddedRedis, tmp_path: Path) -> AsyncIterator[Gateway]:
    limits = dataclasses.replace(NationalLimits(), fee_details_per_visit_max=3, fee_details_per_upload_max=2)
    gw = await start(redis_server, tmp_path, nhsa_limits=limits)
    yield gw
    await gw.stop()


@pytest_asyncio.fixture
async def small(small_gateway: Gateway) -> AsyncIterator[National]:
    async with aiohttp.ClientSession() as session:
        client = National(session, f"http://127.0.0.1:{small_gateway.nhsa.port}")
        await client.sign_in()
        yield client


async def test_details_live_in_the_persons_slot_and_expire(his: National, national_gateway: Gateway) -> None:
    mdtrt_id = await his.register()
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    key = visit_key(mdtrt_id)
    assert key.startswith(keys.tag(keys.partition_of(PERSON)) + ":"), "the person's hash tag: one slot"
    client = national_gateway.nhsa.t.store.client
    ttl_ms = await client.pttl(key)
    days = national_gateway.config.nhsa_limits.visit_retention_days
    assert days * 86_400_000 - 60_000 < ttl_ms <= days * 86_400_000


async def test_limits_on_details(small: National) -> None:
    mdtrt_id = await small.register()
    err = await small.refused(
        "2204",
        {
            "feedetail": [
                {
                    "feedetl_sn": str(i),
                    "mdtrt_id": mdtrt_id,
                    "med_list_codg": "T000001",
                    "pric": "1.00",
                    "cnt": 1,
                }
                for i in range(3)
            ]
        },
    )
    assert "input.feedetail: at most 2 details per message (FEE_DETAIL_REJECTED 436)" in err
    await small.upload(mdtrt_id, [("T000001", "1.00", 1), ("T000006", "2.00", 1)])
    await small.upload(mdtrt_id, [("T000004", "3.00", 1)], first_sn=3)
    err = await small.refused(
        "2204",
        {
            "feedetail": [
                {
                    "feedetl_sn": "9",
                    "mdtrt_id": mdtrt_id,
                    "med_list_codg": "T000001",
                    "pric": "1.00",
                    "cnt": 1,
                }
            ]
        },
    )
    assert "a visit holds at most 3 details (3 held)" in err
    err = await small.refused(
        "2204",
        {
            "feedetail": [
                {
                    "feedetl_sn": "1",
                    "mdtrt_id": mdtrt_id,
                    "med_list_codg": "T000001",
                    "pric": "1.00",
                    "cnt": 1,
                }
            ]
        },
    )
    assert "1 is already uploaded; cancel it first" in err
    dup = [
        {"feedetl_sn": "7", "mdtrt_id": mdtrt_id, "med_list_codg": "T000001", "pric": "1.00", "cnt": 1}
    ] * 2
    assert "7 appears twice" in await small.refused("2204", {"feedetail": dup})
    # 2205 "0000": every open detail off the visit; the limit counts what is held
    assert (
        await small.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "feedetl_sn": "0000"}}) == {}
    )
    await small.upload(mdtrt_id, [("T000001", "1.00", 1)], first_sn=20)


async def test_settled_details_and_visits_cannot_be_taken_back(his: National) -> None:
    mdtrt_id = await his.register()
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    err = await his.refused("2206", his.settle_data(mdtrt_id, "11.00"))
    assert (
        "medfee_sumamt: 11.00 is not the total of the 1 open fee details, 10.00 (AMOUNT_MISMATCH 438)" in err
    )
    settled = await his.ok("2207", his.settle_data(mdtrt_id, "10.00"))
    err = await his.refused("2205", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "feedetl_sn": "1"}})
    assert f"1 is settled by {settled['setlinfo']['setl_id']}: cancel that settlement first" in err
    err = await his.refused("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PERSON}})
    assert "cannot cancel" in err and "VISIT_CLOSED 435" in err
    cancelled = await his.ok(
        "2208", {"data": {"psn_no": PERSON, "mdtrt_id": mdtrt_id, "setl_id": settled["setlinfo"]["setl_id"]}}
    )
    assert fen(cancelled["setlinfo"]["medfee_sumamt"]) == -1000
    # once cancelled, the details are open again: taken off, and the visit cancelled
    assert await his.ok("2205", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PERSON, "feedetl_sn": "1"}}) == {}
    assert await his.ok("2202", {"data": {"mdtrt_id": mdtrt_id, "psn_no": PERSON}}) == {}
    err = await his.refused(
        "2204",
        {
            "feedetail": [
                {
                    "feedetl_sn": "2",
                    "mdtrt_id": mdtrt_id,
                    "med_list_codg": "T000001",
                    "pric": "1.00",
                    "cnt": 1,
                }
            ]
        },
    )
    assert "the visit is cancelled (VISIT_CLOSED 435)" in err


async def test_one_settlement_in_flight_per_visit(his: National, national_gateway: Gateway) -> None:
    """A 2207 whose answer was lost (-1) holds the visit: another msgid is refused until the HIS resends
    the first one or reverses it with 2601."""
    mdtrt_id = await his.register()
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    lost = msgid()
    store = national_gateway.nhsa.t.store
    assert await store.claim_settlement(mdtrt_id, PERSON, his.institution, lost, ["1"]) == ["ok"]
    err = await his.refused("2207", his.settle_data(mdtrt_id, "10.00"))
    assert f"message {lost} is settling this visit" in err and "SETTLEMENT_IN_FLIGHT 437" in err
    # 2601 of the lost message: nothing was settled under it; it is void and the visit is free
    assert await his.ok("2601", {"data": {"psn_no": PERSON, "omsgid": lost, "oinfno": "2207"}}) == {}
    void = await his.refused("2207", his.settle_data(mdtrt_id, "10.00"), lost)
    assert "MESSAGE_ID_VOID 406" in void
    assert check.settlement(await his.ok("2207", his.settle_data(mdtrt_id, "10.00")))["medfee_sumamt"] == 1000


async def test_another_institutions_visit_is_not_found(his: National, national_gateway: Gateway) -> None:
    mdtrt_id = await his.register()
    async with aiohttp.ClientSession() as session:
        other = National(session, his.base, HOSPITAL_2)
        await other.sign_in()
        err = await other.refused("2206", other.settle_data(mdtrt_id, "1.00"))
        assert "VISIT_NOT_FOUND 434" in err
    assert "mdtrt_cert_no: CARD_LOST: card is lost (CARD_LOST 102)" in await his.refused(
        "2201", {"data": {"psn_no": "PSN500000000010", "mdtrt_cert_type": "03", "mdtrt_cert_no": LOST_CARD}}
    )


async def test_pharmacy_sale_presettle_settle_cancel(his: National) -> None:
    async with aiohttp.ClientSession() as session:
        shop = National(session, his.base, PHARMACY)
        await shop.sign_in()
        data = {
            "data": {
                "psn_no": PERSON,
                "mdtrt_cert_type": "03",
                "mdtrt_cert_no": CARD,
                "med_type": "41",
                "medfee_sumamt": "25.00",
                "acct_used_flag": "1",
                "begntime": "2026-06-15 10:00:00",
            },
            "drugdetail": [
                {
                    "feedetl_sn": "1",
                    "med_list_codg": "D000001",
                    "pric": "12.50",
                    "cnt": 2,
                    "det_item_fee_sumamt": "25.00",
                }
            ],
        }
        pre = check.settlement(await shop.ok("2101", data))
        sale = await shop.ok("2102", data)
        assert check.settlement(sale) == pre and pre["acct_pay"] > 0
        setl_id = sale["setlinfo"]["setl_id"]
        cancel = await shop.ok("2103", {"data": {"psn_no": PERSON, "setl_id": setl_id}})
        assert check.settlement(cancel)["acct_pay"] == -pre["acct_pay"]
        assert "SETTLEMENT_NOT_FOUND 402" in await shop.refused(
            "2103", {"data": {"psn_no": "PSN500000000002", "setl_id": setl_id}}
        )


@pytest.mark.parametrize("inline", [True, False])
async def test_a_settlements_finish_and_kept_answer(
    his: National, national_gateway: Gateway, inline: bool
) -> None:
    """One node: the finish and the kept answer in one script; a cluster: two commands. Either way the
    details are settled and a resend gets the answer byte for byte."""
    if inline and ON_CLUSTER:
        pytest.skip("one script over the visit's and the answer's slots: the one-node layout")
    national_gateway.nhsa.t.store.answers_inline = inline
    mdtrt_id = await his.register()
    await his.upload(mdtrt_id, [("T000001", "10.00", 1)])
    envelope = his.envelope("2207", his.settle_data(mdtrt_id, "10.00"))
    body = dumps(envelope).encode()
    first, again = await his.raw(body), await his.raw(body)
    assert first == again and loads(first[1])["infcode"] == 0
    visit = await national_gateway.nhsa.t.store.visit(mdtrt_id)
    assert visit is not None and visit.settled == {"1": loads(first[1])["output"]["setlinfo"]["setl_id"]}
    assert visit.pending is None and visit.messages == {envelope["msgid"]: visit.settled["1"]}
