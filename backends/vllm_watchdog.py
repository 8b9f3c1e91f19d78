"""The in-process engine's processes end with the Parley process that started them.

vLLM runs the engine core of an `AsyncLLM` in a child process (`VLLM::EngineCore`), and the
model in that child's children (`VLLM::Worker`). Parley shuts them down when it stops; but a
Parley killed outright (SIGKILL, the kernel's OOM killer) runs no clean-up, and the engine core
and its worker stayed alive without it, holding the model's memory for good (seen here: 2.3 GB
in two processes per kill on the CPU; on a GPU the restarted Parley then finds the GPU's
memory taken and its own engine cannot start).

How the engine core gets the watch depends on how vLLM starts it. Forked (vLLM's default
on a GPU): `arm`, which `VllmEngineBackend.start` calls before it starts the engine, registers
an `os.register_at_fork` hook that starts the watch in every process this one forks (a child
forked by that one again watches its own parent). Spawned (vLLM's CPU build, or
`VLLM_WORKER_MULTIPROC_METHOD=spawn`): a spawned process runs no hook of its parent's, but
vLLM loads every `vllm.general_plugins` entry point in each process it starts (its public
plugin system; pyproject.toml registers `watch_parent`): in a process that multiprocessing
started for the one `arm` named in PARENT_ENV it starts the watch; anywhere else (Parley's
own process, a program Parley ran such as `vllm serve`) it does nothing. (A forked process
does not load the plugins again: it inherits the parent's note that they are loaded.)

The watch is a thread that looks at the parent every CHECK_S; once the parent is gone it
sends its process SIGTERM, on which vLLM shuts the engine down (the workers end with it,
through vLLM's own death pipe), and SIGKILL if that has not ended it after KILL_AFTER_S.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

PARENT_ENV = "PARLEY_ENGINE_PARENT"
CHECK_S = 1.0
KILL_AFTER_S = 15.0

_started = threading.Event()
_armed = threading.Event()


def arm() -> None:
    """Every process this one starts for the engine from now on ends when this one does."""
    os.environ[PARENT_ENV] = str(os.getpid())
    if not _armed.is_set():
        _armed.set()
        os.register_at_fork(after_in_child=_watch_after_fork)


def _watch_after_fork() -> None:
    # Fresh in the child: its parent's watch (if any) did not come along with the fork.
    global _started
    _started = threading.Event()
    _start_watch(os.getppid())


def watch_parent() -> None:
    """vLLM's general-plugin hook (called in each of its processes, possibly more than once)."""
    parent = os.environ.get(PARENT_ENV, "")
    # A process that multiprocessing started for that parent: not a program it ran (a
    # `vllm serve` inherits the variable too), nor a worker of the engine core.
    origin = multiprocessing.parent_process()
    if not parent.isdigit() or origin is None or origin.pid != int(parent):
        return
    _start_watch(int(parent))


def _start_watch(parent: int) -> None:
    if _started.is_set():
        return
    _started.set()
    threading.Thread(
        target=_end_with, args=(parent,), name="parley-parent-watch", daemon=True
    ).start()


def _end_with(parent: int) -> None:
    # A parent that dies leaves this process to another one; it may have died already,
    # while this process was starting.
    while os.getppid() == parent:
        time.sleep(CHECK_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(KILL_AFTER_S)
    os.kill(os.getpid(), signal.SIGKILL)
