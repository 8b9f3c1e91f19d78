"""Benchmarks that print figures and exit non-zero on a missed target (bench/README.md); never
timed assertions."""
