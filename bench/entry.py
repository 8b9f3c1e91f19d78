"""How every benchmark's `__main__` ends (bench/README.md): its own exit status when it ran
(0 met, 1 a target missed), 1 with one line naming the bench and the error when it crashed,
argparse's 2 for an argument it cannot use, 130 on Ctrl-C. Never a traceback: a process that
cannot do its job exits non-zero with one line saying why.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C


def run_main(name: str, main: Callable[[], int | bool | None]) -> NoReturn:
    """Run a bench's `main` and exit: its status (None is 0, True 0, False 1), or one line."""
    try:
        status = main()
    except KeyboardInterrupt:
        _say(name, "interrupted")
        sys.exit(INTERRUPTED)
    except SystemExit as exc:
        if isinstance(exc.code, str):  # `raise SystemExit("why")`: a failure with a message
            _say(name, f"failed: {first_line(exc.code)}")
            sys.exit(1)
        raise
    except Exception as exc:  # a crash is a failed run, never a pass
        _say(name, f"failed: {describe(exc)}")
        sys.exit(1)
    if isinstance(status, bool):
        sys.exit(0 if status else 1)
    sys.exit(status or 0)


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, the first leaf of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = first_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def first_line(text: str, limit: int = 300) -> str:
    lines = text.strip().splitlines()
    return lines[0][:limit] if lines else ""


def _say(name: str, what: str) -> None:
    sys.stdout.flush()  # the figures printed so far come before the verdict
    print(f"{name}: {what}", file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    """An argparse type: a count that must be at least 1 (`--chats 0` is refused)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a number where 0 has a meaning of its own (`--block-size 0`)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a rate or duration that must be above 0."""
    value = float(text)
    if not value > 0:  # NaN too
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a delay that may be 0 but not negative."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def best_of_three(work: Callable[[], T]) -> tuple[float, T]:
    """The best of 3 runs' seconds of `work`, and what its last run gave: the growth benches
    (4x the input in at most 8x the time) compare two such bests."""
    times: list[float] = []
    for _ in range(3):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result
