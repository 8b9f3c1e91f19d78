"""A damaged model folder for the in-process engine (backend.kind vllm) is named at once, as a
configuration problem: config.json cut short or missing, the weights missing or cut short.
vLLM failed on each of these only inside its engine, which start-up took for a model server
still loading and tried again for backend.startup_wait_s (about two minutes by default)
before it gave up with vLLM's own error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.vllm_engine import check_model_folder
from bot.app import Parley
from bot.errors import ConfigError
from bot.settings import load_settings
from tests.fixtures_vllm import require
from tests.processes import parley_env


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "config-truncated": (lambda d: _cut(d / "config.json"), r"config\.json is not valid JSON"),
    "config-missing": (lambda d: (d / "config.json").unlink(), r"config\.json is missing"),
    "weights-missing": (lambda d: (d / "model.safetensors").unlink(), r"no weights in "),
    "weights-truncated": (
        lambda d: _cut(d / "model.safetensors"),
        r"model\.safetensors is damaged or truncated",
    ),
}


def _damaged_copy(tiny_model_dir: Path, tmp_path: Path, damage: str) -> Path:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    check_model_folder(folder)  # sound as built: nothing raised
    DAMAGES[damage][0](folder)
    return folder


@pytest.mark.parametrize("damage", sorted(DAMAGES))
async def test_a_damaged_model_folder_stops_start_up_naming_the_file(
    damage: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    require("vllm")
    folder = _damaged_copy(tiny_model_dir, tmp_path, damage)
    settings = load_settings(
        None,
        database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"},
        # No wait: a failure start-up would wait for fails at once, not as a ConfigError.
        backend={"kind": "vllm", "model": str(folder), "startup_wait_s": 0},
    )
    with pytest.raises(ConfigError, match=DAMAGES[damage][1]) as raised:
        async with Parley(settings):  # type: ignore[arg-type]
            pass
    assert str(folder) in str(raised.value)
    assert "\n" not in str(raised.value)


def test_parley_chat_with_a_truncated_config_is_one_line_and_exit_2(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    require("vllm")
    folder = _damaged_copy(tiny_model_dir, tmp_path, "config-truncated")
    backend = {"KIND": "vllm", "MODEL": str(folder), "STARTUP_WAIT_S": "120"}
    env = parley_env(tmp_path, {f"PARLEY_BACKEND__{k}": v for k, v in backend.items()})
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    # One line of Parley's (vLLM's import may warn before it), no traceback.
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("parley: ")]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"parley: error: backend.model: {folder / 'config.json'} is not")


def _sharded(folder: Path) -> None:
    """The weights as two shards of a safetensors index (a copy of the one file each), and
    the index of a PyTorch format whose shards were never downloaded."""
    weights = folder / "model.safetensors"
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name in shards:
        shutil.copyfile(weights, folder / name)
    weights.unlink()
    index = {"metadata": {}, "weight_map": {"a.weight": shards[0], "b.weight": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    other = {"metadata": {}, "weight_map": {"a.weight": "pytorch_model-00001-of-00001.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(other))


def test_a_shard_its_index_names_is_missing(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    _sharded(folder)
    check_model_folder(folder)  # sound: another format's index without its shards is ignored
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"model-00002-of-00002\.safetensors is missing"):
        check_model_folder(folder)
