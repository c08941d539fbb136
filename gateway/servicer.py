"""The gRPC edge: decode, call the service layer, encode, and map every failure to one status with
rich details. No business rule lives here."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import redis.exceptions
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway import codec, logs
from gateway.correction_service import CorrectionService, Target
from gateway.engine import Rejection
from gateway.errors import InvalidInput, Rejected, Unavailable
from gateway.protos import pb
from gateway.service import SettlementService
from telemetry import metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

DOMAIN = "medsettle.v1"
STATUS_OF = {  # everything else a client can cause is FAILED_PRECONDITION
    Rejection.MESSAGE_ID_REUSED: code_pb2.ALREADY_EXISTS,
    Rejection.SETTLEMENT_NOT_FOUND: code_pb2.NOT_FOUND,
    Rejection.PERSON_BUSY: code_pb2.ABORTED,
}
DEPENDENCY_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, Unavailable)
DEADLINE_MARGIN_S = 0.02  # answer UNAVAILABLE this long before the caller's deadline, not after it
REQUEST_TIMEOUT_MAX_S = 5.0  # no request holds a connection longer, deadline or not


def status_for(exc: Exception) -> status_pb2.Status:
    if isinstance(exc, InvalidInput):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations
            ]
        )
        code, message = code_pb2.INVALID_ARGUMENT, str(exc)
    elif isinstance(exc, Rejected):
        metadata = {"code": str(int(exc.code))}
        if exc.line_no is not None:
            metadata["line_no"] = str(exc.line_no)
        detail = error_details_pb2.ErrorInfo(reason=exc.code.name, domain=DOMAIN, metadata=metadata)
        code, message = STATUS_OF.get(exc.code, code_pb2.FAILED_PRECONDITION), str(exc)
    else:
        detail = error_details_pb2.ErrorInfo(reason="DEPENDENCY_UNAVAILABLE", domain=DOMAIN)
        code, message = code_pb2.UNAVAILABLE, "settlement store unavailable; outcome unknown: query or retry"
    packed = any_pb2.Any()
    packed.Pack(detail)
    return status_pb2.Status(code=code, message=message, details=[packed])


async def guarded(context: grpc.aio.ServicerContext, service: str, method: str, work: Awaitable[T]) -> T:
    """Runs one RPC within its deadline, maps failures to statuses, and counts it (grpc_server_*)."""
    labels = ("unary", service, method)
    metrics.GRPC_STARTED.labels(*labels).inc()
    started = time.perf_counter()
    code = "UNKNOWN"
    fields: dict[str, Any] = {"request_id": secrets.token_hex(8), "rpc": method}
    token = logs.request_fields.set(fields)
    remaining = context.time_remaining()
    timeout = (
        REQUEST_TIMEOUT_MAX_S
        if remaining is None
        else min(REQUEST_TIMEOUT_MAX_S, remaining - DEADLINE_MARGIN_S)
    )
    try:
        async with asyncio.timeout(max(timeout, 0.001)):  # no extra task per request, unlike wait_for
            result = await work
        code = "OK"
        return result
    except (InvalidInput, Rejected) as exc:
        status = status_for(exc)
        code = code_pb2.Code.Name(status.code)
        if isinstance(exc, Rejected):
            metrics.REJECTIONS.labels(exc.code.name).inc()
            fields["reason"] = exc.code.name
        await context.abort_with_status(rpc_status.to_status(status))
    except (TimeoutError, *DEPENDENCY_ERRORS) as exc:
        log.warning("dependency failure: %r", exc)
        code = "UNAVAILABLE"
        metrics.DEPENDENCY_FAILURES.labels(dependency_of(exc)).inc()
        await context.abort_with_status(rpc_status.to_status(status_for(Unavailable(str(exc)))))
    finally:
        elapsed = time.perf_counter() - started
        metrics.GRPC_HANDLED.labels(*labels, code).inc()
        metrics.GRPC_SECONDS.labels(*labels).observe(elapsed)
        logs.request_fields.reset(token)
        if logs.REQUEST_LOG.isEnabledFor(logging.INFO):
            fields.update(outcome=code, latency_ms=round(elapsed * 1000, 3))
            logs.REQUEST_LOG.info("request", extra=fields)
    raise AssertionError("abort_with_status returns only by raising")


def dependency_of(exc: BaseException) -> str:
    if isinstance(exc, Unavailable) and "ledger" in str(exc):
        return "ledger"
    return "timeout" if isinstance(exc, TimeoutError) else "redis"


def person_or_none(request: Any, violations: list[tuple[str, str]]) -> codec.PersonRef | None:
    if request.HasField("person"):
        violations += codec.person_violations(request.person)
        return codec.decode_person(request.person)
    if request.WhichOneof("target") == "original_message_id":
        violations.append(("person.card_no", "required with original_message_id"))
    return None


def target_violations(request: Any) -> list[tuple[str, str]]:
    which = request.WhichOneof("target")
    if which is None:
        return [("settlement_id", "a settlement_id or an original_message_id is required")]
    limit = codec.MESSAGE_ID_LEN_MAX if which == "original_message_id" else codec.CODE_LEN_MAX
    return codec.text_violation(getattr(request, which), which, True, limit)


def decode_lookup(request: Any) -> tuple[codec.Envelope, Target]:
    """Reverse, Refund and GetSettlement: the envelope, and the target (with the person when the
    target is a message id)."""
    violations = codec.envelope_violations(request.envelope) + target_violations(request)
    ref = person_or_none(request, violations)
    if violations:
        raise InvalidInput(violations)
    return codec.decode_envelope(request.envelope), Target(
        request.settlement_id, request.original_message_id, ref
    )


def target_hash(request: Any, *more: Any) -> str:
    """A reversal or refund is the same request again when it names the same target (and lines)."""
    which = request.WhichOneof("target")
    target = pb.ReverseRequest(**{which: getattr(request, which)})
    return codec.payload_hash(target, *more)


class SettlementServicer:
    def __init__(self, service: SettlementService, corrections: CorrectionService) -> None:
        self.service = service
        self.corrections = corrections

    def ready(self) -> None:
        if not self.service.static.snapshot.ready:
            raise Unavailable("no policy, catalog or institution data is loaded")

    async def QueryEligibility(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            violations = codec.envelope_violations(request.envelope) + codec.person_violations(request.person)
            if violations:
                raise InvalidInput(violations)
            self.ready()
            env, ref = codec.decode_envelope(request.envelope), codec.decode_person(request.person)
            return await self.service.eligibility(env, ref)

        return await guarded(context, "medsettle.v1.SettlementService", "QueryEligibility", work())

    async def PreSettle(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            env, ref, bill = codec.decode_settle(request)
            self.ready()
            return await self.service.presettle(env, ref, bill)

        return await guarded(context, "medsettle.v1.SettlementService", "PreSettle", work())

    async def Settle(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        async def work() -> bytes:
            env, ref, bill = codec.decode_settle(request)
            self.ready()
            settled = await self.service.settle(
                env, ref, bill, codec.payload_hash(request.person, request.bill)
            )
            return settled.response  # stored bytes, sent as they are (see passthrough)

        return await guarded(context, "medsettle.v1.SettlementService", "Settle", work())

    async def Reverse(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        async def work() -> bytes:
            env, target = decode_lookup(request)
            self.ready()
            return await self.corrections.reverse(env, target, target_hash(request))

        return await guarded(context, "medsettle.v1.SettlementService", "Reverse", work())

    async def Refund(self, request: Any, context: grpc.aio.ServicerContext) -> bytes:
        async def work() -> bytes:
            env, target = decode_lookup(request)
            lines = codec.refund_lines(request)
            self.ready()
            digest = target_hash(request, pb.RefundRequest(lines=request.lines))
            return await self.corrections.refund(env, target, lines, digest)

        return await guarded(context, "medsettle.v1.SettlementService", "Refund", work())

    async def GetSettlement(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            env, target = decode_lookup(request)
            self.ready()
            return await self.corrections.get(env, target)

        return await guarded(context, "medsettle.v1.SettlementService", "GetSettlement", work())


class LedgerServicer:
    def __init__(self, service: Any) -> None:
        self.service = service  # gateway.ledger_service.LedgerService

    async def Reconcile(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            violations = codec.envelope_violations(request.envelope)
            if violations:
                raise InvalidInput(violations)
            return await self.service.reconcile(codec.decode_envelope(request.envelope), request)

        return await guarded(context, "medsettle.v1.LedgerService", "Reconcile", work())

    async def GetStatement(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> Any:
            violations = codec.envelope_violations(request.envelope)
            if violations:
                raise InvalidInput(violations)
            return await self.service.statement(codec.decode_envelope(request.envelope), request.month)

        return await guarded(context, "medsettle.v1.LedgerService", "GetStatement", work())


class DiagnosticsServicer:
    async def Ping(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.PingResponse()


def passthrough(message: Any) -> bytes:
    """Responses stored for idempotency are sent as the stored bytes, so a retry gets the original
    answer byte for byte; freshly built messages are serialised as usual."""
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def handlers(
    servicer: SettlementServicer, ledger: LedgerServicer, diagnostics: DiagnosticsServicer
) -> list[grpc.GenericRpcHandler]:
    methods = pb.DESCRIPTOR.services_by_name["SettlementService"].methods_by_name
    ledger_methods = pb.DESCRIPTOR.services_by_name["LedgerService"].methods_by_name

    def unary(fn: Callable[..., Any], request_type: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=request_type.FromString, response_serializer=passthrough
        )

    settlement = {
        name: unary(getattr(servicer, name), getattr(pb, methods[name].input_type.name)) for name in methods
    }
    return [
        grpc.method_handlers_generic_handler("medsettle.v1.SettlementService", settlement),
        grpc.method_handlers_generic_handler(
            "medsettle.v1.LedgerService",
            {
                name: unary(getattr(ledger, name), getattr(pb, ledger_methods[name].input_type.name))
                for name in ledger_methods
            },
        ),
        grpc.method_handlers_generic_handler(
            "medsettle.v1.DiagnosticsService", {"Ping": unary(diagnostics.Ping, pb.PingRequest)}
        ),
    ]
