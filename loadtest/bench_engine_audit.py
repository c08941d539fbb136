"""Engine micro-benchmark with pre-settlement audit rules on: microseconds per split for the 10-, 60-
and 100-line bills of loadtest/bench_engine.py, without rules and with a rule set of every kind over the
catalog (audit_rules(); none blocks, so every bill settles with its flags), beside the baseline of that
benchmark (building the same bill's line tuple), all in the same run.

    .venv/bin/python -m loadtest.bench_engine_audit [--seconds 2]

Prints figures; it is not a test and asserts nothing about speed."""

from __future__ import annotations

import argparse
import dataclasses
import platform
from datetime import date
from functools import partial

from gateway import compiled_engine
from gateway.engine import Split, split
from gateway.engine.audit_rules import AuditKind, AuditPolicy, AuditRule, Severity
from gateway.engine.model import Sex, VisitType
from loadtest.bench_engine import demo_inputs, inpatient_bill, measured, timed

ON = date(2026, 6, 15)


def audit_rules(codes: list[str]) -> AuditPolicy:
    """A rule set like a city's: every code limited to 3 units a day (the bills give 1-3: no hit), every
    fifth to listed diagnoses (the bills carry none, so those lines are flagged: about one line in five),
    every seventh to an age range, every eleventh to women (the person is a man: flagged), every
    thirteenth to inpatient care, and one duplicate-charge rule over every item."""
    rules = [AuditRule("DUP", AuditKind.DUPLICATE, Severity.WARNING, frozenset())]
    for i, code in enumerate(codes):
        one = frozenset({code})
        rules.append(AuditRule(f"QTY-{code}", AuditKind.DAILY_QUANTITY, Severity.WARNING, one, per_day_max=3))
        if i % 5 == 0:
            rules.append(
                AuditRule(f"DX-{code}", AuditKind.DIAGNOSIS, Severity.WARNING, one, diagnoses=("I10",))
            )
        if i % 7 == 0:
            rules.append(AuditRule(f"AGE-{code}", AuditKind.AGE, Severity.INFO, one, min_age=18))
        if i % 11 == 0:
            rules.append(AuditRule(f"SEX-{code}", AuditKind.SEX, Severity.WARNING, one, sex=Sex.FEMALE))
        if i % 13 == 0:
            visits = frozenset({VisitType.INPATIENT})
            rules.append(
                AuditRule(
                    f"VT-{code}", AuditKind.VISIT_TYPE, Severity.WARNING, one, allowed_visit_types=visits
                )
            )
    return AuditPolicy.of(tuple(rules), frozenset())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    policy, catalog, inst, rec, codes = demo_inputs()
    audited = dataclasses.replace(policy, audit=audit_rules(codes))
    assert audited.audit is not None
    print(
        f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'};"
        f" engine: {compiled_engine.kind()}"
    )
    print(f"audit rules: {len(audited.audit.rules)} over {len(codes)} codes (none blocks)")
    head = f"{'bill':<22}{'median µs':>11}{'p99 µs':>9}{'µs/line':>9}{'baseline µs':>13}{'ratio':>7}"
    print(f"{head}{'audit µs':>10}{'audit p99':>11}{'flags':>7}{'audit ratio':>13}")
    for n_lines in (10, 60, 100):
        bill = inpatient_bill(codes, n_lines)
        median, p99, base = measured(bill, policy, catalog, inst, rec, args.seconds)
        flagged = split(bill, audited, catalog, inst, rec.person, rec.state, ON)
        assert isinstance(flagged, Split)
        a_median, a_p99, _ = timed(
            partial(split, bill, audited, catalog, inst, rec.person, rec.state, ON), args.seconds
        )
        name = f"{n_lines}-line inpatient"
        per_line = median / n_lines
        row = f"{name:<22}{median:>11.1f}{p99:>9.1f}{per_line:>9.2f}{base:>13.1f}{median / base:>7.1f}x"
        audit = f"{a_median:>10.1f}{a_p99:>11.1f}{len(flagged.audit_flags):>7}{a_median / base:>12.1f}x"
        print(row + audit)


if __name__ == "__main__":
    main()
