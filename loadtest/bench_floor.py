"""Every RPC of the gateway against the transport floor, with the C load generator, in one interleaved run:
a bare grpc.aio no-op server (loadtest.bare_server, N processes), then MedSettle's Ping, QueryEligibility,
PreSettle, Settle (10 and 60 lines) and Reverse on `medsettle serve --workers N` (redis-server with AOF
appendfsync always, the embedded default), then the bare server again. Every figure is printed beside
the bare server's of the same run (the machine's speed drifts between runs; the two bare measurements
show by how much within this one).

    .venv/bin/python -m loadtest.bench_floor [--seconds 5] [--rates 300,1000] [--workers 2,1]
        [--calls bare,ping,query,presettle10,settle10,settle60,reverse]
        [--certs DIR] [--no-plaintext-floor] [--insecure]

For each call: a warm-up, a closed loop (connections x streams in flight, as fast as answered) for the
maximum throughput, and a paced open loop at the first rate (every rate for Settle, 10 lines, and for the
bare server) for latency counted from each call's scheduled send time. Server CPU per call is the user
+ system time of the server's processes (the supervisor's children) over the closed-loop window, from
/proc, divided by the calls answered; Redis CPU per call likewise for redis-server; the load generator's
own CPU per call is printed beside them, to show it is not the bottleneck. Settle frames carry a fresh
message id each, over --persons persons; Reverse takes back settlements of persons of its own pool
(--reverse-persons, each settled once, so each is its person's latest). The first --workers figure is
the main table's; each further one gets a throughput row (bare, Ping, Settle) with its own bare server.

TLS: mutual TLS by default, as the gateway serves it and as its targets are stated. The run makes one PKI
in its temporary folder (loadtest.certs: a CA, a server certificate for localhost/127.0.0.1, the probe's
and a client certificate for the institution every frame names, frames.HOSPITAL), or uses a folder laid
out by `medsettle certs` (--certs DIR). The bare server and `serve` get the same server files and client
CA; the load generator presents the institution's certificate, so the gateway's identity check passes
and the ratio compares mTLS with mTLS. A plaintext bare server is measured too (unless
--no-plaintext-floor), so the cost of TLS itself shows. --insecure measures plaintext end to end (bare
server and `serve --insecure`). The gateway's per-institution edge limits are lifted (bench_limits): one
load generator acts for one institution at rates no real one reaches.

Prints figures; asserts nothing. Every non-OK grpc-status is printed per code and call; the exit status
is 1 when any call was not answered OK."""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from adapters.embedded_redis import EmbeddedRedis
from gateway.protos import pb
from loadtest import frames as fr
from loadtest import loadgen, proc_cpu
from loadtest.certs import BenchPki, make_pki
from loadtest.stack import CITYDATA, CLI, LOAD_LIMITS, limit_flags, secret_env
from loadtest.synthetic import write_persons

CALLS = {
    "ping": fr.PING,
    "query": fr.QUERY,
    "presettle10": fr.PRESETTLE_10,
    "settle10": fr.SETTLE_10,
    "settle60": fr.SETTLE_60,
    "reverse": fr.REVERSE,
}
# warm-up frames for calls that are never sent twice: more than any of them is answered per second
WARMUP_RATE_PER_S_MAX = 3000
# a measured window gets 2.5x the frames the warm-up's rate would use: a 1 s warm-up underestimates
CLOSED_FRAMES_MARGIN = 2.5
# every frame's envelope names this institution (frames.envelope): the load generator presents its
# certificate, else the gateway answers PERMISSION_DENIED (INSTITUTION_MISMATCH)
INSTITUTION = fr.HOSPITAL


def bench_limits(paced_streams: int) -> list[str]:
    """The stack's lifted per-institution limits (LOAD_LIMITS), and the HTTP/2 stream cap raised to the
    paced runs' in-flight cap: the load generator folds thousands of terminals onto 16 connections, and
    the bare server announces no cap, so both queue a slow run's calls alike (in the server)."""
    return [*LOAD_LIMITS, f"streams_per_connection_max={paced_streams}"]


