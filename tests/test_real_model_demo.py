"""`make demo` as a newcomer runs it, with a question piped in: its install steps (no-ops where
`make test` already installed them) and the first answer of SmolLM2 through `parley chat`.
The model folder is the one the fixture converted, so the demo does not convert it again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_vllm import require, unavailable

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 600


def test_make_demo_answers_a_piped_question(smollm_model_dir: Path, tmp_path: Path) -> None:
    require("vllm")
    if shutil.which("make") is None:
        unavailable("make")
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        unavailable("running from the project's .venv, which `make demo` installs into")
    env = {
        **os.environ,
        # A history of its own, not the developer's.
        "PARLEY_DATABASE__URL": f"sqlite+aiosqlite:///{tmp_path}/demo.db",
    }
    result = subprocess.run(
        ["make", "--no-print-directory", "demo"],
        cwd=ROOT,
        input="What is the capital of France?\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = result.stdout.strip()  # the demo keeps vLLM's own logs to errors
    assert answer and "No language model" not in answer, result.stdout[-3000:]
