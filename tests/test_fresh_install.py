"""The README's run command on a fresh clone, with nothing installed by hand: `make run`
creates its own virtual environment with Parley's run-time dependencies only, so a module
that only the test extras bring in (jinja2 once was) fails here, not on a new user's machine.

The clone is of the committed HEAD, as a user gets it; pip's cache is shared with the outer
checkout so that the test downloads nothing it already has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_make_run_on_a_fresh_clone_answers_piped_input(tmp_path: Path) -> None:
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    clone = tmp_path / "parley"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "VIRTUAL_ENV"))}
    env |= {"HOME": str(tmp_path / "home"), "PIP_CACHE_DIR": str(ROOT / ".cache" / "pip")}
    done = subprocess.run(
        ["make", "run", f"PIP_CACHE_DIR={ROOT / '.cache' / 'pip'}"],
        cwd=clone,
        env=env,
        input="/help\n/ask how do I configure Redis?\n",
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert "/reset" in done.stdout  # /help answered
    assert "Redis" in done.stdout  # /ask answered from the sample knowledge base
    # The embedded database lives in the data folder under HOME, not in the clone.
    assert (tmp_path / "home" / ".local" / "share" / "parley" / "parley.db").exists()
    assert not (clone / "var").exists()
