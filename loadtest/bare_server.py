"""The transport floor for the gateway benchmarks: a bare grpc.aio server that answers every unary method
with an empty message, in N processes sharing one port (SO_REUSEPORT) like `medsettle serve --workers N`.

    python -m loadtest.bare_server --listen 127.0.0.1:PORT --processes N \\
        [--tls-cert server.pem --tls-key server.key [--tls-ca clients-ca.pem]] [--path-prefix /pkg.]

Raw bytes in and out (no protobuf parsing), no interceptors, no metrics, no logging: what any grpc.aio
service costs before it does anything. It imports nothing of this project on purpose, so a change in
the gateway can never move the floor the gateway is compared with. With --tls-ca it requires client
certificates (mutual TLS), with the same files the gateway takes, so TLS can be compared with a TLS
floor. --path-prefix answers only the methods under it (UNIMPLEMENTED otherwise); the default answers
every path.

The parent starts the N processes before any gRPC object exists in it (gRPC does not survive fork),
prints `bare server: listening on HOST:PORT, N processes` once all of them serve, and stops them all on
SIGTERM or SIGINT. Their CPU time is that of the parent's children, as for `serve`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

EMPTY = b""


async def _noop(request: bytes, context: Any) -> bytes:
    return EMPTY


class _EveryMethod(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no type hints
    """One handler object for every path under the prefix: the lookup costs what a dict lookup does in
    the gateway's own generic handlers, nothing more."""

    def __init__(self, path_prefix: str) -> None:
        self._prefix = path_prefix
        # no serializers: the request arrives as bytes and the empty bytes go out as they are
        self._handler = grpc.unary_unary_rpc_method_handler(_noop)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        return self._handler if method.startswith(self._prefix) else None


def _credentials(args: argparse.Namespace) -> grpc.ServerCredentials | None:
    if not args.tls_cert:
        return None
    key, cert = Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes()
    ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


async def _serve_one(args: argparse.Namespace) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((_EveryMethod(args.path_prefix),))
    credentials = _credentials(args)
    if credentials is None:
        server.add_insecure_port(args.listen)
    else:
        server.add_secure_port(args.listen, credentials)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # a plain handler rather than loop.add_signal_handler: gRPC's poller can leave asyncio's wakeup
        # fd unread (the gateway's CLI found the same)
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    print("ready", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)  # wakes the loop so a signal is seen
    await server.stop(grace=1.0)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _supervise(args: argparse.Namespace) -> int:
    host, _, port_text = args.listen.rpartition(":")
    port = int(port_text) or _free_port(host.strip("[]"))  # one port for every process, chosen here
    child_args = [sys.executable, "-m", "loadtest.bare_server", "--child", "--listen", f"{host}:{port}",
                  "--path-prefix", args.path_prefix]  # fmt: skip
    for flag, value in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-ca", args.tls_ca),
    ):
        if value:
            child_args += [flag, value]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children = [
        subprocess.Popen(child_args, stdout=subprocess.PIPE, text=True) for _ in range(args.processes)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                print("bare server: a process did not start", file=sys.stderr, flush=True)
                return 1
        tls = " (mTLS)" if args.tls_ca else " (TLS)" if args.tls_cert else ""
        print(f"bare server: listening on {host}:{port}{tls}, {args.processes} processes", flush=True)
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("bare server: a process exited", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 picks a free one")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--tls-cert", help="server certificate chain (PEM)")
    parser.add_argument("--tls-key", help="server private key (PEM)")
    parser.add_argument("--tls-ca", help="CA that signs client certificates: requires them (mutual TLS)")
    parser.add_argument("--path-prefix", default="/", help="answer only methods under this path")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_ca and not args.tls_cert:
        parser.error("--tls-ca needs --tls-cert and --tls-key")
    if args.child:
        asyncio.run(_serve_one(args))
        return 0
    return _supervise(args)


if __name__ == "__main__":
    sys.exit(main())
