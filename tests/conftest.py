from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import os
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import settings

from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from tests import services
from tests.redis_server import private_redis  # noqa: F401  (fixture)

pytest_plugins = ["tests.fixtures_vllm", "tests.fixtures_smollm"]

# Under CI the property-based tests draw the same examples on every run: a new input that
# breaks something is found by a developer's run (random, as by default), not by a landing.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")

# A stopped heartbeat thread ends as soon as it wakes; one that is still alive after this
# long was never stopped.
HEARTBEAT_END_S = 5.0


def _gateway_heartbeats() -> list[threading.Thread]:
    gateway = sys.modules.get("discord.gateway")  # only where a test imported discord.py
    if gateway is None:
        return []
    return [t for t in threading.enumerate() if isinstance(t, gateway.KeepAliveHandler)]


@pytest.fixture(autouse=True)
def no_gateway_heartbeat_left() -> Iterator[None]:
    """A discord.py gateway connection sends its heartbeats from a thread of its own, onto
    the event loop. One left running after its test beats a heartbeat interval later (45 s
    with the stand-in gateway) into a closed loop, and pytest reports the thread's error
    under whichever test runs then: this names the test that left it."""
    before = set(_gateway_heartbeats())
    yield
    left = [t for t in _gateway_heartbeats() if t not in before]
    for thread in left:
        thread.join(HEARTBEAT_END_S)
    alive = [t.name for t in left if t.is_alive()]
    assert not alive, f"a discord.py gateway heartbeat outlived the test: {alive}"


# The signals a person, a terminal or a process manager stops the run with (Ctrl-C, a closed
# terminal, CI's timeout): Parley's own stop signals (adapters.kit.runner.STOP_SIGNALS).
KEPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What asyncio leaves a signal at when a handler added with `loop.add_signal_handler` is
# removed (the loop's close does it): Python's defaults, whatever the process had before (a
# CI run started in the background by a shell has SIGINT ignored). Put back, not a leak.
ASYNCIO_LEAVES = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGHUP: signal.SIG_DFL,
}


@pytest.fixture(autouse=True)
def signal_handlers_kept() -> Iterator[None]:
    """A test that leaves SIGINT, SIGTERM or SIGHUP handled otherwise than it found them
    changes the rest of the run: SIGINT left ignored (SIG_IGN) made a hung CI process deaf to
    Ctrl-C. Such a test fails here, by name, and the handlers it found are put back for the
    tests after it (also where a closed loop left Python's defaults: ASYNCIO_LEAVES).
    left_tasks_end asks for it, so that it is checked after an async test's loop has closed
    (closing it removes the handlers its test added with `loop.add_signal_handler`)."""
    before = {sig: signal.getsignal(sig) for sig in KEPT_SIGNALS}
    yield
    left = {
        sig: handler for sig in KEPT_SIGNALS if (handler := signal.getsignal(sig)) != before[sig]
    }
    for sig in left:
        signal.signal(sig, before[sig])
    leaked = {sig: handler for sig, handler in left.items() if handler != ASYNCIO_LEAVES[sig]}
    assert not leaked, "; ".join(
        f"the test left {sig.name} handled by {_handler_name(handler)} "
        f"(it found {_handler_name(before[sig])})"
        for sig, handler in leaked.items()
    )


def _handler_name(handler: object) -> str:
    if isinstance(handler, signal.Handlers):
        return handler.name  # SIG_IGN, SIG_DFL
    if handler is None:
        return "a handler not set from Python"
    return getattr(handler, "__qualname__", repr(handler))


# How long the tasks an async test left behind get to end once cancelled (cancelled again
# every CANCEL_AGAIN_S: on Python 3.11 a cancellation that lands as a `wait_for` finishes can
# be lost, CPython gh-86296), and how long after them the calls it left running in its loop's
# default executor (asyncio.to_thread, run_in_executor(None, ...)) get to return.
LEFT_TASKS_END_S = 15.0
CANCEL_AGAIN_S = 1.0
# Generous: a call that returns late costs only the wait, and one cut off ends the whole run
# (a blocking read of a loaded CI machine's disk or database can take seconds).
LEFT_CALLS_END_S = 60.0


CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":  # for _left_tasks_end, which may stop the run before it is shown
        item.stash[CALL_REPORT] = report
    return report


