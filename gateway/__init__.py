"""MedSettle's service layer. Before anything imports the engine, choose whether it runs compiled (a
fresh mypyc build) or from its sources (gateway/compiled_engine.py says why this must come first)."""

from gateway import compiled_engine as _compiled_engine

_compiled_engine.prepare()
