"""Locust load test of the gateway with the terminals' real mix: HIS terminals (card swipe, pre-settle,
settle, sometimes a reversal; outpatient mostly, inpatient sometimes) and pharmacy POS devices (swipe,
settle from the personal account), over thousands of persons in the four seed cities.

    # persons first, once:
    .venv/bin/python -m loadtest.locust_data 4000 > persons.json
    .venv/bin/medsettle load --redis URL --persons persons.json
    .venv/bin/locust -f loadtest/locustfile.py --headless -u 50 -r 10 -t 60s --host 127.0.0.1:50051 \\
        --csv var/locust --p99-max-ms 50 --certs medsettle-data/certs
    # more load: one master and workers (one per core)
    .venv/bin/locust -f loadtest/locustfile.py --master --headless -u 200 -r 20 -t 5m --host ... \\
        --expect-workers 2
    .venv/bin/locust -f loadtest/locustfile.py --worker --master-host 127.0.0.1   # twice

Exits non-zero on any failure (Locust's default) or when the p99 of any request type exceeds
--p99-max-ms.

Each simulated terminal presents its institution's client certificate from --certs (a folder made by
`medsettle certs` or by `medsettle serve` in its data folder; default $MEDSETTLE_CERTS), as a real
terminal would; --insecure for a gateway started with --insecure."""

from __future__ import annotations

import itertools
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # before any channel: gRPC must cooperate with Locust's gevent loop

import grpc  # noqa: E402
from locust import User, between, events, task  # noqa: E402

from gateway.edge.tls import ClientTls  # noqa: E402
from gateway.protos import pb, pb_grpc  # noqa: E402
from loadtest.synthetic import CITIES, INPATIENT_LINES, OUTPATIENT_10_LINES, PHARMACY_LINES  # noqa: E402

PERSONS = 4000  # loadtest.locust_data writes the same persons
REGIONS = sorted(CITIES)
SEQUENCE = itertools.count()
RUN = uuid.uuid4().hex[:6]  # message ids unique to this run


# locust's EventHook.add_listener carries no annotations: it returns the handler unchanged
@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def add_arguments(parser: Any) -> None:
    parser.add_argument("--p99-max-ms", type=float, default=0, help="fail the run when a p99 exceeds this")
    parser.add_argument("--persons", type=int, default=PERSONS, help="persons loaded (cards C00000000...)")
    parser.add_argument("--certs", default=os.environ.get("MEDSETTLE_CERTS", ""), help="client certificates")
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext (a gateway started with --insecure)"
    )


@events.quitting.add_listener  # type: ignore[untyped-decorator]  # as above
def enforce_p99(environment: Any, **_: Any) -> None:
    limit = environment.parsed_options.p99_max_ms if environment.parsed_options else 0
    if not limit:
        return
    for name, entry in environment.stats.entries.items():
        p99 = entry.get_response_time_percentile(0.99)
        if entry.num_requests and p99 > limit:
            print(f"p99 of {name} is {p99} ms, over {limit} ms")
            environment.process_exit_code = 1


def bill(visit: int, lines: list[tuple[str, int, int]]) -> Any:
    return pb.Bill(
        visit_type=visit, lines=[pb.BillLine(code=c, unit_price_fen=p, quantity=q) for c, p, q in lines]
    )


