"""The `medsettle` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from rules_cache.reader import DataError


def cmd_split(args: argparse.Namespace) -> int:
    from gateway.case_files import outcome_json, run_case
    from gateway.split_table import render

    status = 0
    for case in args.cases:
        try:
            outcome = run_case(Path(case))
        except DataError as exc:
            print(f"medsettle split: {exc}", file=sys.stderr)
            status = 2
            continue
        if args.table:
            print(render(outcome, f"{case}:"), end="\n\n")
        else:
            print(
                json.dumps(outcome_json(outcome, with_trace=not args.no_trace), ensure_ascii=False, indent=2)
            )
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsettle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("split", help="split one or more self-contained cases offline and print JSON")
    p.add_argument("cases", nargs="+", metavar="CASE.json")
    p.add_argument("--no-trace", action="store_true", help="leave the rule trace out")
    p.add_argument("--table", action="store_true", help="print readable tables instead of JSON")
    p.set_defaults(func=cmd_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
