"""The gRPC edge: who is calling (the client certificate), read and decode the body (within a read
deadline, undecodable bytes answered INVALID_ARGUMENT), check the envelope against the caller, apply the
limits, call the service layer, encode, and map every failure to one status with rich details. Every
call, on every service (health and reflection included), is counted in grpc_server_* and logged once.
No business rule lives here."""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import redis.exceptions
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway import codec, logs
from gateway.correction_service import CorrectionService, Target
from gateway.edge.identity import ROLE_BUREAU, Identity, IdentityReader, authorize, authorize_role
from gateway.edge.limits import REFUSALS, EdgeLimits, Limiter
from gateway.edge.refusals import Refused, Undecodable
from gateway.engine import Rejection
from gateway.errors import InvalidInput, Rejected, Unavailable
from gateway.protos import claims_pb, pb
from gateway.service import SettlementService
from telemetry import metrics

log = logging.getLogger(__name__)

DOMAIN = "medsettle.v1"
STATUS_OF = {  # everything else a client can cause is FAILED_PRECONDITION
    Rejection.MESSAGE_ID_REUSED: code_pb2.ALREADY_EXISTS,
    Rejection.SETTLEMENT_NOT_FOUND: code_pb2.NOT_FOUND,
    Rejection.PERSON_BUSY: code_pb2.ABORTED,
}
DEPENDENCY_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, Unavailable)
DEADLINE_MARGIN_S = 0.02  # answer UNAVAILABLE this long before the caller's deadline, not after it
REQUEST_TIMEOUT_MAX_S = 5.0  # no request holds a connection longer, deadline or not
# who may call a route: an institution for itself, any client, the bureau's finance office
INSTITUTION, ANY, BUREAU = "institution", "any", "bureau"


def packed(detail: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(detail)
    return out


def status_for(exc: Exception) -> status_pb2.Status:
    if isinstance(exc, InvalidInput):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations
            ]
        )
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[packed(detail)])
    if isinstance(exc, Undecodable):
        detail = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=exc.message_name, description=str(exc))
            ]
        )
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[packed(detail)])
    if isinstance(exc, Refused):
        details = [packed(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN))]
        if exc.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(max(1, round(exc.retry_after_s * 1000)))
            details.append(packed(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=exc.code, message=exc.message, details=details)
    if isinstance(exc, Rejected):
        metadata = {"code": str(int(exc.code))}
        if exc.line_no is not None:
            metadata["line_no"] = str(exc.line_no)
        detail = error_details_pb2.ErrorInfo(reason=exc.code.name, domain=DOMAIN, metadata=metadata)
        code = STATUS_OF.get(exc.code, code_pb2.FAILED_PRECONDITION)
        return status_pb2.Status(code=code, message=str(exc), details=[packed(detail)])
    detail = error_details_pb2.ErrorInfo(reason="DEPENDENCY_UNAVAILABLE", domain=DOMAIN)
    message = "settlement store unavailable; outcome unknown: query or retry"
    return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[packed(detail)])