@dataclass(frozen=True, slots=True)
class Server:
    kind: str  # "bare" or "gateway"
    process: subprocess.Popen[str]  # the supervisor; the serving processes are its children
    port: int
    tls: bool

    def pids(self) -> list[int]:
        return proc_cpu.children(self.process.pid)


@dataclass(frozen=True, slots=True)
class Window:
    """One closed-loop window: the load generator's report and the CPU the servers spent on it."""

    result: loadgen.Result
    server_cpu_us: float
    redis_cpu_us: float | None
    process_shares: list[float]


@dataclass(slots=True)
class Row:
    name: str
    closed: Window | None = None
    paced: dict[float, loadgen.Result] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed_calls: int = 0  # calls not answered OK, warm-up included: the run's figures are not to be trusted


@dataclass(slots=True)
class Bench:
    args: argparse.Namespace
    binary: Path
    tmp: Path
    redis_pid: int | None
    client_tls: loadgen.ClientTls | None
    # settlements for Reverse: each the one settlement of a person of the reverse pool, so each is its
    # person's latest, which a reversal may take back whatever the order the load generator sends them
    # (reversing an earlier settlement is refused while later ones stand on it)
    settled: list[str] = field(default_factory=list)
    next_reverse_person: int = 0
    failed_calls: int = 0  # outside any row (the batch settled for Reverse)
    files: int = 0

    def path(self, stem: str) -> Path:
        self.files += 1
        return self.tmp / f"{self.files:04d}-{stem}"

    # ---------------------------------------------------------------- frames

    def frames(self, call: fr.Call | None, count: int, reserve: int = 0) -> tuple[Path, int]:
        """A frames file for `call` (None: the bare server, sent Ping's bytes) and how many it holds.
        Calls that may repeat get one frame per person and go round them; Settle gets `count` fresh
        message ids; Reverse takes `count` settlement ids of this run, leaving `reserve` for later."""
        target = self.path("frames")
        if call is None:
            return target, fr.write_frames(target, [pb.PingRequest()])
        if call is fr.REVERSE:
            take = max(0, min(count, len(self.settled) - reserve))
            ids, self.settled = self.settled[:take], self.settled[take:]
            return target, fr.reverse_frames(target, ids)
        n = count if call.distinct else self.args.persons
        fr.call_frames(target, call, n, self.args.persons)
        return target, n

    # ---------------------------------------------------------------- runs

    def run(
        self,
        server: Server,
        call: fr.Call | None,
        frames: Path,
        mode: str,
        seconds: float,
        rate_per_s: float = 0.0,
    ) -> loadgen.Result:
        distinct = call is not None and call.distinct
        responses = self.path("responses") if call is not None and call.path.endswith("/Settle") else None
        paced = mode == "paced"
        tls = self.client_tls if server.tls else None
        result = loadgen.run(
            self.binary,
            port=server.port,
            path=call.path if call is not None else fr.PING_PATH,  # the bare server answers any path
            frames=frames,
            mode=mode,
            seconds=seconds,
            rate_per_s=rate_per_s,
            connections=self.args.connections,
            streams_per_connection_max=self.args.paced_streams if paced else self.args.streams,
            wrap=not distinct,
            responses=responses,
            tls=tls,
        )
        if responses is not None:
            if frames.name.endswith("top-up"):
                self.settled += fr.settlement_ids(responses)
            responses.unlink()
        return result

    def closed(self, server: Server, call: fr.Call | None, frames: Path) -> Window:
        pids = server.pids()
        redis = [self.redis_pid] if self.redis_pid is not None and server.kind == "gateway" else []
        before = proc_cpu.snapshot(pids + redis)
        result = self.run(server, call, frames, "closed", self.args.seconds)
        used = proc_cpu.used(before, proc_cpu.snapshot(pids + redis))
        calls = max(result.calls, 1)
        server_s = sum(used.get(pid, 0.0) for pid in pids)
        shares = [used.get(pid, 0.0) / server_s if server_s else 0.0 for pid in pids]
        redis_us = sum(used.get(pid, 0.0) for pid in redis) / calls * 1e6 if redis else None
        return Window(result, server_s / calls * 1e6, redis_us, shares)

    def measure(self, name: str, server: Server, call: fr.Call | None, rates: list[float]) -> Row:
        """Warm-up, closed loop, then a paced run at each rate, each with frames of its own."""
        row = Row(name)
        args = self.args
        distinct = call is not None and call.distinct
        paced_need = sum(int(rate * args.seconds) for rate in rates)
        if call is fr.REVERSE:
            self.top_up(int(args.warmup_seconds * WARMUP_RATE_PER_S_MAX) + paced_need, server)
            if not self.settled:  # the batch settled for it failed: nothing to send, and the run fails
                row.notes.append("no settlement of its own to take back: the batch settled for it failed")
                row.failed_calls += 1
                self.failed_calls += 1
                return row
        shared = None if distinct else self.frames(call, 0)[0]
        warm_frames = (
            shared or self.frames(call, int(args.warmup_seconds * WARMUP_RATE_PER_S_MAX), paced_need)[0]
        )
        warm = self.run(server, call, warm_frames, "closed", args.warmup_seconds)
        if warm.errors:
            row.notes.append(f"warm-up: {warm.errors} errors: {warm.error_summary}")
            row.failed_calls += warm.errors
        rate_estimate = warm.ok_per_s or WARMUP_RATE_PER_S_MAX
        closed_need = math.ceil(rate_estimate * args.seconds * CLOSED_FRAMES_MARGIN) + 200
        if call is fr.REVERSE:
            self.top_up(closed_need + paced_need, server)
        frames = shared or self.frames(call, closed_need, paced_need)[0]
        row.closed = self.closed(server, call, frames)
        for rate in rates:
            frames = shared or self.frames(call, int(rate * args.seconds))[0]
            row.paced[rate] = self.run(server, call, frames, "paced", args.seconds, rate)
        for label, result in (
            ("closed", row.closed.result),
            *((f"{r:g}/s", p) for r, p in row.paced.items()),
        ):
            if result.errors:
                row.notes.append(f"{label}: {result.errors} errors: {result.error_summary}")
                row.failed_calls += result.errors
            asked = args.paced_streams if result.mode == "paced" else args.streams
            if 0 < result.server_streams_max < asked:
                row.notes.append(
                    f"{label}: the server allows {result.server_streams_max} streams per connection, "
                    f"fewer than the {asked} asked: calls queued in the client"
                )
            if result.frames_exhausted:
                row.notes.append(
                    f"{label}: ran out of frames after {result.seconds:.1f} s ({result.calls} calls)"
                )
        workers = len(server.pids())
        shares = row.closed.process_shares
        if workers > 1 and shares and min(shares) < 0.5 / workers:
            row.notes.append(
                "connections landed unevenly: process CPU shares " + "/".join(f"{s:.0%}" for s in shares)
            )
        self.failed_calls += row.failed_calls
        return row

    def top_up(self, needed: int, server: Server) -> None:
        """Reverse needs settlements of its own: settle a batch first (10-line outpatient bills, not
        measured) when this run's Settles left fewer than `needed`."""
        missing = needed - len(self.settled)
        if missing <= 0:
            return
        first = self.args.persons + self.next_reverse_person
        if self.next_reverse_person + missing > self.args.reverse_persons:
            raise SystemExit(f"Reverse needs {missing} more persons of its own: raise --reverse-persons")
        self.next_reverse_person += missing
        frames = self.path("top-up")
        fr.call_frames(frames, fr.SETTLE_10, missing, missing, first_person=first)
        result = self.run(server, fr.SETTLE_10, frames, "closed", 3600.0)  # ends when the frames run out
        if result.errors:
            print(f"note: settling a batch for Reverse: {result.errors} errors: {result.error_summary}")
            self.failed_calls += result.errors


