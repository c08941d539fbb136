"""Generated protobuf and gRPC stubs. They are never committed: this module generates them from
proto/ into gateway/_proto/ when they are missing or older than their .proto (at build time in the
Dockerfile and on first import in a checkout), then imports them."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"
SOURCES = ("medsettle/v1/settlement.proto", "medsettle/v1/claims.proto")


def generate(force: bool = False) -> None:
    outputs = [OUT_DIR / s.replace(".proto", "_pb2.py") for s in SOURCES]
    fresh = all(
        out.exists() and out.stat().st_mtime >= (PROTO_DIR / src).stat().st_mtime
        for out, src in zip(outputs, SOURCES, strict=True)
    )
    if fresh and not force:
        return
    from grpc_tools import protoc  # build-time dependency only

    OUT_DIR.mkdir(exist_ok=True)
    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={OUT_DIR}", f"--grpc_python_out={OUT_DIR}"]
    args += [f"--pyi_out={OUT_DIR}", *SOURCES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {SOURCES}")
    for package in ("", "medsettle", "medsettle/v1"):  # packages, so an installed wheel carries them
        (OUT_DIR / package / "__init__.py").touch()


if (PROTO_DIR / SOURCES[0]).exists():  # in a checkout; an installed image generated them at build
    generate()
if str(OUT_DIR) not in sys.path:
    sys.path.insert(0, str(OUT_DIR))

from medsettle.v1 import claims_pb2 as claims_pb  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from medsettle.v1 import claims_pb2_grpc as claims_grpc  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from medsettle.v1 import settlement_pb2 as pb  # type: ignore[import-not-found,unused-ignore]  # noqa: E402
from medsettle.v1 import settlement_pb2_grpc as pb_grpc  # type: ignore[import-not-found,unused-ignore]  # noqa: E402

__all__ = ["claims_grpc", "claims_pb", "generate", "pb", "pb_grpc"]

if __name__ == "__main__":
    generate(force=True)