class BadBody:
    """What the request deserializer returns for bytes protobuf cannot parse: the deserializer never
    raises (grpcio answers a raising one with UNKNOWN, an uncounted traceback and no request line)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def safe_decoder(message_type: Any) -> Callable[[bytes], Any]:
    parse = message_type.FromString

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, invalid UTF-8 in a string field, recursion depth ...
            return BadBody(type(exc).__name__)

    return decode


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    method: str
    request_type: Any  # the protobuf message class
    run: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
    scope: str = INSTITUTION
    person_lookup: bool = False  # counts "no such person" answers against the institution
    per_card: bool = False  # QueryEligibility: limited per card per minute

    @property
    def message_name(self) -> str:
        return str(self.request_type.DESCRIPTOR.full_name)


class Edge:
    """Per process: the identity reader (None on a plaintext server) and the limiter."""

    def __init__(self, limits: EdgeLimits, identities: IdentityReader | None) -> None:
        self.limits = limits
        self.identities = identities
        self.limiter = Limiter(limits)
        self.body_read_timeout_s = limits.body_read_timeout_ms / 1000

    async def read(self, route: Route, context: grpc.aio.ServicerContext) -> Any:
        """The request body within body_read_timeout_ms of the headers: a client that opens a stream and
        never sends its body holds a stream and a task only that long."""
        try:
            async with asyncio.timeout(self.body_read_timeout_s):
                message = await context.read()
        except TimeoutError:
            REFUSALS.labels("body_read_timeout_ms").inc()
            raise Refused(
                code_pb2.DEADLINE_EXCEEDED,
                "BODY_READ_TIMEOUT",
                f"no request body within {self.limits.body_read_timeout_ms} ms",
            ) from None
        if message is grpc.aio.EOF:
            raise Undecodable(route.message_name, "no message before the end of the stream")
        if isinstance(message, BadBody):
            raise Undecodable(route.message_name)
        return message

    def identity(self, context: grpc.aio.ServicerContext) -> Identity | None:
        return None if self.identities is None else self.identities.of(context)

    def admit(self, route: Route, identity: Identity | None, request: Any) -> str | None:
        """Authorization and limits before any business code: returns the key admitted (to release)."""
        if route.scope == INSTITUTION:
            authorize(identity, request.envelope)
            key: str = request.envelope.institution_code
            if route.person_lookup:
                self.limiter.misses_left(key)
            if route.per_card and request.HasField("person"):
                which = request.person.WhichOneof("ref")
                if which:
                    self.limiter.eligibility(getattr(request.person, which))
        elif route.scope == BUREAU:
            authorize_role(identity, ROLE_BUREAU)
            key = f"role:{ROLE_BUREAU}"
        elif identity is not None:
            key = identity.institution or f"role:{identity.role}"
        else:
            return None  # plaintext health probes and Pings: only the process-wide caps apply
        self.limiter.admit(key)
        return key

    async def guarded(self, route: Route, context: grpc.aio.ServicerContext) -> Any:
        """Runs one unary RPC within its deadline, maps failures to statuses, counts it (grpc_server_*)
        and logs it once."""
        labels = ("unary", route.service, route.method)
        metrics.child(metrics.GRPC_STARTED, *labels).inc()
        started = time.perf_counter()
        code = "UNKNOWN"
        fields: dict[str, Any] = {"request_id": secrets.token_hex(8), "rpc": route.method}
        token = logs.request_fields.set(fields)
        admitted: str | None = None
        remaining = context.time_remaining()
        timeout = (
            REQUEST_TIMEOUT_MAX_S
            if remaining is None
            else min(REQUEST_TIMEOUT_MAX_S, remaining - DEADLINE_MARGIN_S)
        )
        failure: status_pb2.Status | None = None
        try:
            identity = self.identity(context)
            if identity is not None:
                fields.update(identity.log_fields())
            request = await self.read(route, context)
            admitted = self.admit(route, identity, request)
            async with asyncio.timeout(max(timeout, 0.001)):  # no extra task per request, unlike wait_for
                result = await route.run(request, context)
            code = "OK"
            return result
        except (InvalidInput, Rejected, Undecodable, Refused) as exc:
            failure = status_for(exc)
            code = code_pb2.Code.Name(failure.code)
            self.note_failure(exc, fields, admitted)
        except (TimeoutError, *DEPENDENCY_ERRORS) as exc:
            log.warning("dependency failure: %r", exc)
            code = "UNAVAILABLE"
            metrics.DEPENDENCY_FAILURES.labels(dependency_of(exc)).inc()
            failure = status_for(Unavailable(str(exc)))
        except grpc.aio.AbortError:  # a foreign servicer (health) aborted with its own status
            code = aborted_code(context)
            raise
        except asyncio.CancelledError:  # the client went away
            code = "CANCELLED"
            raise
        except Exception as exc:  # a bug or a broken invariant: never UNKNOWN, never INTERNAL
            code = aborted_code(context)
            if code not in ("UNKNOWN", "OK"):  # the handler set its answer first (UNIMPLEMENTED ...)
                raise
            code = "UNAVAILABLE"
            failure = fault(route, exc, fields)
        finally:
            # counted and logged before the status leaves (abort sends it at once): whoever sees the
            # answer can already see it in the metrics
            if admitted is not None:
                self.limiter.release(admitted)
            elapsed = time.perf_counter() - started
            metrics.child(metrics.GRPC_HANDLED, *labels, code).inc()
            metrics.child(metrics.GRPC_SECONDS, *labels).observe(elapsed)
            logs.request_fields.reset(token)
            if logs.REQUEST_LOG.isEnabledFor(logging.INFO):
                fields.update(outcome=code, latency_ms=round(elapsed * 1000, 3))
                logs.REQUEST_LOG.info("request", extra=fields)
        assert failure is not None  # every branch that does not return or raise has set it
        await context.abort_with_status(rpc_status.to_status(failure))
        raise AssertionError("abort_with_status returns only by raising")

    def note_failure(self, exc: Exception, fields: dict[str, Any], admitted: str | None) -> None:
        if isinstance(exc, Rejected):
            metrics.REJECTIONS.labels(exc.code.name).inc()
            fields["reason"] = exc.code.name
            if exc.code is Rejection.PERSON_NOT_FOUND and admitted is not None:
                self.limiter.missed(admitted)
        elif isinstance(exc, Undecodable):
            fields["reason"] = "UNDECODABLE"
            REFUSALS.labels("undecodable").inc()
        elif isinstance(exc, Refused):
            fields["reason"] = exc.reason
            if exc.retry_after_s is None and exc.reason != "BODY_READ_TIMEOUT":  # limits count themselves
                REFUSALS.labels(exc.reason.lower()).inc()

    async def guarded_stream(
        self, route: Route, kind: str, context: grpc.aio.ServicerContext, requests_streamed: bool
    ) -> None:
        """A streaming RPC of a foreign servicer (health Watch, reflection): the same identity check,
        body read deadline (first message), decoding and counting; responses go out with context.write."""
        labels = (kind, route.service, route.method)
        metrics.child(metrics.GRPC_STARTED, *labels).inc()
        started = time.perf_counter()
        code = "UNKNOWN"
        fields: dict[str, Any] = {"request_id": secrets.token_hex(8), "rpc": route.method}
        admitted: str | None = None
        failure: status_pb2.Status | None = None
        try:
            identity = self.identity(context)
            if identity is not None:
                fields.update(identity.log_fields())
            first = await self.read(route, context)
            admitted = self.admit(route, identity, first)
            argument: Any = self.stream_of(route, context, first) if requests_streamed else first
            result = route.run(argument, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    await context.write(response)
            else:
                await result
            code = "OK"
        except (Undecodable, Refused) as exc:
            failure = status_for(exc)
            code = code_pb2.Code.Name(failure.code)
            self.note_failure(exc, fields, admitted)
        except grpc.aio.AbortError:
            code = aborted_code(context)
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = raised_code(context, route)
            raise
        finally:
            if admitted is not None:
                self.limiter.release(admitted)
            elapsed = time.perf_counter() - started
            metrics.child(metrics.GRPC_HANDLED, *labels, code).inc()
            metrics.child(metrics.GRPC_SECONDS, *labels).observe(elapsed)
            if logs.REQUEST_LOG.isEnabledFor(logging.INFO):
                fields.update(outcome=code, latency_ms=round(elapsed * 1000, 3))
                logs.REQUEST_LOG.info("request", extra=fields)
        if failure is not None:
            await context.abort_with_status(rpc_status.to_status(failure))

    async def stream_of(
        self, route: Route, context: grpc.aio.ServicerContext, first: Any
    ) -> AsyncIterator[Any]:
        yield first
        while True:
            message = await context.read()  # later messages may come when the client likes
            if message is grpc.aio.EOF:
                return
            if isinstance(message, BadBody):
                raise Undecodable(route.message_name)
            yield message


def fault(route: Route, exc: Exception, fields: dict[str, Any]) -> status_pb2.Status:
    """An exception no branch expects (a bug, a broken money invariant): logged with its traceback and
    counted (medsettle_gateway_faults_total, alerted), answered UNAVAILABLE `GATEWAY_FAULT`: for a
    terminal that is "outcome unknown: query or resend with the same message id", which is the truth
    (a Settle's commit is atomic: it happened whole or not at all)."""
    log.exception("unexpected failure in %s/%s", route.service, route.method)
    metrics.GATEWAY_FAULTS.labels(route.method, type(exc).__name__).inc()
    fields["reason"] = "GATEWAY_FAULT"
    detail = error_details_pb2.ErrorInfo(reason="GATEWAY_FAULT", domain=DOMAIN)
    message = "the gateway failed on this request; outcome unknown: query, or resend with the same message id"
    return status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[packed(detail)])


