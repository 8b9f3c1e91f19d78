"""A smoke run of bench.turn_profile (no time asserted): both clients measured, and every
call a chat turn makes on the store, the cache and the handoff's signals is counted once per
turn, as the statement budget (tests/test_statement_budget.py) says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]
CALL = re.compile(r"^(\w+\.\w+) +(\d+\.\d+) +(\d+\.\d+) +(\d+\.\d+)$", re.MULTILINE)


@pytest.mark.parametrize("desk", [False, True], ids=["no-desk", "desk"])
def test_a_short_run_counts_each_call_of_a_turn(
    postgres_url: str, redis_url: str, desk: bool
) -> None:
    admin = services.POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    env = {**os.environ, "PARLEY_BENCH_POSTGRES_URL": admin, "PARLEY_BENCH_REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "bench.turn_profile", "--turns", "12", *(["--desk"] * desk)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^bare client +per turn: wall +\d+\.\d+ ms", done.stdout, re.MULTILINE)
    assert re.search(r"^Parley +per turn: wall +\d+\.\d+ ms", done.stdout, re.MULTILINE)
    per_turn = {m[1]: float(m[2]) for m in CALL.finditer(done.stdout)}
    for each in ("record_incoming", "begin_delivery", "record_reply"):
        assert per_turn[f"SqlStore.{each}"] == 1.0, done.stdout
    # The handoff's signals are kept only where a desk could take the conversation over.
    assert per_turn.get("HandoffRepository.record_signals") == (1.0 if desk else None), done.stdout