class TrackedExecutor(ThreadPoolExecutor):
    """An async test's default executor, which knows the calls it has not finished and the
    threads running them: a thread cannot be cancelled, and closing the loop waits for every
    call without a limit (`loop.shutdown_default_executor`)."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="test-default-executor")
        self.unfinished: set[Future[object]] = set()  # queued or running
        self.running: dict[int, str] = {}  # thread id -> what it runs

    def submit(  # type: ignore[override]  # the base's signature is generic over fn's
        self, fn: Callable[..., object], /, *args: object, **kwargs: object
    ) -> Future[object]:
        def tracked() -> object:
            thread = threading.get_ident()
            self.running[thread] = repr(fn)
            try:
                return fn(*args, **kwargs)
            finally:
                del self.running[thread]

        future = super().submit(tracked)
        self.unfinished.add(future)
        future.add_done_callback(self.unfinished.discard)
        return future


@pytest.fixture
async def _left_tasks_end(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    executor = TrackedExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    yield
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEFT_TASKS_END_S
    # Read again each round: a task cancelled here may start another as it ends (in a
    # `finally`), which pytest-asyncio would otherwise be the first to wait for.
    left = asyncio.all_tasks() - {me}
    while left and loop.time() < deadline:
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=CANCEL_AGAIN_S)
        left = asyncio.all_tasks() - {me}
    if left:
        # pytest-asyncio closes the test's loop next, waiting for every task without a
        # limit: a task that will not end hung the whole run there (with no output, past
        # pytest-timeout, whose alarm covers the test, not that wait). Said, then the run
        # ends, non-zero.
        stacks = io.StringIO()
        for task in left:
            task.print_stack(limit=12, file=stacks)
        _stop_the_run(
            request,
            f"{len(left)} task(s) it left do not end when cancelled ({LEFT_TASKS_END_S:g} s)",
            stacks.getvalue(),
        )
    # A queued call, cancelled, never starts; a running one may still return.
    running = {asyncio.wrap_future(c) for c in list(executor.unfinished) if not c.cancel()}
    if running:
        await asyncio.wait(running, timeout=LEFT_CALLS_END_S)
    if stuck := dict(executor.running):
        # Closing the loop would wait for these threads without a limit, silently, as
        # for the tasks above: said, with each thread's stack, then the run ends.
        _stop_the_run(
            request,
            f"{len(stuck)} call(s) it left in the event loop's default executor "
            f"(asyncio.to_thread, run_in_executor) do not return ({LEFT_CALLS_END_S:g} s)",
            _thread_stacks(stuck),
        )


def _thread_stacks(running: dict[int, str]) -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = sys._current_frames()
    stacks = io.StringIO()
    for thread, call in running.items():
        stacks.write(f"Thread {names.get(thread, thread)} running {call}:\n")
        if (frame := frames.get(thread)) is not None:
            stacks.write("".join(traceback.format_stack(frame, limit=12)))
    return stacks.getvalue()


def _stop_the_run(request: pytest.FixtureRequest, what: str, stacks: str) -> None:
    """Says why on the real stderr, then ends this process: the run, or under pytest-xdist
    (make test) this worker, which is not replaced (--max-worker-restart=0): its test is
    reported as crashed, the files left in its queue are not run, and the run fails."""
    report = request.node.stash.get(CALL_REPORT, None)
    if report is not None and report.failed:
        stacks += f"\nThe test failed:\n{report.longreprtext}\n"
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{request.node.nodeid}: {what}; this test process stops here.\n{stacks}",
              file=sys.stderr, flush=True)  # fmt: skip
    os._exit(3)


@pytest.fixture(autouse=True)
def left_tasks_end(request: pytest.FixtureRequest, signal_handlers_kept: None) -> None:
    """An async test's leftover tasks are cancelled until they end, and the calls it left in
    its loop's default executor get a while to return, or the run stops saying which they
    are (see _left_tasks_end) instead of hanging."""
    marker = request.node.get_closest_marker("asyncio")
    own_loop = marker is None or marker.kwargs.get("loop_scope", "function") == "function"
    # A module's loop (an in-process engine's) keeps its tasks from one test to the next.
    if inspect.iscoroutinefunction(request.function) and own_loop:
        request.getfixturevalue("_left_tasks_end")


@pytest.fixture(autouse=True)
def many_connections_one_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A test marked `many_connections` (it holds about a third or more of PostgreSQL's default
    100 connections) runs while no other such test does, in any process of the run: under
    pytest-xdist each worker's temporary folder is in the run's, whose lock they share."""
    if request.node.get_closest_marker("many_connections") is None:
        yield
        return
    with services.many_connections_turn(services.run_folder(tmp_path_factory)):
        yield


@pytest.fixture
def operator_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`parley` as an operator runs it in an empty folder: no PARLEY_* variable from the
    outside, no config/parley.toml, PARLEY_HOME under tmp_path; only what a test writes."""
    for name in list(os.environ):
        if name.upper().startswith("PARLEY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (SQLAlchemy asyncpg URL), dropped afterwards."""
    url = services.create_postgres_database()
    yield url
    services.drop_postgres_database(url)


@pytest.fixture
def redis_url() -> str:
    return services.check_redis()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix no other test uses."""
    return f"parley-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, then PostgreSQL (the contract suites' pair)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    url: str = request.getfixturevalue("postgres_url")
    await migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def kb_cli_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The database `parley kb ...` commands run on (a SQLite file, then PostgreSQL), set in
    the environment as an operator would, with full-text search only (no embedding model)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/kb.db"
    else:
        url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv("PARLEY_DATABASE__URL", url)
    monkeypatch.setenv("PARLEY_DATABASE__AUTO_MIGRATE", "true")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")
    return url


@pytest.fixture
async def pg_stores(postgres_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore, str]]:
    """Two stores (two worker processes) on one fresh, migrated PostgreSQL database."""
    await migrate.upgrade(postgres_url)
    stores = SqlStore(create_engine(postgres_url)), SqlStore(create_engine(postgres_url))
    for store in stores:
        await store.start()
    yield stores[0], stores[1], postgres_url
    for store in stores:
        await store.aclose()
