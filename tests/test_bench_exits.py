"""How benchmarks end (bench/README.md): a verdict from the figures, one line when they cannot
run, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.entry import INTERRUPTED, run_main
from bench.prefix_cache import TurnFigures, verdict

ROOT = Path(__file__).resolve().parents[1]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1: a connection is refused at once

# Each bench, made to fail cheaply: (arguments, environment, exit status, words of its line).
FAILURES = {
    "telegram_bench": (["--chats", "0"], {}, 2, "--chats: must be at least 1, not 0"),
    "discord_bench": (["--channels", "0"], {}, 2, "--channels: must be at least 1"),
    "flaky_backend": (["--seed", "eleven"], {}, 2, "invalid int value"),
    "abuse_bench": (["--visitors", "5"], {}, 2, "unrecognized arguments: --visitors"),
    "shutdown_bench": (["--grace", "1"], {}, 2, "unrecognized arguments: --grace"),
    "prefix_cache": (
        ["--server", f"http://{CLOSED}", "--turns", "1"], {}, 1,
        "bench.prefix_cache: failed: ConnectError",
    ),
    "kb_bench": (
        ["--quick", "--only", "postgres"],
        {"PARLEY_BENCH_POSTGRES_URL": f"postgresql://postgres@{CLOSED}/postgres"}, 2,
        "PostgreSQL is not available",
    ),
    "cold_load": (["--reps", "0"], {}, 2, "--reps: must be at least 1"),
    "concurrency": (["--sizes", "8", "0"], {}, 2, "--sizes: must be at least 1"),
    "turn_overhead": (["--langchain-python", "/nonexistent/python"], {}, 2, "missing:"),
    "turn_profile": (["--turns", "-3"], {}, 2, "--turns: must be at least 1"),
    "support_bench": (["--rate", "0"], {}, 2, "--rate: must be above 0"),
    "sentiment": (["--data", "/nonexistent.jsonl"], {}, 1, "cannot read /nonexistent.jsonl"),
    "handoff_phrases": (["--chars", "0"], {}, 2, "--chars: must be at least 1, not 0"),
    "log_redaction": (["--chars", "0"], {}, 2, "--chars: must be at least 1, not 0"),
    "markdown_split": (["--limit", "31"], {}, 2, "--limit: must be at least 32, not 31"),
}  # fmt: skip


@pytest.mark.parametrize("bench", sorted(FAILURES))
def test_a_bench_that_cannot_run_says_why_in_one_line(bench: str) -> None:
    argv, env, status, words = FAILURES[bench]
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", *argv],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert done.returncode == status, output[-3000:]
    assert words in last, output[-3000:]


def _crash() -> int:
    raise RuntimeError("the stand-in server went away\nsecond line of detail")


def _crash_in_a_group() -> int:
    raise ExceptionGroup("unhandled errors in a TaskGroup", [ConnectionResetError("reset")])


def _interrupted() -> int:
    raise KeyboardInterrupt


def _gives_up() -> int:
    raise SystemExit("no notice within 60 s (exit 1): line one\nline two")


@pytest.mark.parametrize(
    ("main", "status", "line"),
    [
        (_crash, 1, "bench.x: failed: RuntimeError: the stand-in server went away"),
        (_crash_in_a_group, 1, "bench.x: failed: ConnectionResetError: reset"),
        (_interrupted, INTERRUPTED, "bench.x: interrupted"),
        (_gives_up, 1, "bench.x: failed: no notice within 60 s (exit 1): line one"),
        (lambda: False, 1, None),
        (lambda: True, 0, None),
        (lambda: None, 0, None),
        (lambda: 1, 1, None),
    ],
)
def test_run_main_ends_with_the_status_or_one_line(
    main: object, status: int, line: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        run_main("bench.x", main)  # type: ignore[arg-type]
    assert ended.value.code == status
    assert capsys.readouterr().err.splitlines() == ([line] if line else [])


def _turn(ideal: int, cached: int, rollover: bool = False) -> TurnFigures:
    return TurnFigures(
        prompt=ideal + 40, cached=cached, ideal=ideal, achievable=ideal,
        rollover=rollover, diverge=None, cause="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "met"),
    [
        ([_turn(100, 96), _turn(100, 20, rollover=True)], False),  # whole 58% < 85%
        ([_turn(100, 94), _turn(100, 94)], False),  # plain 94% < 95%
        ([_turn(100, 100), _turn(100, 100), _turn(100, 60, rollover=True)], True),
        ([], False),  # nothing measured is no pass
    ],
)
def test_prefix_cache_verdict_holds_the_stated_targets(
    rows: list[TurnFigures], met: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verdict(rows, "words") is met
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("target ") for line in lines)
    assert any(line.endswith("MISSED") for line in lines) is not met


def test_prefix_cache_free_output_has_no_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert verdict([_turn(100, 10)], "free") is True
    assert "no verdict" in capsys.readouterr().out
