"""`python -m backends.local_models` (make demo's model step) fails with one line, never a
traceback: a fresh clone met "accelerate is required when loading a GGUF file" that way."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import local_models


def test_a_conversion_the_libraries_refuse_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")

    def refuse(_gguf: Path, _out: Path) -> None:
        raise ValueError("accelerate is required when loading a GGUF file")

    monkeypatch.setattr(local_models, "smollm2_gguf", lambda: gguf)
    monkeypatch.setattr(local_models, "convert_gguf", refuse)
    assert local_models.main([str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"parley: error: cannot convert {gguf.name}: accelerate is required when "
                   "loading a GGUF file"]  # fmt: skip
    assert not (tmp_path / "model").exists()  # nothing half-written left behind


def test_the_demo_extra_installs_what_the_conversion_needs() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    needed = {
        r.split(">")[0].split("=")[0]
        for r in project["project"]["optional-dependencies"]["smollm2"]
    }
    assert {"gguf", "transformers", "accelerate"} <= needed
