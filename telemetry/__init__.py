"""Prometheus metrics shared by every layer: definitions only, no project imports (tests/test_layering.py)."""