class Terminal(User):
    abstract = True
    wait_time = between(0.05, 0.3)
    institution_index: Literal[3, 4] = 3  # CITIES tuple position: 3 hospital, 4 pharmacy

    def on_start(self) -> None:
        self.region = random.choice(REGIONS)
        self.institution = CITIES[self.region][self.institution_index]
        options = self.environment.parsed_options
        if options is not None and options.insecure:
            self.channel = grpc.insecure_channel(self.host)
        else:
            if options is None or not options.certs:
                raise RuntimeError("--certs DIR (the gateway's client certificates) or --insecure")
            tls = ClientTls.for_institution(Path(options.certs), self.institution)
            self.channel = grpc.secure_channel(self.host, tls.credentials())
        # connect (TCP and TLS handshake) before the first task, as a terminal does when it starts: the
        # request latencies measured are those of requests, not of connection set-up
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = pb_grpc.SettlementServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def envelope(self) -> Any:
        return pb.Envelope(
            institution_code=self.institution,
            terminal_id=f"LT{id(self) % 10000}",
            operator_id="locust",
            message_id=f"{RUN}{next(SEQUENCE):010d}",
        )

    def card(self, employees_only: bool = False) -> str:
        count = self.environment.parsed_options.persons if self.environment.parsed_options else PERSONS
        region_no = REGIONS.index(self.region)
        while True:  # persons are spread over regions round-robin; two employees for each resident
            i = region_no + len(REGIONS) * random.randrange(count // len(REGIONS))
            if not employees_only or (i // len(REGIONS)) % 3 != 2:
                return f"C{i:08d}"

    def call(self, name: str, method: Any, request: Any, answers: tuple[str, ...] = ()) -> Any:
        """One call, reported to Locust; a business answer named in `answers` (a rejection code the
        scenario can meet by design) counts as answered, under its own name, not as a failure."""
        started = time.perf_counter()
        response, error = None, None
        try:
            response = method(request, timeout=5)
        except grpc.RpcError as exc:
            error = exc
            details = exc.details() if isinstance(exc, grpc.Call) else ""
            reason = next((a for a in answers if (details or "").startswith(a)), None)
            if reason is not None:
                error, name = None, f"{name} ({reason})"
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(response.SerializeToString()) if response is not None else 0,
            exception=error,
            context={},
        )
        return response


class HisTerminal(Terminal):
    """A hospital cashier: most visits outpatient, some inpatient discharges, a few reversed."""

    weight = 3

    @task(5)
    def outpatient(self) -> None:
        self.visit(pb.VISIT_TYPE_OUTPATIENT, OUTPATIENT_10_LINES, "outpatient")

    @task(1)
    def inpatient(self) -> None:
        self.visit(pb.VISIT_TYPE_INPATIENT, INPATIENT_LINES, "inpatient")

    def visit(self, visit: int, lines: list[tuple[str, int, int]], kind: str) -> None:
        person = pb.PersonRef(card_no=self.card())
        self.call(
            "QueryEligibility",
            self.stub.QueryEligibility,
            pb.QueryEligibilityRequest(envelope=self.envelope(), person=person),
        )
        request = pb.SettleRequest(envelope=self.envelope(), person=person, bill=bill(visit, lines))
        self.call(f"PreSettle {kind}", self.stub.PreSettle, request)
        settle = pb.SettleRequest(envelope=self.envelope(), person=person, bill=request.bill)
        settled = self.call(f"Settle {kind}", self.stub.Settle, settle)
        if settled is not None and random.random() < 0.05:  # the patient changed their mind
            # refused when another terminal settled for the same person meanwhile (persons are drawn
            # at random): reversals go latest first, and that is the gateway answering right
            self.call(
                "Reverse",
                self.stub.Reverse,
                pb.ReverseRequest(envelope=self.envelope(), settlement_id=settled.settlement_id),
                answers=("LATER_SETTLEMENTS_EXIST",),
            )


class PharmacyPos(Terminal):
    """A retail pharmacy: swipe and settle from the personal account (employees)."""

    weight = 1
    institution_index = 4

    @task
    def sale(self) -> None:
        person = pb.PersonRef(card_no=self.card(employees_only=True))
        self.call(
            "QueryEligibility",
            self.stub.QueryEligibility,
            pb.QueryEligibilityRequest(envelope=self.envelope(), person=person),
        )
        self.call(
            "Settle pharmacy",
            self.stub.Settle,
            pb.SettleRequest(
                envelope=self.envelope(), person=person, bill=bill(pb.VISIT_TYPE_PHARMACY, PHARMACY_LINES)
            ),
        )