# -------------------------------------------------------------------- servers


def wait_for(process: subprocess.Popen[str], pattern: str, what: str) -> re.Match[str]:
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(pattern, line)
        if match:
            return match
    raise RuntimeError(f"{what} did not start (exit status {process.wait()})")


def drain(process: subprocess.Popen[str]) -> None:
    """Reads and drops what the server prints after it started: a full pipe would stop it mid-run."""
    assert process.stdout is not None
    for _ in process.stdout:
        pass


@contextmanager
def started(
    kind: str, command: list[str], tls: bool, ready: str | None = None, env: dict[str, str] | None = None
) -> Iterator[Server]:
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        port = int(wait_for(process, r"listening on [\d.]+:(\d+)", kind).group(1))
        if ready:
            wait_for(process, ready, kind)
        threading.Thread(target=drain, args=(process,), daemon=True).start()
        yield Server(kind, process, port, tls)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def bare(processes: int, pki: BenchPki | None) -> AbstractContextManager[Server]:
    """The bare server: mutual TLS with the run's server files and client CA, or plaintext (None)."""
    command = [sys.executable, "-m", "loadtest.bare_server", "--listen", "127.0.0.1:0",
               "--processes", str(processes), *(pki.bare_server_flags() if pki else [])]  # fmt: skip
    return started("bare", command, pki is not None)


