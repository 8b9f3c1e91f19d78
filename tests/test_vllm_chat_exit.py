"""`parley chat` on the in-process vLLM engine (the tiny model) with piped input, as
`make demo` runs it: it answers, exits 0 at the end of its input, and prints no traceback,
vLLM's included (its engine's output task must not see the engine process go away)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_vllm import VLLM_ENV, require

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]


def test_parley_chat_on_the_engine_ends_without_a_traceback(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    require("vllm")
    env = {
        **os.environ,
        **VLLM_ENV,
        "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/chat.db",
        "PARLEY_BACKEND__KIND": "vllm",
        "PARLEY_BACKEND__MODEL": str(tiny_model_dir),
        "PARLEY_BACKEND__MAX_TOKENS": "8",
        "PARLEY_BACKEND__ENFORCE_EAGER": "true",
        "PARLEY_BACKEND__GPU_MEMORY_UTILIZATION": "0.3",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat", "--chat", "exit"],
        input="hello there\n",
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:]
    assert "No language model is configured" not in done.stdout  # the engine answered
    assert done.stdout.strip()
    assert "Traceback" not in printed, printed[-3000:]
    assert "EngineDeadError" not in printed
