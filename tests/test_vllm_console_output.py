"""The in-process engine in the console, as docs/backends.md sets it up: the answer on stdout,
and none of vLLM's own INFO lines there or, without -v, on stderr (an operator's review
counted about 100 around one answer, and 40 in `parley doctor`'s report)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures_vllm import VLLM_ENV, require
from tests.processes import parley_env


def test_the_console_with_the_in_process_engine_shows_no_vllm_info_lines(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    require("vllm")
    env = parley_env(
        tmp_path,
        {
            **VLLM_ENV,
            "PARLEY_BACKEND__KIND": "vllm",
            "PARLEY_BACKEND__MODEL": str(tiny_model_dir),
            "PARLEY_BACKEND__GPU_MEMORY_UTILIZATION": "0.3",
            "PARLEY_BACKEND__ENFORCE_EAGER": "true",
            "PARLEY_BACKEND__MAX_TOKENS": "8",
        },
    )
    env.pop("VLLM_CONFIGURE_LOGGING", None)
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat"],
        cwd=tmp_path, env=env, input="hello\n", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), done.stderr[-3000:]  # the tiny model's answer, whatever it is
    vllm_lines = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if " INFO " in line or line.startswith("INFO ")
    ]
    assert vllm_lines == []


def test_an_operators_vllm_logging_config_file_is_left_to_vllm(tmp_path: Path) -> None:
    """With VLLM_LOGGING_CONFIG_PATH set, vLLM refuses its logging setup turned off: the
    engine did not start (the review of this session's commits)."""
    require("vllm")
    config = tmp_path / "vllm-logging.json"
    config.write_text('{"version": 1, "disable_existing_loggers": false}')
    script = (
        "import os\n"
        "from backends.vllm_engine import _import_vllm\n"
        "_import_vllm()\n"
        "from vllm.config.logging import LoggingConfig\n"
        "from vllm.logger import configure_logging_if_needed\n"
        "configure_logging_if_needed(LoggingConfig())\n"
        "print(os.environ.get('VLLM_CONFIGURE_LOGGING'))\n"
    )
    env = parley_env(tmp_path, {**VLLM_ENV, "VLLM_LOGGING_CONFIG_PATH": str(config)})
    env.pop("VLLM_CONFIGURE_LOGGING", None)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "None"
