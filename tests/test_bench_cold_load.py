"""A smoke run of bench.cold_load (no timing asserted): the fill is in the store's shape, so
the rebuilt windows hold turns, and each load is timed."""

from __future__ import annotations

from pathlib import Path

from bench.cold_load import measure


async def test_the_cold_load_bench_fills_and_loads_windows(tmp_path: Path) -> None:
    times = await measure(f"sqlite+aiosqlite:///{tmp_path}/parley.db", reps=2, sizes=(10, 200))
    assert {size: len(t) for size, t in times.items()} == {10: 2, 200: 2}
    assert all(ms > 0 for t in times.values() for ms in t)
