"""`medsettle serve --nhsa-listen ADDR`: where the national interface listens. By default it is on in
the embedded default: on port 8097 of the gRPC host (the port local front-end processors of the
national platform expose) when gRPC has its default port 50051, on a free port when --listen asks for
another gRPC port (tests start many gateways at once); with --redis (a real deployment) it is off unless
asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

NATIONAL_PORT = 8097
GRPC_DEFAULT_PORT = "50051"
KEYS_FILE = "secrets/nhsa-keys.json"


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nhsa-listen",
        default="auto",
        metavar="ADDR",
        help="the national interface (NHSA JSON over HTTP): host:port, 'off'; default: 127.0.0.1:8097 in"
        " the embedded default, off with --redis (docs/NATIONAL_MAPPING.md)",
    )
    p.add_argument(
        "--nhsa-keys-file",
        help=f"per-institution signing keys of the national interface (default <data-dir>/{KEYS_FILE})",
    )


def add_process_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nhsa-listen")
    p.add_argument("--nhsa-keys-file")


def national_listen(args: argparse.Namespace, host: str, embedded: bool) -> str | None:
    """host:port for the national interface, or None (off). Port 0 is resolved by the caller, once, so
    every gateway process shares one port."""
    given = args.nhsa_listen
    if given == "off":
        return None
    if given != "auto":
        if ":" not in given:
            raise SystemExit(f"medsettle: --nhsa-listen {given}: host:port or off")
        return str(given)
    if not embedded:
        return None
    port = NATIONAL_PORT if args.listen.rpartition(":")[2] == GRPC_DEFAULT_PORT else 0
    return f"{host}:{port}"


def keys_file(args: argparse.Namespace) -> Path:
    return Path(args.nhsa_keys_file) if args.nhsa_keys_file else Path(args.data_dir) / KEYS_FILE


def process_args(listen: str | None, keys: Path) -> list[str]:
    return [] if listen is None else ["--nhsa-listen", listen, "--nhsa-keys-file", str(keys.resolve())]