def gateway(
    args: argparse.Namespace,
    redis_url: str,
    processes: int,
    data_dir: Path,
    pki: BenchPki | None,
    serve_args: str | None = None,
) -> AbstractContextManager[Server]:
    """`medsettle serve` on the run's Redis, over mutual TLS with the bare server's files (or --insecure
    when pki is None), its per-institution limits lifted. The Redis URL holds the admin password: it
    goes in the environment, never in argv (which `ps` shows every user)."""
    tls = pki.serve_flags() if pki else ["--insecure"]
    limits = limit_flags(bench_limits(args.paced_streams))
    extra = shlex.split(serve_args if serve_args is not None else args.serve_args)
    command = [*CLI, "serve", "--listen", "127.0.0.1:0", "--workers", str(processes),
               "--metrics-port", "-1", "--log-level", args.log_level, "--data-dir", str(data_dir),
               *tls, *limits, *extra]  # fmt: skip
    return started("gateway", command, pki is not None, r"serving", secret_env(redis_url))


# -------------------------------------------------------------------- report


def ms(result: loadgen.Result | None) -> str:
    if result is None or result.latency_ms is None:
        return "—"
    flags = []
    if result.late:
        flags.append(f"{result.late} late")
    if result.errors:
        flags.append(f"{result.errors} errors")
    return f"{result.latency_ms['p99']:.2f}" + (f" ({', '.join(flags)})" if flags else "")


def transport(args: argparse.Namespace) -> str:
    if args.insecure:
        return "PLAINTEXT end to end (--insecure): not the configuration the targets are stated in"
    source = f"certificates from {args.certs}" if args.certs else "a PKI made for this run"
    return f"mutual TLS ({source}; client certificate of {INSTITUTION})"


