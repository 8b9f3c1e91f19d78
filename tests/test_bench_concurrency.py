"""A smoke run of bench.concurrency (`--quick`) against the session's vLLM server.

The bench runs to its verdict: a row of figures per N, a PASS or MISS line per target, and an
exit code that follows them (0 or 1, never a crash). Whether the targets are met is the bench's
report, not this test's: no time is asserted.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services

pytestmark = [pytest.mark.vllm, pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]
NUMBER = r"(-?\d+\.\d+)"
# N, ratio median/min/max, wall s Parley/bare, CPU ms per turn Parley/bare, added CPU ms.
ROW = re.compile(r"^ +(\d+) +" + " +".join([NUMBER] * 8) + " *$", re.MULTILINE)
VERDICT = re.compile(r"^(PASS|MISS|SKIP) (.+)$", re.MULTILINE)


def test_a_quick_run_prints_every_figure_and_exits_with_its_verdict(
    vllm_server: str,
    tiny_model_dir: Path,
    postgres_url: str,  # requested so that the test skips (or fails under CI) without PostgreSQL
    redis_url: str,
) -> None:
    admin = services.POSTGRES_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://", 1)
    env = {**os.environ, "PARLEY_BENCH_POSTGRES_URL": admin, "PARLEY_BENCH_REDIS_URL": redis_url}
    command = [sys.executable, "-m", "bench.concurrency", "--quick"]
    command += ["--server", vllm_server, "--model-dir", str(tiny_model_dir)]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )

    assert "bench.concurrency: failed" not in done.stderr, done.stderr[-3000:]
    assert done.returncode in (0, 1), done.stderr[-3000:]
    rows = {int(m[1]): [float(x) for x in m.groups()[1:]] for m in ROW.finditer(done.stdout)}
    assert sorted(rows) == [1, 8], done.stdout
    for median, low, high, parley_s, bare_s, cpu_parley, cpu_bare, _added in rows.values():
        assert 0 < low <= median <= high
        assert min(parley_s, bare_s, cpu_parley, cpu_bare) > 0
    verdicts = VERDICT.findall(done.stdout)
    lines = [line for _, line in verdicts]
    assert len(lines) == 3, done.stdout
    # Each verdict is about the figures printed above it.
    assert lines[0].startswith(f"wall time at N=1: Parley / bare client {rows[1][0]:.3f}x")
    assert lines[1].startswith(f"wall time at N=8: Parley / bare client {rows[8][0]:.3f}x")
    assert lines[2].startswith(
        f"added CPU per turn at N=8 {rows[8][7]:.2f} ms <= 1.2x that at N=1 {rows[1][7]:.2f} ms"
    )
    missed = any(verdict == "MISS" for verdict, _ in verdicts)
    assert done.returncode == (1 if missed else 0)
