"""The memory limit of Parley's process as its cgroup sets it (a container's, a systemd unit's
MemoryMax), cgroup v2 and v1, read by bot.documents.memory_limit for `parley doctor` and the
document reader's log line: a reader whose cap (documents.max_memory_mb) is not below it is
ended by the kernel before its own cap refuses a document, every time. The cgroup file system
is the seam: its files are laid out here as the kernel lays them out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from bot import documents
from bot.cli import main

GIB = 2**30


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def test_v2_the_lowest_limit_of_the_cgroup_and_those_above_it(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    own.write_text("0::/system.slice/parley.service\n")
    _tree(tmp_path / "fs", {
        "system.slice/memory.max": str(GIB),  # the slice's, above the unit's "max"
        "system.slice/parley.service/memory.max": "max",
    })  # fmt: skip
    assert documents.memory_limit(tmp_path / "fs", own) == GIB


def test_v2_a_containers_own_view(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    own.write_text("0::/\n")
    _tree(tmp_path / "fs", {"memory.max": str(2 * GIB)})
    assert documents.memory_limit(tmp_path / "fs", own) == 2 * GIB
    _tree(tmp_path / "fs", {"memory.max": "max"})
    assert documents.memory_limit(tmp_path / "fs", own) is None


def test_v1_the_memory_hierarchy_and_its_no_limit_value(tmp_path: Path) -> None:
    own = tmp_path / "cgroup"
    own.write_text("5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    _tree(tmp_path / "fs", {
        "memory/memory.limit_in_bytes": "9223372036854771712",  # v1's "no limit"
        "memory/docker/abc/memory.limit_in_bytes": str(GIB // 2),
    })  # fmt: skip
    assert documents.memory_limit(tmp_path / "fs", own) == GIB // 2


def test_no_cgroup_file_system_is_no_limit(tmp_path: Path) -> None:
    assert documents.memory_limit(tmp_path / "fs", tmp_path / "missing") is None
    own = tmp_path / "cgroup"
    own.write_text("0::/\n")
    assert documents.memory_limit(tmp_path / "fs", own) is None


@pytest.fixture
def doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()

    def run(limit: int | None, **env: str) -> tuple[int, str]:
        monkeypatch.setattr(documents, "memory_limit", lambda: limit)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = main(["doctor"])
        return code, capsys.readouterr().out

    return run


def test_doctor_says_when_a_readers_cap_is_not_below_the_memory_limit(
    doctor: Callable[..., tuple[int, str]],
) -> None:
    code, out = doctor(GIB // 2)  # documents.max_memory_mb 1024 by default
    assert code == 1, out
    assert ("[PROBLEM] documents: max_memory_mb (1024) is not below this process's memory "
            "limit (512 MB, its cgroup)") in out  # fmt: skip
    assert "set documents.max_memory_mb to at most 128" in out
    code, out = doctor(GIB // 2, PARLEY_DOCUMENTS__MAX_MEMORY_MB="128")
    assert code == 0, out
    assert "[ok] documents: a reader's cap (128 MB) is below the memory limit (512 MB)" in out
    code, out = doctor(None)
    assert code == 0, out
    assert "documents:" not in out
