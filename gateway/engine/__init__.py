"""The settlement engine: a pure function from (bill, policy, catalog, institution, person, state,
date) to a Split or a Rejected value. It imports nothing that does I/O (tests/engine/test_purity.py)."""

from gateway.engine.codes import Rejection
from gateway.engine.money import InvariantViolation
from gateway.engine.result import FundPayment, LineSplit, Rejected, Split, SplitOutcome, TraceStep
from gateway.engine.split import split

__all__ = [
    "FundPayment",
    "InvariantViolation",
    "LineSplit",
    "Rejected",
    "Rejection",
    "Split",
    "SplitOutcome",
    "TraceStep",
    "split",
]
