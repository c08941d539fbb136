"""Every input gets an answer in the domain's terms: a body protobuf cannot parse (one byte 0x08, or a
string field holding 0xFF) is INVALID_ARGUMENT with a google.rpc.BadRequest naming the message, on every
RPC of every service the server has, health and reflection included; never UNKNOWN or INTERNAL. Each
is counted in grpc_server_handled_total and logged once, without a traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client import REGISTRY

from gateway import logs
from gateway.edge import certs
from gateway.protos import claims_pb, pb
from gateway.server import Gateway

from .conftest import HOSPITAL, status_of

pytestmark = pytest.mark.asyncio
Connect = Callable[..., grpc.aio.Channel]


def rpcs() -> list[tuple[str, str, Descriptor, str]]:
    """(service, method, request descriptor, kind) of every RPC the gateway serves."""
    out = []
    for module in (pb, claims_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [(service.full_name, m.name, m.input_type, "unary") for m in service.methods]
    for module in (health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                kind = ("bidi" if m.client_streaming else "server_stream") if m.server_streaming else "unary"
                out.append((service.full_name, m.name, m.input_type, kind))
    return out


RPCS = rpcs()


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def bad_utf8(message: Descriptor, depth: int = 0) -> bytes | None:
    """A body whose first reachable string field holds the byte 0xFF."""
    for f in message.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            return varint(f.number << 3 | 2) + b"\x01\xff"
        if f.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            inner = bad_utf8(f.message_type, depth + 1)
            if inner is not None:
                return varint(f.number << 3 | 2) + varint(len(inner)) + inner
    return None


def handled(service: str, method: str, code: str) -> float:
    for kind in ("unary", "server_stream", "bidi_stream"):
        labels = {"grpc_type": kind, "grpc_service": service, "grpc_method": method, "grpc_code": code}
        value = REGISTRY.get_sample_value("grpc_server_handled_total", labels)
        if value:
            return value
    return 0.0


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(old)


async def call_raw(ch: grpc.aio.Channel, service: str, method: str, kind: str, body: bytes) -> None:
    path = f"/{service}/{method}"
    if kind == "unary":
        await ch.unary_unary(path)(body, timeout=5)
    elif kind == "server_stream":
        async for _ in ch.unary_stream(path)(body, timeout=5):
            pass
    else:
        async for _ in ch.stream_stream(path)(iter([body]), timeout=5):
            pass


@pytest.mark.parametrize("body_kind", ["one byte 08", "invalid UTF-8"])
async def test_every_rpc_answers_undecodable_bytes_with_invalid_argument(
    tls_gateway: Gateway, connect: Connect, captured: io.StringIO, body_kind: str
) -> None:
    codes: dict[str, list[str]] = {}
    for name in (HOSPITAL, certs.ROLE_PROBE):  # a terminal and a probe: the same answers
        ch = connect(tls_gateway, name)
        for service, method, descriptor, kind in RPCS:
            body = b"\x08" if body_kind == "one byte 08" else bad_utf8(descriptor)
            if body is None:  # no string field (PingRequest): 0xFF has nowhere to be invalid
                continue
            before = handled(service, method, "INVALID_ARGUMENT")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call_raw(ch, service, method, kind, body)
            code, details = status_of(info.value)
            codes.setdefault(code.name, []).append(f"{service}/{method}")
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (service, method, info.value.details())
            assert descriptor.full_name in details["fields"], details
            assert "is not a valid" in details["fields"][descriptor.full_name]
            assert handled(service, method, "INVALID_ARGUMENT") == before + 1, "counted"
    assert set(codes) == {"INVALID_ARGUMENT"} and len(codes["INVALID_ARGUMENT"]) >= 2 * 9
    text = captured.getvalue()
    assert "Traceback" not in text and "Exception deserializing" not in text
    requests = [line for line in text.splitlines() if '"logger":"medsettle.request"' in line]
    assert len(requests) == len(codes["INVALID_ARGUMENT"]), "one request line per call"
    assert all('"outcome":"INVALID_ARGUMENT"' in line for line in requests)


async def test_an_empty_or_oversized_body_is_answered_in_the_domains_terms(
    tls_gateway: Gateway, connect: Connect
) -> None:
    ch = connect(tls_gateway, HOSPITAL)
    answers: list[Any] = []
    # an empty body is a valid empty SettleRequest, whose envelope names no institution; one over 1 MiB
    for body in (b"", b"\x0a" + varint(2 << 20) + b"\x00" * (2 << 20)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ch.unary_unary("/medsettle.v1.SettlementService/Settle")(body, timeout=5)
        answers.append(info.value.code())
    assert answers == [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED]


async def test_an_unknown_method_is_unimplemented(tls_gateway: Gateway, connect: Connect) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connect(tls_gateway, HOSPITAL).unary_unary("/medsettle.v1.SettlementService/Nope")(
            b"", timeout=5
        )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_watch_and_reflection_still_work_behind_the_edge(
    tls_gateway: Gateway, connect: Connect
) -> None:
    from grpc_health.v1 import health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    ch = connect(tls_gateway, certs.ROLE_PROBE)
    watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "medsettle.v1.SettlementService" in names and "grpc.health.v1.Health" in names


async def test_what_a_servicer_leaves_unimplemented_is_counted_as_such(
    tls_gateway: Gateway, connect: Connect
) -> None:
    """grpcio's asyncio health servicer has no List: the answer and the count agree (UNIMPLEMENTED, not
    an UNKNOWN that would page someone)."""
    service, method = "grpc.health.v1.Health", "List"
    before = handled(service, method, "UNIMPLEMENTED")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call_raw(connect(tls_gateway, certs.ROLE_PROBE), service, method, "unary", b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert handled(service, method, "UNIMPLEMENTED") == before + 1
    assert handled(service, method, "UNKNOWN") == 0
