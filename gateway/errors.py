"""Failures the service layer raises, each mapped by the servicer to one gRPC status. Business outcomes
carry a stable Rejection code (gateway/engine/codes.py)."""

from __future__ import annotations

from gateway.engine.codes import Rejection


class ServiceError(Exception):
    pass


class InvalidInput(ServiceError):
    """INVALID_ARGUMENT with google.rpc.BadRequest: every violated field, named by its proto path."""

    def __init__(self, violations: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {d}" for f, d in violations))
        self.violations = violations


class Rejected(ServiceError):
    """A business rejection: FAILED_PRECONDITION (or NOT_FOUND / ALREADY_EXISTS / ABORTED for the
    gateway's own codes) with google.rpc.ErrorInfo(reason=code name)."""

    def __init__(self, code: Rejection, reason: str, line_no: int | None = None) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason
        self.line_no = line_no


class Unavailable(ServiceError):
    """A dependency (Redis) is unreachable or too slow: UNAVAILABLE, the outcome of a Settle may be
    unknown, the terminal queries (GetSettlement) or retries with the same message id."""
