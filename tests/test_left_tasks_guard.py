"""tests/conftest.py's guard against an async test whose leftover tasks never end: it cancels
them until they do, or ends the run (exit 3) saying which they are, instead of letting
pytest-asyncio wait for them without a limit as it closes the test's loop. Run on a toy test,
in a pytest process of its own: a hang there is the subprocess's timeout, not this run's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A hang (the guard missed a task) takes this long to tell; the guard itself takes 2 s.
HANG_S = 90

TOY = """
import asyncio

import tests.conftest as guard

guard.LEFT_TASKS_END_S = 2.0  # the guard's limit, for this toy run only


async def test_a_left_task_starts_a_stubborn_one_when_cancelled() -> None:
    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # swallowed: this one never ends

    async def parent() -> None:
        try:
            await asyncio.sleep(3600)
        finally:  # a cleanup that starts a task of its own as it ends
            asyncio.get_running_loop().create_task(stubborn())

    asyncio.get_running_loop().create_task(parent())
    await asyncio.sleep(0)
"""


def test_a_task_started_while_the_left_ones_are_cancelled_stops_the_run(tmp_path: Path) -> None:
    """The guard read the test's tasks once: a task that one of them started as it was
    cancelled was left to pytest-asyncio, and the run hung there with no output."""
    toy = tmp_path / "test_toy.py"
    toy.write_text(TOY)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "tests.conftest", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(ROOT), str(toy)]
    ended = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)
    assert ended.returncode == 3, ended.stdout + ended.stderr
    assert "1 task(s) it left do not end when cancelled" in ended.stderr
    assert "stubborn" in ended.stderr  # the task's stack names it


def _run_toy(tmp_path: Path, toy_source: str) -> subprocess.CompletedProcess[str]:
    toy = tmp_path / "test_toy.py"
    toy.write_text(toy_source)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "tests.conftest", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(ROOT), str(toy)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=HANG_S)


TOY_THREAD = """
import asyncio
import threading

import tests.conftest as guard

guard.LEFT_CALLS_END_S = 2.0  # the guard's limit, for this toy run only
STARTED, NEVER = threading.Event(), threading.Event()


def blocks_forever() -> None:
    STARTED.set()
    NEVER.wait()


async def test_a_call_that_returns_after_its_test_is_waited_for() -> None:
    asyncio.get_running_loop().run_in_executor(None, threading.Event().wait, 0.5)


async def test_a_call_in_the_default_executor_never_returns() -> None:
    asyncio.get_running_loop().create_task(asyncio.to_thread(blocks_forever))
    await asyncio.to_thread(STARTED.wait)  # running (a queued call is cancelled instead)
"""


def test_a_call_left_in_the_default_executor_stops_the_run(tmp_path: Path) -> None:
    """Closing the test's loop (pytest-asyncio: `loop.shutdown_default_executor()`) waited
    without a limit for a `to_thread` call that never returned: the run hung, silently, until
    CI's limit. Now the guard waits LEFT_CALLS_END_S, then names the test and the thread's
    stack and ends the run; a call that returns in time only delays its test's end."""
    ended = _run_toy(tmp_path, TOY_THREAD)
    output = ended.stdout + ended.stderr
    assert ended.returncode == 3, output
    assert (
        "::test_a_call_in_the_default_executor_never_returns: 1 call(s) it left in "
        "the event loop's default executor (asyncio.to_thread, run_in_executor) do not return"
    ) in ended.stderr, output
    assert "in blocks_forever" in ended.stderr  # the blocked thread's stack
    assert "NEVER.wait()" in ended.stderr
    assert "returns_after_its_test" not in ended.stderr  # waited for, then passed


TOY_SIGNALS = """
import asyncio
import signal

# The handlers of an interactive run (one a shell started in the background finds SIGINT
# ignored from the start).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_leaves_sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_puts_sigterm_back() -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, previous)


def test_the_next_test_finds_the_handlers_put_back() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_a_loop_handler_goes_with_the_test_loop() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
"""


def test_a_test_that_leaves_a_signal_handler_changed_fails_by_name(tmp_path: Path) -> None:
    """A test that left SIGINT ignored (as StopSignals.outlive_loop does once a stop signal
    ended a run) left the rest of the run deaf to Ctrl-C, with nothing to say which test it
    was: it fails now, naming the signal and the handler it left, and the tests after it find
    the handlers as they were. A handler an async test adds to its loop is removed as the
    loop closes: no failure."""
    ended = _run_toy(tmp_path, TOY_SIGNALS)
    output = ended.stdout + ended.stderr
    assert ended.returncode == 1, output
    assert "4 passed, 1 error" in output, output
    assert "ERROR at teardown of test_leaves_sigint_ignored" in output, output
    assert "the test left SIGINT handled by SIG_IGN (it found default_int_handler)" in output
