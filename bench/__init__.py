"""Benchmarks that print figures (`python -m bench.core_overhead`); never timed assertions."""
