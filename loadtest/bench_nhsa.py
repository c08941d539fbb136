"""The national front end's cost: 2207 (outpatient settle) over HTTP beside Settle over gRPC, in the same
run, on the same `medsettle serve --workers 1` (redis-server with AOF everysec, loadtest/stack.py), with
the same 10-line bill (loadtest/synthetic.OUTPATIENT_10_LINES).

    .venv/bin/python -m loadtest.bench_nhsa [--calls 600] [--concurrency 16] [--persons 400]

Each 2207 needs its visit registered (2201) and its fee details uploaded (2204) first: that preparation
is done before the measured windows, over HTTP too, and not counted. The windows run gRPC Settle, then
HTTP 2207, then gRPC Settle again (the machine's speed drifts; the two gRPC windows show by how much),
each a closed loop of `--concurrency` calls in flight. Server CPU per call is the user + system time of
the gateway processes (the supervisor's children) over the window, from /proc, divided by the calls
answered. Plaintext both (`serve --insecure`): TLS costs the same on both paths and is measured by
bench_tls. The target: the HTTP front end adds at most 30% to Settle's server CPU per call.

Prints figures and TARGET MET / TARGET MISSED; exit status 1 when a call was not answered with success."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc

from adapters.embedded_redis import free_port
from gateway.nhsa.amounts import dumps
from gateway.protos import pb, pb_grpc
from loadtest import proc_cpu
from loadtest.stack import running_stack
from loadtest.synthetic import OUTPATIENT_10_LINES

HOSPITAL = "H50010300001"
TARGET_RATIO = 1.30
CALL = "/fsi/api/rsfComIfsService/callService"


def yuan_text(amount_fen: int) -> str:
    whole, part = divmod(amount_fen, 100)
    return f"{whole}.{part:02d}"


BILL_FEN = sum(p * q for _, p, q in OUTPATIENT_10_LINES)


class Terminal:
    def __init__(self, session: aiohttp.ClientSession, base: str, run: str) -> None:
        self.session, self.base, self.run = session, base, run
        self.sequence = itertools.count()
        self.sign_no = ""
        self.failures: dict[str, int] = {}

    def envelope(self, infno: str, data: dict[str, Any]) -> bytes:
        body = {
            "infno": infno,
            "msgid": f"{HOSPITAL}{self.run}{next(self.sequence):08d}",
            "fixmedins_code": HOSPITAL,
            "mdtrtarea_admvs": "500103",
            "opter": "bench",
            "inf_time": "2026-06-15 10:30:00",
            "sign_no": self.sign_no,
            "input": data,
        }
        return dumps(body).encode()

    async def call(self, infno: str, data: dict[str, Any]) -> dict[str, Any] | None:
        async with self.session.post(self.base + CALL, data=self.envelope(infno, data)) as response:
            answer: dict[str, Any] = json.loads(await response.read(), parse_float=str)
        if answer["infcode"] != 0:
            key = f"{infno} infcode {answer['infcode']}: {str(answer['err_msg'])[:80]}"
            self.failures[key] = self.failures.get(key, 0) + 1
            return None
        output: dict[str, Any] = answer["output"]
        return output


def visit_input(mdtrt_id: str, person: str) -> dict[str, Any]:
    return {
        "data": {
            "psn_no": person,
            "mdtrt_id": mdtrt_id,
            "medfee_sumamt": yuan_text(BILL_FEN),
            "med_type": "11",
            "psn_setlway": "01",
            "acct_used_flag": "1",
        }
    }


async def prepare(his: Terminal, people: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Registered visits with their ten details uploaded, one per 2207 to come."""

    async def one(i: int) -> dict[str, Any] | None:
        p = people[i % len(people)]
        reg = await his.call(
            "2201",
            {
                "data": {
                    "psn_no": p["person_id"],
                    "mdtrt_cert_type": "03",
                    "mdtrt_cert_no": p["card_no"],
                    "med_type": "11",
                }
            },
        )
        if reg is None:
            return None
        mdtrt_id = reg["data"]["mdtrt_id"]
        rows = [
            {
                "feedetl_sn": str(n + 1),
                "mdtrt_id": mdtrt_id,
                "psn_no": p["person_id"],
                "med_list_codg": c,
                "pric": yuan_text(price),
                "cnt": q,
                "det_item_fee_sumamt": yuan_text(price * q),
            }
            for n, (c, price, q) in enumerate(OUTPATIENT_10_LINES)
        ]
        if await his.call("2204", {"feedetail": rows}) is None:
            return None
        return visit_input(mdtrt_id, p["person_id"])

    out = []
    for start in range(0, count, 32):
        batch = await asyncio.gather(*(one(i) for i in range(start, min(count, start + 32))))
        out += [b for b in batch if b is not None]
    return out


