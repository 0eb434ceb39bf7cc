"""Benchmarks of phiserve: serving (``make bench``) and encrypted model loading (``make bench-crypto``).

Benchmark-only code: nothing in ``platform/phiserve`` imports it. This ``__init__`` stays free of
imports because the MLServer runtime module of this package is imported by MLServer from its own
virtual environment, where phiserve is not installed.
"""
