"""Refusals decided at the edge, before any business code runs. Each carries the gRPC status, a stable
reason (google.rpc.ErrorInfo) and, for limits, how long to wait (google.rpc.RetryInfo)."""

from __future__ import annotations

from google.rpc import code_pb2


class Refused(Exception):
    def __init__(self, code: int, reason: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s


class Undecodable(Exception):
    """A request body protobuf cannot parse: INVALID_ARGUMENT naming the message type."""

    def __init__(self, message_name: str, why: str = "") -> None:
        super().__init__(f"request body is not a valid {message_name} message" + (f" ({why})" if why else ""))
        self.message_name = message_name


def unauthenticated(reason: str, message: str) -> Refused:
    return Refused(code_pb2.UNAUTHENTICATED, reason, message)


def denied(reason: str, message: str) -> Refused:
    return Refused(code_pb2.PERMISSION_DENIED, reason, message)


def exhausted(reason: str, message: str, retry_after_s: float) -> Refused:
    return Refused(code_pb2.RESOURCE_EXHAUSTED, reason, message, retry_after_s)
