"""The gateway tests' gRPC stub and terminal fixtures, for the operations tests."""

from ..gateway.conftest import stub, terminal  # noqa: F401
