"""A hostile run against a real gateway over mTLS: undecodable bytes and mutated valid messages on every
RPC of every service, floods of calls and of idle connections, requests whose body never comes, garbage
instead of a TLS handshake, and certificates used for the wrong institution or role.

    .venv/bin/python -m loadtest.hostile [--minutes 1 | --seconds 10] [--concurrency 6]

It starts its own stack (loadtest/stack.py: redis-server, the demo data, `medsettle serve` with the
default edge limits), prints the answers by status code, the number of UNKNOWN and INTERNAL answers
(must be 0), and proves that nothing was written: Redis's key count and a digest of every key and value
(person states, accumulators, settlements, streams, static data) before and after. Exit status 0 only when
both hold. Traffic goes to 127.0.0.1 only, bounded in time."""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import random
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
import redis
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from gateway.edge import certs
from gateway.edge.tls import ClientTls, channel
from gateway.protos import claims_pb, pb
from loadtest.stack import Stack, running_stack
from loadtest.synthetic import OUTPATIENT_10_LINES

HOSPITAL, OTHER, PROBE = "H50010300001", "H50010300002", certs.ROLE_PROBE
CARD = "Y53736293"


def raw(value: object) -> bytes:
    """A reply of a client without decode_responses, which is bytes (redis-py types replies as bytes or
    str, for clients that decode)."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes from Redis, got {type(value).__name__}")
    return value


def keyspace_digest(url: str) -> tuple[int, str]:
    """DBSIZE and a digest of every key with its type and content: equal before and after = nothing
    written (reads change nothing in Redis)."""
    r = redis.Redis.from_url(url)
    digest = hashlib.sha256()
    for key in sorted(raw(k) for k in r.scan_iter(count=1000)):
        kind = raw(r.type(key))
        digest.update(key + b"\x00" + kind + b"\x00")
        if kind == b"string":
            digest.update(raw(r.get(key) or b""))
        elif kind == b"hash":
            for field, value in sorted((raw(f), raw(v)) for f, v in r.hgetall(key).items()):
                digest.update(field + b"=" + value + b";")
        elif kind == b"stream":
            for entry_id, fields in r.xrange(key) or []:
                entry = sorted((raw(f), raw(v)) for f, v in (fields or {}).items())
                digest.update(raw(entry_id) + repr(entry).encode())
        elif kind == b"set":
            digest.update(b",".join(sorted(raw(m) for m in r.smembers(key))))
        elif kind == b"zset":
            digest.update(repr(r.zrange(key, 0, -1, withscores=True)).encode())
        elif kind == b"list":
            digest.update(b",".join(raw(item) for item in r.lrange(key, 0, -1)))
    size = int(r.dbsize())
    r.close()
    return size, digest.hexdigest()


def rpcs() -> list[tuple[str, str, Any, str]]:
    out = []
    for module in (pb, claims_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [(service.full_name, m.name, m.input_type, "unary") for m in service.methods]
    for module in (health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kind = ("bidi" if m.client_streaming else "stream") if m.server_streaming else "unary"
                out.append((service.full_name, m.name, m.input_type, kind))
    return out


def valid_messages() -> dict[str, bytes]:
    """One valid request per RPC, from HOSPITAL: the seeds for mutation."""
    env = pb.Envelope(institution_code=HOSPITAL, terminal_id="T1", operator_id="op", message_id="HOSTILE0001")
    person = pb.PersonRef(card_no=CARD)
    bill = pb.Bill(
        visit_type=pb.VISIT_TYPE_OUTPATIENT,
        lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in OUTPATIENT_10_LINES],
    )
    messages: dict[str, Any] = {
        "QueryEligibility": pb.QueryEligibilityRequest(envelope=env, person=person),
        "PreSettle": pb.SettleRequest(envelope=env, person=person, bill=bill),
        "Settle": pb.SettleRequest(envelope=env, person=person, bill=bill),
        "Reverse": pb.ReverseRequest(envelope=env, settlement_id="S001-260615-0000000000000000"),
        "Refund": pb.RefundRequest(
            envelope=env,
            settlement_id="S001-260615-0000000000000000",
            lines=[pb.RefundLine(line_no=1, quantity=1)],
        ),
        "GetSettlement": pb.GetSettlementRequest(envelope=env, original_message_id="X1", person=person),
        "Reconcile": pb.ReconcileRequest(envelope=env, date_from="2026-06-01", date_to="2026-06-30"),
        "GetStatement": pb.StatementRequest(envelope=env, month="2026-06"),
        "GetClearing": pb.ClearingRequest(month="2026-06"),
        "SubmitClaim": claims_pb.ClaimRequest(
            claim_no="HOSTILE-C1",
            person=person,
            visit_type=pb.VISIT_TYPE_OUTPATIENT,
            visit_date="2026-06-15",
            total_fen=10_000,
        ),
        "ReverseClaim": claims_pb.ReverseClaimRequest(
            reversal_no="HOSTILE-R1", claim_no="HOSTILE-C1", person=person
        ),
        "Ping": pb.PingRequest(),
        "Check": health_pb2.HealthCheckRequest(service=""),
        "List": health_pb2.HealthListRequest(),
        "Watch": health_pb2.HealthCheckRequest(service=""),
        "ServerReflectionInfo": reflection_pb2.ServerReflectionRequest(list_services=""),
    }
    return {name: m.SerializeToString() for name, m in messages.items()}


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a rich status (grpc-status-details-bin), or what the answer lacked."""
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
            return "no ErrorInfo"
    return f"no status details: {exc.details()}"


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data or b"\x00")
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        i = rng.randrange(len(out))
        if op < 0.5:
            out[i] = rng.randrange(256)
        elif op < 0.75:
            out.insert(i, rng.randrange(256))
        elif len(out) > 1:
            del out[i]
    return bytes(out)