def raised_code(context: grpc.aio.ServicerContext, route: Route) -> str:
    """What grpcio answers for an exception out of a handler: the code the handler set (the generated
    base servicer sets UNIMPLEMENTED, then raises), else UNKNOWN, a bug, logged with its traceback so
    the system-error alert has something to point at."""
    code = aborted_code(context)
    if code in ("UNKNOWN", "OK"):
        log.exception("unexpected failure in %s/%s", route.service, route.method)
        return "UNKNOWN"
    return code


def aborted_code(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return code_pb2.Code.Name(int(code)) if code is not None else "UNKNOWN"


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
    """Decode, validate, call the service. The edge (Edge.guarded) has already checked who calls."""

    def __init__(self, service: SettlementService, corrections: CorrectionService) -> None:
        self.service = service
        self.corrections = corrections

    def ready(self) -> None:
        if not self.service.static.snapshot.ready:
            raise Unavailable("no policy, catalog or institution data is loaded")

    async def QueryEligibility(self, request: Any, context: Any = None) -> Any:
        violations = codec.envelope_violations(request.envelope) + codec.person_violations(request.person)
        if violations:
            raise InvalidInput(violations)
        self.ready()
        env, ref = codec.decode_envelope(request.envelope), codec.decode_person(request.person)
        return await self.service.eligibility(env, ref)  # the ID number masked by edge/privacy.py

    def today(self) -> Any:
        return self.service.ctx.now().date()  # the gateway's date in its zone: dates are checked by it

    async def PreSettle(self, request: Any, context: Any = None) -> Any:
        env, ref, bill = codec.decode_settle(request, self.today())
        self.ready()
        return await self.service.presettle(env, ref, bill)

    async def Settle(self, request: Any, context: Any = None) -> bytes:
        env, ref, bill = codec.decode_settle(request, self.today())
        self.ready()
        settled = await self.service.settle(env, ref, bill, codec.payload_hash(request.person, request.bill))
        return settled.response  # stored bytes, sent as they are (see passthrough)

    async def Reverse(self, request: Any, context: Any = None) -> bytes:
        env, target = decode_lookup(request)
        self.ready()
        return await self.corrections.reverse(env, target, target_hash(request))

    async def Refund(self, request: Any, context: Any = None) -> bytes:
        env, target = decode_lookup(request)
        lines = codec.refund_lines(request)
        self.ready()
        digest = target_hash(request, pb.RefundRequest(lines=request.lines))
        return await self.corrections.refund(env, target, lines, digest)

    async def GetSettlement(self, request: Any, context: Any = None) -> Any:
        env, target = decode_lookup(request)
        self.ready()
        return await self.corrections.get(env, target)


class LedgerServicer:
    def __init__(self, service: Any) -> None:
        self.service = service  # gateway.ledger_service.LedgerService

    async def Reconcile(self, request: Any, context: Any = None) -> Any:
        violations = codec.envelope_violations(request.envelope)
        if violations:
            raise InvalidInput(violations)
        return await self.service.reconcile(codec.decode_envelope(request.envelope), request)

    async def GetStatement(self, request: Any, context: Any = None) -> Any:
        violations = codec.envelope_violations(request.envelope)
        if violations:
            raise InvalidInput(violations)
        return await self.service.statement(codec.decode_envelope(request.envelope), request.month)

    async def GetClearing(self, request: Any, context: Any = None) -> Any:
        return await self.service.clearing(request)


class DiagnosticsServicer:
    async def Ping(self, request: Any, context: Any = None) -> Any:
        return pb.PingResponse()


def passthrough(message: Any) -> bytes:
    """Responses stored for idempotency are sent as the stored bytes, so a retry gets the original
    answer byte for byte; freshly built messages are serialised as usual."""
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


PERSON_LOOKUPS = frozenset({"QueryEligibility", "PreSettle", "Settle", "Reverse", "Refund", "GetSettlement"})


def unary_handler(edge: Edge, route: Route, serializer: Callable[[Any], bytes]) -> grpc.RpcMethodHandler:
    """Registered as request-streaming so the handler starts when the headers arrive and reads the body
    itself under body_read_timeout_ms; on the wire it is an ordinary unary call."""

    async def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await edge.guarded(route, context)

    return grpc.stream_unary_rpc_method_handler(
        behaviour, request_deserializer=safe_decoder(route.request_type), response_serializer=serializer
    )


def handlers(
    edge: Edge,
    servicer: SettlementServicer,
    ledger: LedgerServicer,
    diagnostics: DiagnosticsServicer,
    claims: Any = None,  # gateway.claim_service.ClaimServicer
) -> list[grpc.GenericRpcHandler]:
    out = []
    if claims is not None:  # agency staff (role bureau) submit claims after the fact
        methods = claims_pb.DESCRIPTOR.services_by_name["ClaimService"].methods_by_name
        full = f"{DOMAIN}.ClaimService"
        routes = {
            name: Route(
                full, name, getattr(claims_pb, methods[name].input_type.name), getattr(claims, name), BUREAU
            )
            for name in methods
        }
        out.append(
            grpc.method_handlers_generic_handler(
                full, {name: unary_handler(edge, r, passthrough) for name, r in routes.items()}
            )
        )
    services = (("SettlementService", servicer), ("LedgerService", ledger), ("ClearingService", ledger))
    for service_name, target in services:
        methods = pb.DESCRIPTOR.services_by_name[service_name].methods_by_name
        full = f"{DOMAIN}.{service_name}"
        routes = {
            name: Route(
                full, name, getattr(pb, methods[name].input_type.name), getattr(target, name),
                person_lookup=name in PERSON_LOOKUPS and service_name == "SettlementService",
                per_card=name == "QueryEligibility",
                scope=BUREAU if service_name == "ClearingService" else INSTITUTION,
            )
            for name in methods
        }  # fmt: skip
        out.append(
            grpc.method_handlers_generic_handler(
                full, {name: unary_handler(edge, r, passthrough) for name, r in routes.items()}
            )
        )
    ping = Route(f"{DOMAIN}.DiagnosticsService", "Ping", pb.PingRequest, diagnostics.Ping, scope=ANY)
    out.append(
        grpc.method_handlers_generic_handler(ping.service, {"Ping": unary_handler(edge, ping, passthrough)})
    )
    return out


class Collector:
    """Stands in for the server when a generated add_*_to_server function registers a foreign servicer
    (health, reflection), so its handlers can be wrapped by the edge before the server sees them."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services[service] = handlers


def wrap_foreign(
    edge: Edge, service: str, methods: dict[str, grpc.RpcMethodHandler]
) -> grpc.GenericRpcHandler:
    """Health and reflection behind the edge: safe decoding, body read deadline, identity, counting."""
    wrapped: dict[str, grpc.RpcMethodHandler] = {}
    for name, handler in methods.items():
        original = (
            handler.unary_unary or handler.unary_stream or handler.stream_stream or handler.stream_unary
        )
        request_type = request_type_of(handler)
        route = Route(service, name, request_type, original, scope=ANY)
        decoder = safe_decoder(request_type)
        if handler.unary_unary is not None:
            wrapped[name] = unary_handler(edge, route, handler.response_serializer)
            continue
        kind = "bidi_stream" if handler.request_streaming else "server_stream"

        def make(route: Route, kind: str, streamed: bool) -> Callable[..., Awaitable[None]]:
            async def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> None:
                await edge.guarded_stream(route, kind, context, streamed)

            return behaviour

        wrapped[name] = grpc.stream_stream_rpc_method_handler(
            make(route, kind, bool(handler.request_streaming)),
            request_deserializer=decoder,
            response_serializer=handler.response_serializer,
        )
    return grpc.method_handlers_generic_handler(service, wrapped)


def request_type_of(handler: grpc.RpcMethodHandler) -> Any:
    """The message class behind a generated handler's deserializer (its bound FromString)."""
    deserializer = handler.request_deserializer
    owner = getattr(deserializer, "__self__", None)
    if owner is None or not hasattr(owner, "DESCRIPTOR"):
        raise TypeError(f"cannot tell the request message type of {deserializer!r}")
    return owner