async def window(
    calls: list[Callable[[], Awaitable[bool]]], concurrency: int, pids: list[int]
) -> tuple[int, float, float]:
    """(answered with success, seconds, server CPU seconds) of a closed loop over `calls`."""
    queue = iter(calls)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for call in queue:
            answered = await call()  # awaited first: `ok += await ...` would read ok before the wait
            ok += int(answered)

    before = proc_cpu.snapshot(pids)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = sum(proc_cpu.used(before, proc_cpu.snapshot(pids)).values())
    return ok, elapsed, cpu


async def measure(
    args: argparse.Namespace, grpc_port: int, nhsa_port: int, people: list[dict[str, Any]], pids: list[int]
) -> int:
    run = f"{int(time.time()) % 10**6:06d}"
    bill = pb.Bill(
        visit_type=pb.VISIT_TYPE_OUTPATIENT,
        lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in OUTPATIENT_10_LINES],
    )
    grpc_failures: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        stub = pb_grpc.SettlementServiceStub(channel)
        his = Terminal(session, f"http://127.0.0.1:{nhsa_port}", run)
        signed = await his.call("9001", {"signIn": {"opter_no": "bench"}})
        assert signed is not None, his.failures
        his.sign_no = signed["signinoutb"]["sign_no"]
        half = len(people) // 2  # gRPC and HTTP settle for different persons: equal plan-year sizes
        visits = await prepare(his, people[half:], args.calls + args.warmup)
        sequence = itertools.count()

        def grpc_call() -> Callable[[], Awaitable[bool]]:
            async def go() -> bool:
                i = next(sequence)
                p = people[i % half]
                request = pb.SettleRequest(
                    envelope=pb.Envelope(
                        institution_code=HOSPITAL, terminal_id="B", message_id=f"G{run}{i:010d}"
                    ),
                    person=pb.PersonRef(card_no=p["card_no"]),
                    bill=bill,
                )
                try:
                    await stub.Settle(request, timeout=10)
                    return True
                except grpc.aio.AioRpcError as exc:
                    grpc_failures[exc.code().name] = grpc_failures.get(exc.code().name, 0) + 1
                    return False

            return go

        def http_call(data: dict[str, Any]) -> Callable[[], Awaitable[bool]]:
            async def go() -> bool:
                return await his.call("2207", data) is not None

            return go

        warm = [http_call(v) for v in visits[: args.warmup]]
        await window([grpc_call() for _ in range(args.warmup)] + warm, args.concurrency, pids)
        rows = []
        for name, calls in (
            ("Settle over gRPC", [grpc_call() for _ in range(args.calls)]),
            ("2207 over HTTP (national envelope)", [http_call(v) for v in visits[args.warmup :]]),
            ("Settle over gRPC, again", [grpc_call() for _ in range(args.calls)]),
        ):
            ok, elapsed, cpu = await window(calls, args.concurrency, pids)
            rows.append((name, ok, elapsed, cpu))
    print(
        f"bench_nhsa: {platform.machine()}, {args.calls} calls per window, {args.concurrency} in flight,"
        " 1 gateway process, plaintext, 10-line outpatient bill"
    )
    print(f"{'call':<38} {'calls':>6} {'calls/s':>8} {'server CPU/call':>16}")
    per_call = []
    for name, ok, elapsed, cpu in rows:
        us = cpu / ok * 1e6 if ok else float("nan")
        per_call.append(us)
        print(f"{name:<38} {ok:>6} {ok / elapsed:>8.0f} {us:>13.0f} µs")
    baseline = (per_call[0] + per_call[2]) / 2
    ratio = per_call[1] / baseline
    verdict = "TARGET MET" if ratio <= TARGET_RATIO else "TARGET MISSED"
    print(
        f"2207 over HTTP / Settle over gRPC (mean of both windows): {ratio:.2f}"
        f" (target <= {TARGET_RATIO:.2f}):"
        f" {verdict}; the gRPC windows differ by {abs(per_call[2] - per_call[0]) / baseline:.0%}"
    )
    for what, failures in (("gRPC", grpc_failures), ("HTTP", his.failures)):
        for key, count in failures.items():
            print(f"  {what} failure: {key} x{count}")
    return 1 if grpc_failures or his.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600, help="calls per measured window")
    parser.add_argument("--warmup", type=int, default=50, help="calls of each kind before the windows")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--persons", type=int, default=400)
    args = parser.parse_args(argv)
    nhsa_port = free_port()
    extra = ["--nhsa-listen", f"127.0.0.1:{nhsa_port}"]
    with running_stack(args.persons, 1, insecure=True, extra_args=extra) as stack:
        people = json.loads((stack.tmp / "persons.json").read_text())
        pids = proc_cpu.children(stack.server.pid)
        gateway_pids = [p for p in pids if "gateway-process" in proc_cmdline(p)]
        return asyncio.run(measure(args, stack.port, nhsa_port, people, gateway_pids))


def proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