class Hostile:
    def __init__(self, stack: Stack, seconds: float, concurrency: int, seed: int) -> None:
        self.stack = stack
        self.target = f"127.0.0.1:{stack.port}"
        self.deadline = time.monotonic() + seconds
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.codes: collections.Counter[str] = collections.Counter()
        self.other: collections.Counter[str] = collections.Counter()
        self.unavailable: collections.Counter[str] = collections.Counter()
        self.rpcs = rpcs()
        self.valid = valid_messages()
        assert stack.certs is not None
        self.certs = stack.certs

    def tls(self, name: str) -> ClientTls:
        return ClientTls.for_institution(self.certs, name)

    async def call(self, ch: grpc.aio.Channel, service: str, method: str, kind: str, body: bytes) -> None:
        path = f"/{service}/{method}"
        try:
            if kind == "unary":
                await ch.unary_unary(path)(body, timeout=3)
            elif kind == "stream":  # health Watch: the first answer is enough
                call = ch.unary_stream(path)(body, timeout=3)
                await call.read()
                call.cancel()
            else:
                call = ch.stream_stream(path)(iter([body]), timeout=3)
                await call.read()
                call.cancel()
            self.codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            self.codes[exc.code().name] += 1
            if exc.code() is grpc.StatusCode.UNAVAILABLE:  # why: a fault (a bug) hides behind this code
                self.unavailable[reason_of(exc)] += 1
        except asyncio.CancelledError:
            raise

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    async def undecodable(self) -> None:
        """Bytes protobuf cannot parse, and mutated valid messages, on every RPC: from a terminal (whose
        envelope, if it decodes, is checked against its certificate) and from a probe (which may settle
        nothing). Writes are impossible: the hospital's mutations go to read-only RPCs only."""
        terminal, probe = channel(self.target, self.tls(HOSPITAL)), channel(self.target, self.tls(PROBE))
        read_only = {
            "QueryEligibility",
            "PreSettle",
            "GetSettlement",
            "Reconcile",
            "GetStatement",
            "GetClearing",
            "Ping",
        }
        async with terminal, probe:
            while self.running():
                service, method, _, kind = self.rng.choice(self.rpcs)
                choice = self.rng.random()
                if choice < 0.3:
                    body = self.rng.choice([b"\x08", b"\x0a\x01\xff", b"\xff" * 7, self.rng.randbytes(40)])
                else:
                    body = mutate(self.rng, self.valid[method])
                ch = terminal if method in read_only or service.startswith("grpc.") else probe
                await self.call(ch, service, method, kind, body)

    async def wrong_institution(self) -> None:
        """A certificate of one hospital with the envelope of another, and a probe's on every RPC."""
        other, probe = channel(self.target, self.tls(OTHER)), channel(self.target, self.tls(PROBE))
        async with other, probe:
            while self.running():
                methods = ["QueryEligibility", "PreSettle", "Settle", "Reverse", "GetStatement"]
                method = self.rng.choice(methods)
                service = "LedgerService" if method == "GetStatement" else "SettlementService"
                service = f"medsettle.v1.{service}"
                await self.call(self.rng.choice([other, probe]), service, method, "unary", self.valid[method])

    async def flood(self) -> None:
        """Bursts of concurrent read-only calls from one institution: the rate limit answers, with a
        retry delay, and the gateway keeps serving."""
        service, body = "medsettle.v1.SettlementService", self.valid["PreSettle"]
        async with channel(self.target, self.tls(HOSPITAL)) as ch:
            while self.running():
                await asyncio.gather(*(self.call(ch, service, "PreSettle", "unary", body) for _ in range(64)))
                await asyncio.sleep(0.05)

    def raw(self, action: Callable[[], str]) -> str:
        try:
            return action()
        except OSError as exc:
            return type(exc).__name__

    def idle_connections(self) -> str:
        socks = [socket.create_connection(("127.0.0.1", self.stack.port), timeout=2) for _ in range(200)]
        time.sleep(0.2)
        for s in socks:
            s.close()
        return "idle-200"

    def garbage_handshake(self) -> str:
        with socket.create_connection(("127.0.0.1", self.stack.port), timeout=2) as s:
            s.sendall(self.rng.randbytes(300))
            s.settimeout(2)
            try:
                s.recv(100)
            except TimeoutError:
                return "garbage-open"
        return "garbage-closed"

    def slow_body(self) -> str:
        import h2.config
        import h2.connection

        layout = certs.Layout(self.certs)
        context = ssl.create_default_context(cafile=str(layout.ca_cert))
        context.load_cert_chain(str(layout.client_cert(HOSPITAL)), str(layout.client_key(HOSPITAL)))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", self.stack.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(1, [
                (":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
                (":path", "/medsettle.v1.SettlementService/Settle"), ("content-type", "application/grpc"),
                ("te", "trailers"),
            ])  # fmt: skip
            tls.sendall(conn.data_to_send())
            tls.settimeout(5)
            started = time.monotonic()
            while time.monotonic() - started < 5:
                data = tls.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if type(event).__name__ in ("TrailersReceived", "StreamReset", "ResponseReceived"):
                        headers = dict(getattr(event, "headers", None) or [])
                        status = headers.get(b"grpc-status") or headers.get("grpc-status")
                        if status is not None or type(event).__name__ == "StreamReset":
                            return f"slow-body-cut-{status!r}"
                tls.sendall(conn.data_to_send())
        return "slow-body-held"

    async def transport(self) -> None:
        """Connection floods, garbage instead of TLS, and bodies that never come, in threads."""
        while self.running():
            for action in (self.idle_connections, self.garbage_handshake, self.slow_body):
                outcome = await asyncio.to_thread(self.raw, action)
                self.other[outcome] += 1
                if not self.running():
                    return

    async def run(self) -> None:
        tasks = [self.undecodable() for _ in range(max(1, self.concurrency - 3))]
        tasks += [self.wrong_institution(), self.flood(), self.transport()]
        await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, help="instead of --minutes")
    parser.add_argument("--concurrency", type=int, default=6, help="concurrent attack loops")
    parser.add_argument("--workers", type=int, default=2, help="gateway processes")
    parser.add_argument("--seed", type=int, default=20260615)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    with running_stack(200, args.workers, limits=[]) as stack:  # the default edge limits
        before = keyspace_digest(stack.redis_url)
        hostile = Hostile(stack, seconds, args.concurrency, args.seed)
        started = time.monotonic()
        asyncio.run(hostile.run())
        took = time.monotonic() - started
        alive = stack.server.poll() is None
        after = keyspace_digest(stack.redis_url)
    total = sum(hostile.codes.values())
    bad = hostile.codes["UNKNOWN"] + hostile.codes["INTERNAL"]
    print(f"hostile run: {took:.1f} s, {total} gRPC answers ({total / took:.0f}/s), gateway alive: {alive}")
    for code, count in hostile.codes.most_common():
        print(f"  {code:<20}{count:>8}")
    for outcome, count in sorted(hostile.other.items()):
        print(f"  transport {outcome:<28}{count:>6}")
    for reason, count in hostile.unavailable.most_common():
        print(f"  UNAVAILABLE because {reason:<30}{count:>8}")
    faults = hostile.unavailable["GATEWAY_FAULT"]
    print(f"UNKNOWN/INTERNAL answers: {bad}; gateway faults (bugs answered UNAVAILABLE): {faults}")
    same = "unchanged" if before == after else "CHANGED"
    print(f"redis keys before {before[0]}, after {after[0]}; digest of every key and value {same}")
    ok = bad == 0 and faults == 0 and before == after and alive and total > 0
    print("hostile run " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
