"""The HTTP front end of the national interface, on aiohttp.

Why aiohttp: the gateway is one asyncio event loop per process (grpc.aio, redis.asyncio); aiohttp's
server runs in that same loop, so a national message calls the servicer objects of the process directly,
with no thread hop and no second copy of any state. It is the longest-maintained asyncio HTTP server
(aio-libs, releases every few weeks), parses HTTP/1.1 with its C parser (llhttp), shares a port
between processes (SO_REUSEPORT, as the gRPC server does), and has the server-side limits we need:
`client_max_size` for bodies, keep-alive and header limits. Starlette or FastAPI would need an ASGI
server (uvicorn) with its own loop and process model beside the gateway's.

One request: the body within body_read_timeout_ms and body_bytes_max, its JSON (numbers kept as text),
the envelope, the caller proven (client certificate or signature) and bound to fixmedins_code, the
edge's per-institution limits (shared with gRPC), the sign-in, the message id claimed, the transaction
within request_timeout_ms, the answer kept under the message id. Every answer is HTTP 200 with the
national envelope: infcode 0, -2 or -1; never a 500."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from gateway import logs
from gateway.edge.identity import Identity, IdentityReader
from gateway.edge.limits import Limiter
from gateway.edge.refusals import Refused
from gateway.nhsa import amounts, envelope
from gateway.nhsa.codes import NationalRejection as NR
from gateway.nhsa.codes import tagged
from gateway.nhsa.envelope import REJECTED, SYSTEM_ERROR, NhsaError, Request
from gateway.nhsa.signing import Signatures, lower_headers
from gateway.nhsa.transactions import (
    AFTER_ANSWER,
    DEPENDENCY_ERRORS,
    Translation,
    request_hash,
    unknown_outcome,
)
from telemetry import metrics

log = logging.getLogger(__name__)

CALL_PATH = "/fsi/api/rsfComIfsService/callService"
REST_PATHS = {  # the per-transaction paths of provincial gateways
    "/fsi/api/signInSignOutService/signIn": "9001",
    "/fsi/api/signInSignOutService/signOut": "9002",
    "/fsi/api/fsiPsnInfoService/queryPsnInfo": "1101",
    "/fsi/api/outpatientDocInfoService/outpatientRregistration": "2201",
    "/fsi/api/outpatientDocInfoService/outpatientRegistrationCancel": "2202",
    "/fsi/api/outpatientDocInfoService/outpatientMdtrtinfoUpA": "2203",
    "/fsi/api/outpatientDocInfoService/outpatientFeeListUp": "2204",
    "/fsi/api/outpatientDocInfoService/outpatientFeeListUpCancel": "2205",
    "/fsi/api/outpatientSettleService/preSettletmentA": "2206",
    "/fsi/api/outpatientSettleService/saveSettletmentV2": "2207",
    "/fsi/api/outpatientSettleService/cancleSettletment": "2208",
    "/fsi/api/hospitalRegisterService/hospitalRegisterSave": "2401",
    "/fsi/api/dischargeProcessService/dischargeProcess": "2402",
    "/fsi/api/inpatientDocInfoService/inpatientFeeListUp": "2301",
    "/fsi/api/inpatientDocInfoService/inpatientFeeListUpCancel": "2302",
    "/fsi/api/hospSettService/preSetl": "2303",
    "/fsi/api/hospSettService/setl": "2304",
    "/fsi/api/hospSettService/setlCancel": "2305",
    "/fsi/api/drugStoreSettleService/preSettle": "2101",
    "/fsi/api/drugStoreSettleService/settle": "2102",
    "/fsi/api/drugStoreSettleService/cancelSettle": "2103",
    "/fsi/api/reverseService/revsMethod": "2601",
    "/fsi/api/settleInfoQueryService/querySetlInfo": "5203",
    "/fsi/api/ybSettlementStmtService/stmtTotal": "3201",
    "/fsi/api/ybSettlementStmtService/stmtDetail": "3202",
}
JSON_TYPE = "application/json"

HANDLED = Counter(
    "medsettle_nhsa_requests_total",
    "National interface messages answered, by infno and infcode.",
    ["infno", "infcode"],
)
SECONDS = Histogram(
    "medsettle_nhsa_request_seconds",
    "National interface message latency, by infno.",
    ["infno"],
    buckets=metrics.LATENCY_BUCKETS_S,
)


class PeerCertificate:
    """Stands in for a gRPC context so the gRPC edge's IdentityReader (cache, CRL, expiry) reads the
    certificate the TLS handshake of this HTTP connection verified."""

    __slots__ = ("pem",)

    def __init__(self, pem: bytes) -> None:
        self.pem = pem

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_pem_cert": [self.pem]}


def server_ssl(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """TLS with the gateway's server certificate; a client certificate of the gateway's CA is asked
    for and verified when offered (an HIS behind a front-end processor signs instead)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class NationalFrontend:
    def __init__(
        self,
        translation: Translation,
        signatures: Signatures,
        limiter: Limiter | None,
        identities: IdentityReader | None,
        now: Callable[[], datetime],
    ) -> None:
        self.t, self.signatures, self.limiter, self.identities, self.now = (
            translation,
            signatures,
            limiter,
            identities,
            now,
        )
        self.limits = translation.limits
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._pems: dict[bytes, bytes] = {}

    # ---------------------------------------------------------------- serving

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.body_bytes_max)
        app.router.add_post(CALL_PATH, self.handle)
        for path, infno in REST_PATHS.items():
            app.router.add_post(path, self.rest(infno))
        app.router.add_post("/fsi/api/trans/{infno}", self.by_infno)
        app.router.add_route("*", "/{tail:.*}", self.unknown_path)
        return app

    async def start(self, listen: str, tls: ssl.SSLContext | None) -> NationalFrontend:
        host, _, port = listen.rpartition(":")
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host or "127.0.0.1", int(port), ssl_context=tls, reuse_port=True)
        await site.start()
        server = site._server  # the bound socket: the port when 0 asked for any
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else int(port)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def rest(self, infno: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return await self.handle(request, infno)

        return handler

    async def by_infno(self, request: web.Request) -> web.Response:
        infno = request.match_info["infno"]
        if infno not in self.t.handlers:
            return self.reply(
                self.error_answer(
                    "",
                    self.now(),
                    NhsaError(
                        REJECTED, f"infno: {infno[:8]} is not served {tagged(NR.TRANSACTION_UNSUPPORTED)}"
                    ),
                ),
                "unknown",
            )
        return await self.handle(request, infno)

    async def unknown_path(self, request: web.Request) -> web.Response:
        error = NhsaError(
            REJECTED,
            f"path: {request.method} {request.path[:80]} is not a national interface"
            f" path; POST to {CALL_PATH} {tagged(NR.TRANSACTION_UNSUPPORTED)}",
        )
        return self.reply(self.error_answer("", self.now(), error), "unknown", status=404)

    # ---------------------------------------------------------------- one message

    def certified(self, request: web.Request) -> Identity | None:
        if self.identities is None or request.transport is None:
            return None
        ssl_object = request.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            return None
        pem = self._pems.get(der)
        if pem is None:
            pem = ssl.DER_cert_to_PEM_cert(der).encode()
            if len(self._pems) > 20_000:
                self._pems.clear()
            self._pems[der] = pem
        return self.identities.of(PeerCertificate(pem))

    async def handle(self, request: web.Request, infno_of_path: str | None = None) -> web.Response:
        started = time.perf_counter()
        received = self.now()
        infno, region = infno_of_path or "unknown", ""
        admitted: str | None = None
        fields: dict[str, Any] = {"rpc": "nhsa"}
        token = logs.request_fields.set(fields)
        try:
            body = await self.body(request)
            try:
                parsed = amounts.loads(body)
            except (ValueError, RecursionError) as exc:
                raise envelope.rejected("body", f"not JSON: {str(exc)[:80]}") from None
            req = envelope.parse(parsed, infno_of_path)
            infno, region = req.infno, req.get("mdtrtarea_admvs")
            fields.update(infno=infno, institution=req.institution, message_id=req.msgid)
            if infno not in self.t.handlers:
                raise envelope.rejected("infno", f"{infno[:8]} is not served", NR.TRANSACTION_UNSUPPORTED)
            if (
                len(body) > envelope.INPUT_CHARS_MAX
                and len(amounts.dumps(req.input)) > envelope.INPUT_CHARS_MAX
            ):
                raise envelope.rejected("input", f"more than {envelope.INPUT_CHARS_MAX} characters")
            identity = self.certified(request)
            if identity is not None:
                fields.update(identity.log_fields())
            self.signatures.prove(
                identity.institution if identity is not None else None,
                lower_headers(request.headers),
                body,
                req.institution,
            )
            if self.limiter is not None:
                self.limiter.admit(req.institution)
                admitted = req.institution
            text = await self.answer(req, received)
        except NhsaError as exc:
            text = self.error_answer(region, received, exc)
        except Refused as exc:  # a limit of the edge, or a revoked or expired certificate
            text = self.error_answer(region, received, NhsaError(REJECTED, f"{exc.message} ({exc.reason})"))
        except (TimeoutError, *DEPENDENCY_ERRORS) as exc:
            text = self.error_answer(region, received, unknown_outcome(exc))
        except Exception as exc:  # a bug: never a 500, the outcome is unknown to the HIS
            log.exception("unexpected failure in national transaction %s", infno)
            metrics.GATEWAY_FAULTS.labels(f"nhsa:{infno}", type(exc).__name__).inc()
            text = self.error_answer(region, received, unknown_outcome(exc))
        finally:
            if admitted is not None and self.limiter is not None:
                self.limiter.release(admitted)
            logs.request_fields.reset(token)
        label = infno if infno in self.t.handlers else "unknown"  # bounded: a sender cannot add labels
        SECONDS.labels(label).observe(time.perf_counter() - started)
        return self.reply(text, label)

    async def body(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self.limits.body_read_timeout_ms / 1000):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise envelope.rejected("body", f"more than {self.limits.body_bytes_max} bytes") from None
        except TimeoutError:
            raise envelope.rejected(
                "body", f"not received within {self.limits.body_read_timeout_ms} ms"
            ) from None

    async def answer(self, req: Request, received: datetime) -> str:
        """The message id is the idempotency key: the first answer of a success is kept and every resend
        of the same input gets it byte for byte; the same id with another input is refused."""
        await self.t.check_sign_in(req)
        digest = request_hash(req)
        store = self.t.store
        held = await store.claim_answer(req.institution, req.msgid, digest, self.limits.answer_pending_ms)
        if held is not None:
            if held.get("h") != digest:
                raise NhsaError(
                    REJECTED,
                    f"msgid: {req.msgid} of {req.institution} was used for a different"
                    " message (MESSAGE_ID_REUSED 403)",
                )
            if "a" in held:
                logs.note(duplicate=True)
                return str(held["a"])
            raise NhsaError(SYSTEM_ERROR, f"msgid: {req.msgid} is being answered now; {envelope_unknown()}")
        token = AFTER_ANSWER.set(None)
        try:
            async with asyncio.timeout(self.limits.request_timeout_ms / 1000):
                output = await self.t.handlers[req.infno](req)
            after = AFTER_ANSWER.get()
        except BaseException:
            await asyncio.shield(store.drop_claim(req.institution, req.msgid))
            raise
        finally:
            AFTER_ANSWER.reset(token)
        text = amounts.dumps(envelope.answer(req.get("mdtrtarea_admvs"), received, self.now(), 0, output))
        if after is not None:  # a settlement's finish, and the answer kept, in one script
            await asyncio.shield(after((req.institution, digest, text)))
        else:
            await asyncio.shield(store.keep_answer(req.institution, req.msgid, digest, text))
        return text

    def error_answer(self, region: str, received: datetime, error: NhsaError) -> str:
        if error.infcode == REJECTED:
            logs.note(reason=error.err_msg[:120])
        return amounts.dumps(
            envelope.answer(region, received, self.now(), error.infcode, None, error.err_msg)
        )

    def reply(self, text: str, infno: str, status: int = 200) -> web.Response:
        code = text[len('{"infcode":') : text.index(",")] if text.startswith('{"infcode":') else "?"
        HANDLED.labels(infno, code).inc()
        return web.Response(text=text, status=status, content_type=JSON_TYPE, charset="utf-8")


def envelope_unknown() -> str:
    return "query with 5203 or resend this msgid in a moment"
