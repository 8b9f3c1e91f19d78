"""An in-process vLLM engine's processes end with the Parley process that started them, also
when it is killed outright (backends/vllm_watchdog.py): SIGKILL runs no clean-up, and vLLM's
engine core and worker stayed alive without it, holding the model's memory."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from backends import vllm_watchdog
from tests.fixtures_vllm import require
from tests.processes import ROOT, parley_run

# Generous: the watch looks every second, vLLM's shutdown takes a few.
GONE_WITHIN_S = 60.0


def _engine_like(loads_plugins: bool) -> None:
    """What an engine core does on start: a spawned one loads vLLM's general plugins (a
    forked one does not: the parent had loaded them), then it works."""
    if loads_plugins:
        vllm_watchdog.watch_parent()
    print("ready", flush=True)
    time.sleep(600)


def _parent(method: str) -> None:
    """A Parley: arms the watchdog, starts the engine-like child with `method`, says its pid."""
    vllm_watchdog.arm()
    context = multiprocessing.get_context(method)
    child = context.Process(target=_engine_like, args=(method == "spawn",))
    child.start()
    print(child.pid, flush=True)
    time.sleep(600)


def _program() -> None:
    """A program run by the parent, not started by multiprocessing: left alone."""
    vllm_watchdog.arm()
    code = "from tests.test_vllm_watchdog import _engine_like; _engine_like(True)"
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    print(child.pid, flush=True)
    time.sleep(600)


def _start(call: str) -> tuple[subprocess.Popen[str], psutil.Process]:
    """The parent running `call`, and its child once that is ready (watching, if it will)."""
    code = f"from tests.test_vllm_watchdog import _parent, _program; {call}"
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert parent.stdout is not None
    lines = {parent.stdout.readline().strip() for _ in range(2)}  # the pid, and "ready"
    assert "ready" in lines, lines
    (pid,) = lines - {"ready"}
    return parent, psutil.Process(int(pid))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_child_multiprocessing_started_ends_once_its_parent_is_killed(method: str) -> None:
    parent, child = _start(f"_parent({method!r})")
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        child.wait(timeout=GONE_WITHIN_S)  # psutil.TimeoutExpired: it outlived its parent
    finally:
        if parent.poll() is None:
            parent.kill()
        if child.is_running():
            child.kill()


def test_a_program_the_parent_ran_is_left_alone() -> None:
    parent, child = _start("_program()")
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        with pytest.raises(psutil.TimeoutExpired):
            child.wait(timeout=3 * vllm_watchdog.CHECK_S)
    finally:
        child.kill()
        child.wait(timeout=GONE_WITHIN_S)


@pytest.mark.vllm
async def test_parley_killed_outright_leaves_no_engine_process(
    tiny_model_dir: Path, vllm_env: None, tmp_path: Path
) -> None:
    """`parley run` on the in-process engine, killed with SIGKILL once the engine's processes
    are up: they end too."""
    require("vllm")
    env = {
        "PARLEY_BACKEND__KIND": "vllm",
        "PARLEY_BACKEND__MODEL": str(tiny_model_dir),
        "PARLEY_BACKEND__ENFORCE_EAGER": "true",
        "PARLEY_BACKEND__MAX_MODEL_LEN": "512",
        "PARLEY_BACKEND__GPU_MEMORY_UTILIZATION": "0.3",
    }
    async with parley_run(tmp_path, env, stdin=asyncio.subprocess.PIPE) as process:
        parley = psutil.Process(process.pid)
        engine: list[psutil.Process] = []
        async with asyncio.timeout(GONE_WITHIN_S * 3):  # the engine's start, on the CPU
            while len(engine) < 2:  # the engine core and its worker
                assert process.returncode is None, "parley run ended before its engine was up"
                engine = [p for p in parley.children(recursive=True) if "VLLM" in _name(p)]
                await asyncio.sleep(0.5)
        process.kill()
        # Not process.wait(): it also waits for the process's output pipes, which a
        # surviving engine process holds open.
        async with asyncio.timeout(GONE_WITHIN_S):
            while process.returncode is None:  # noqa: ASYNC110 - the exit alone has no awaitable
                await asyncio.sleep(0.1)
        _, alive = await asyncio.to_thread(psutil.wait_procs, engine, timeout=GONE_WITHIN_S)
        for stray in alive:
            stray.kill()
    assert [_name(p) for p in alive] == []


def _name(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return ""