def print_report(args: argparse.Namespace, rows: list[Row], first_bare: Row, last_bare: Row) -> None:
    assert first_bare.closed and last_bare.closed
    bare_rates = [first_bare.closed.result.ok_per_s, last_bare.closed.result.ok_per_s]
    floor = sum(bare_rates) / 2
    bare_cpu = (first_bare.closed.server_cpu_us + last_bare.closed.server_cpu_us) / 2
    rate0 = args.rates[0]
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    print(f"gateway processes and bare-server processes: {args.workers[0]}; redis-server AOF appendfsync "
          f"always; {args.persons} persons; loadgen {args.connections} connections x {args.streams} streams "
          f"(closed loop); {args.seconds:g} s windows; {transport(args)}")  # fmt: skip
    print()
    print(f"| call | max calls/s | vs bare no-op | server CPU µs/call | vs bare | Redis CPU µs/call "
          f"| loadgen CPU µs/call | p99 ms at {rate0:g}/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row.closed is None:
            continue
        w = row.closed
        redis = f"{w.redis_cpu_us:.0f}" if w.redis_cpu_us is not None else "—"
        print(f"| {row.name} | {w.result.ok_per_s:.0f} | {w.result.ok_per_s / floor:.2f} "
              f"| {w.server_cpu_us:.0f} | {w.server_cpu_us / bare_cpu:.2f} | {redis} "
              f"| {w.result.cpu_us_per_call:.1f} | {ms(row.paced.get(rate0))} |")  # fmt: skip
    spread = abs(bare_rates[0] - bare_rates[1]) / floor
    print()
    print(f"bare no-op, first and last: {bare_rates[0]:.0f} and {bare_rates[1]:.0f} calls/s "
          f"(spread {spread:.1%}); ratios are to their mean: {floor:.0f}/s, "
          f"{bare_cpu:.0f} µs/call")  # fmt: skip
    print()
    print("| call | offered/s | p50 ms | p99 ms | p99.9 ms | max ms | late sends | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for rate, result in row.paced.items():
            lat = result.latency_ms or {}
            cells = " | ".join(f"{lat[k]:.2f}" if k in lat else "—" for k in ("p50", "p99", "p999", "max"))
            print(f"| {row.name} | {rate:g} | {cells} | {result.late} | {result.errors} |")
    share = [row.closed.result.cpu_us_per_call / row.closed.server_cpu_us for row in rows if row.closed]
    late_ms = next((p.late_ms for row in rows for p in row.paced.values()), 1.0)
    print()
    print(f"loadgen CPU per call: {min(share):.1%}–{max(share):.1%} of the server's; late = sent more than "
          f"{late_ms:g} ms after its scheduled time")  # fmt: skip
    for row in rows:
        for note in row.notes:
            print(f"note: {row.name}: {note}")


def print_scaling(results: list[tuple[int, float, float | None, float | None]]) -> None:
    print()
    print("| gateway processes | bare no-op calls/s | Ping calls/s | vs bare "
          "| Settle, 10 lines calls/s | vs bare |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for processes, floor, ping, settle in sorted(results):
        cells = []
        for value in (ping, settle):
            cells += [f"{value:.0f}", f"{value / floor:.2f}"] if value is not None else ["—", "—"]
        print(f"| {processes} | {floor:.0f} | {' | '.join(cells)} |")


# -------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each measured window")
    parser.add_argument("--warmup-seconds", type=float, default=1.0)
    parser.add_argument("--rates", default="300,1000", help="offered rates for the paced runs, calls/s")
    parser.add_argument(
        "--workers",
        default=f"{cores},1" if cores > 1 else "1",
        help="gateway (and bare) processes: the main table's, then throughput-only ones",
    )
    parser.add_argument("--calls", default="bare," + ",".join(CALLS), help="rows to measure")
    parser.add_argument("--persons", type=int, default=2000)
    parser.add_argument(
        "--reverse-persons",
        type=int,
        default=20_000,
        help="persons beside --persons, each settled once for Reverse to take back",
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=8, help="calls in flight per connection, closed loop")
    parser.add_argument("--paced-streams", type=int, default=4096, help="in-flight cap per connection, paced")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's")
    parser.add_argument(
        "--certs",
        type=Path,
        help="a folder laid out by `medsettle certs` (server files, probe, clients/<institution>); "
        "default: a PKI made for the run in its temporary folder",
    )
    parser.add_argument("--tls-server-name", default="localhost", help="name the server certificate carries")
    parser.add_argument(
        "--no-plaintext-floor",
        dest="plaintext_floor",
        action="store_false",
        help="with TLS, skip the plaintext bare server row (the cost of TLS itself)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="plaintext end to end: bare server and `serve --insecure`"
    )
    parser.add_argument("--serve-args", default="", help="more options for `medsettle serve`, one string")
    parser.add_argument(
        "--compare",
        metavar="'ARGS A|ARGS B'",
        help="instead of the table: a change measured before and after in one run. Two gateways, one "
        "with serve options A, one with B (e.g. '--event-loop asyncio|--event-loop uvloop'), "
        "measured alternately (A, B, A, B for each of --compare-calls) between two bare-server rows",
    )
    parser.add_argument("--compare-calls", default="settle10,query", help="the rows of --compare")
    parser.add_argument("--compare-rounds", type=int, default=2)
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r]
    args.workers = [int(w) for w in args.workers.split(",") if w]
    args.calls = [c.strip() for c in args.calls.split(",") if c.strip()]
    if args.compare:
        args.calls = ["bare", *(c.strip() for c in args.compare_calls.split(",") if c.strip())]
        if args.compare.count("|") != 1:
            parser.error("--compare takes two option strings separated by one '|'")
    unknown = sorted(set(args.calls) - {"bare", *CALLS})
    if args.insecure and args.certs:
        parser.error("--insecure and --certs exclude each other")
    if unknown or not args.rates or not args.workers:
        parser.error(
            f"unknown calls {unknown}; choose from bare,{','.join(CALLS)}" if unknown else "empty list"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = loadgen.build()
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as d:
        tmp = Path(d)
        pki = None
        if not args.insecure:
            pki = (
                BenchPki(args.certs, args.tls_server_name)
                if args.certs
                else make_pki(tmp / "certs", [INSTITUTION])
            )
            missing = pki.missing([INSTITUTION])
            if missing:
                print(f"--certs {args.certs} lacks {', '.join(map(str, missing))} (`medsettle certs init` "
                      "makes them)", file=sys.stderr)  # fmt: skip
                return 2
        client_tls = pki.loadgen_tls(INSTITUTION) if pki else None
        gateway_calls = [CALLS[c] for c in args.calls if c != "bare"]
        with EmbeddedRedis(tmp) as redis_server:
            assert redis_server.process is not None
            bench = Bench(args, binary, tmp / "run", redis_server.process.pid, client_tls)
            (tmp / "run").mkdir()
            if gateway_calls:
                env = {**os.environ, **secret_env(redis_server.url)}  # the password never in argv
                load = [*CLI, "load"]
                subprocess.run([*load, "--dir", str(CITYDATA)], check=True, capture_output=True, env=env)
                people = write_persons(tmp / "persons.json", args.persons + args.reverse_persons)
                subprocess.run([*load, "--persons", str(people)], check=True, capture_output=True, env=env)
            if args.compare:
                compare(bench, args, redis_server.url, gateway_calls, tmp, pki)
                return 1 if bench.failed_calls else 0
            rows = main_table(bench, args, redis_server.url, gateway_calls, tmp, pki)
            print_report(args, rows, rows[0], rows[-1])
            scaling = [
                scaling_row(bench, args, redis_server.url, n, gateway_calls, tmp, pki)
                for n in args.workers[1:]
            ]
            if scaling:
                print_scaling([throughput(args.workers[0], rows), *scaling])
    if bench.failed_calls:
        print(f"{bench.failed_calls} calls were not answered OK (see the notes): these figures do not count")
        return 1
    return 0


def throughput(processes: int, rows: list[Row]) -> tuple[int, float, float | None, float | None]:
    """(processes, bare calls/s as the mean of the first and last rows, Ping calls/s, Settle calls/s)."""
    rates = {row.name: row.closed.result.ok_per_s for row in rows if row.closed}
    first, last = rows[0].closed, rows[-1].closed
    assert first is not None and last is not None
    floor = (first.result.ok_per_s + last.result.ok_per_s) / 2
    return processes, floor, rates.get(fr.PING.name), rates.get(fr.SETTLE_10.name)


def bare_name(processes: int, tls: bool) -> str:
    plural = "es" if processes != 1 else ""
    return f"bare grpc.aio no-op server, {processes} process{plural}" + (", mTLS" if tls else "")


def main_table(
    bench: Bench,
    args: argparse.Namespace,
    redis_url: str,
    calls: list[fr.Call],
    tmp: Path,
    pki: BenchPki | None,
) -> list[Row]:
    """Bare, [plaintext bare,] Ping, then each RPC, then bare again: the first and last rows are the
    bare server's two measurements, in the gateway's transport (mTLS unless --insecure)."""
    processes = args.workers[0]
    tls = pki is not None
    with ExitStack() as servers:
        floor = servers.enter_context(bare(processes, pki))
        gw = servers.enter_context(gateway(args, redis_url, processes, tmp / "serve", pki)) if calls else None
        rows = [bench.measure(bare_name(processes, tls), floor, None, args.rates)]
        if tls and args.plaintext_floor:
            with bare(processes, None) as plain:
                rows.append(
                    bench.measure(bare_name(processes, False) + " (no TLS)", plain, None, args.rates[:1])
                )
        for call in calls:
            assert gw is not None
            rates = args.rates if call is fr.SETTLE_10 else args.rates[:1]
            rows.append(bench.measure(call.name, gw, call, rates))
        rows.append(bench.measure(bare_name(processes, tls) + ", again", floor, None, []))
    return rows


def compare(
    bench: Bench,
    args: argparse.Namespace,
    redis_url: str,
    calls: list[fr.Call],
    tmp: Path,
    pki: BenchPki | None,
) -> None:
    """A change before (A) and after (B) in one run: bare, then A and B alternately for each call, then
    bare again; each figure beside the mean of the two bare rows, and B beside A."""
    variants = [v.strip() for v in args.compare.split("|")]
    processes = args.workers[0]
    tls = pki is not None
    measured: dict[tuple[str, int], list[Window]] = {}
    with ExitStack() as servers:
        floor = servers.enter_context(bare(processes, pki))
        gateways = [
            servers.enter_context(
                gateway(args, redis_url, processes, tmp / f"serve-{i}", pki, f"{args.serve_args} {v}")
            )
            for i, v in enumerate(variants)
        ]
        rows = [bench.measure(bare_name(processes, tls), floor, None, [])]
        for call in calls:
            for _ in range(args.compare_rounds):
                for i, gw in enumerate(gateways):
                    row = bench.measure(f"{call.name} [{'AB'[i]}]", gw, call, [])
                    rows.append(row)
                    if row.closed is not None:
                        measured.setdefault((call.name, i), []).append(row.closed)
        rows.append(bench.measure(bare_name(processes, tls) + ", again", floor, None, []))
    first, last = rows[0].closed, rows[-1].closed
    assert first is not None and last is not None
    floor_rate = (first.result.ok_per_s + last.result.ok_per_s) / 2
    print(f"{processes} processes, {transport(args)}, {args.seconds:g} s windows; A: {variants[0]!r}, "
          f"B: {variants[1]!r}; bare no-op {first.result.ok_per_s:.0f} and {last.result.ok_per_s:.0f} "
          f"calls/s (mean {floor_rate:.0f})")  # fmt: skip
    print()
    print("| call | variant | max calls/s (each window) | vs bare | server CPU µs/call | Redis CPU µs/call |")
    print("|---|---|---|---|---|---|")
    for call in calls:
        means = []
        for i in range(2):
            windows = measured.get((call.name, i), [])
            if not windows:
                continue
            rate = sum(w.result.ok_per_s for w in windows) / len(windows)
            cpu = sum(w.server_cpu_us for w in windows) / len(windows)
            redis_us = [w.redis_cpu_us for w in windows if w.redis_cpu_us is not None]
            redis = f"{sum(redis_us) / len(redis_us):.0f}" if redis_us else "—"
            each = ", ".join(f"{w.result.ok_per_s:.0f}" for w in windows)
            means.append((rate, cpu))
            print(
                f"| {call.name} | {'AB'[i]} | {rate:.0f} ({each}) | {rate / floor_rate:.2f} | {cpu:.0f} "
                f"| {redis} |"
            )
        if len(means) == 2:
            (ra, ca), (rb, cb) = means
            print(f"| {call.name} | B vs A | {rb / ra:.2f}x | | {cb - ca:+.0f} µs | |")
    for row in rows:
        for note in row.notes:
            print(f"note: {row.name}: {note}")


def scaling_row(
    bench: Bench,
    args: argparse.Namespace,
    redis_url: str,
    processes: int,
    calls: list[fr.Call],
    tmp: Path,
    pki: BenchPki | None,
) -> tuple[int, float, float | None, float | None]:
    """Throughput only, for another process count: bare, Ping, Settle (10 lines), bare again."""
    chosen = [c for c in (fr.PING, fr.SETTLE_10) if c in calls]
    name = bare_name(processes, pki is not None)
    with ExitStack() as servers:
        floor = servers.enter_context(bare(processes, pki))
        gw = (
            servers.enter_context(gateway(args, redis_url, processes, tmp / f"serve-{processes}", pki))
            if chosen
            else None
        )
        rows = [bench.measure(name, floor, None, [])]
        for call in chosen:
            assert gw is not None
            rows.append(bench.measure(call.name, gw, call, []))
        rows.append(bench.measure(name, floor, None, []))
    for row in rows:
        for note in row.notes:
            print(f"note: {processes} processes: {row.name}: {note}")
    return throughput(processes, rows)


if __name__ == "__main__":
    sys.exit(main())
