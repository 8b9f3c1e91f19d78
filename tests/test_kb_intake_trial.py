"""Knowledge-base intake tried the way an attacker or a careless operator would (docs_trial):
a folder nested deeper than Python's recursion limit, a file swapped for a FIFO between its
check and its opening, a path echoed by `parley kb remove`."""

from __future__ import annotations

import inspect
import os
import sys
import threading
from pathlib import Path

import pytest

from bot.cli import main
from bot.documents import extract
from bot.knowledge.ingest import collect_files, read_file
from bot.knowledge.loaders import LoaderError


def test_a_folder_nested_deeper_than_the_recursion_limit_is_walked(tmp_path: Path) -> None:
    # `parley kb add deep/` ended in a RecursionError traceback from os.walk (recursive on
    # Python 3.11), and no file of any folder named was added. The limit is lowered for the
    # walk instead of nesting 1,000 folders: a tree that deep, left behind, breaks pytest's own
    # clean-up (shutil.rmtree is recursive too).
    depth = 300
    deepest = tmp_path
    for _ in range(depth):  # one at a time: mkdir(parents=True) is recursive too
        deepest = deepest / "a"
        deepest.mkdir()
    (deepest / "deep.md").write_text("# Deep\n\nAt the bottom.\n")
    (tmp_path / "top.md").write_text("# Top\n\nAt the top.\n")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + depth // 2)
    try:
        found = collect_files([tmp_path])
    finally:
        sys.setrecursionlimit(limit)
    assert [f.path.name for f in found] == ["deep.md", "top.md"]
    assert found[0].path == deepest / "deep.md"


def test_a_file_swapped_for_a_fifo_after_its_check_is_refused_not_waited_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file was checked (a regular file) and then opened by its name: one replaced by a
    # FIFO in between, by anyone who may write in the folder, held `parley kb add` for ever
    # (opening a FIFO waits for a writer). The swap is made at the worst moment: right after
    # read_file's own stat of the path.
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\n\nText.\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real_stat = Path.stat

    def stat_then_swap(self: Path, **kwargs: bool) -> os.stat_result:
        info = real_stat(self, **kwargs)
        if self == notes and fifo.exists():
            os.replace(fifo, notes)
        return info

    monkeypatch.setattr(Path, "stat", stat_then_swap)
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(read_file(notes, 1_000_000, tmp_path.resolve()))
        except LoaderError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(30)
    if reader.is_alive():  # waiting for a writer: give it one, so the thread ends
        os.close(os.open(notes, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(30)
        pytest.fail("read_file waited on a FIFO opened by the name of a file it had checked")
    assert len(outcome) == 1 and isinstance(outcome[0], LoaderError)
    assert str(outcome[0]) == "not a regular file"


def _kb_on_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`parley kb ...` on a SQLite file under tmp_path, words only, no sample documents."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/kb.db")
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PARLEY_KNOWLEDGE__LOAD_SAMPLE", "false")
    monkeypatch.setenv("PARLEY_KNOWLEDGE__SEMANTIC", "false")


def test_kb_remove_prints_no_terminal_escape_of_the_path_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `parley kb remove "$f"` with a name holding ESC ] 0 (set the window title), ESC [2J
    # (clear the screen) or a line break wrote them to the terminal as they were.
    _kb_on_sqlite(tmp_path, monkeypatch)
    assert main(["kb", "remove", str(tmp_path / "x\x1b]0;pwned\x07\x1b[2J\nfake line")]) == 1
    out, err = capsys.readouterr()
    assert "nothing in the knowledge base at or under" in err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert err.count("\n") == 1


def test_a_windows_1252_file_with_a_stray_nul_is_added_as_in_a_chat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same file (a legacy FAQ with one NUL an editor left) was read when sent in a chat
    # and refused by `parley kb add` as "a binary file, not text": the loader took any NUL
    # in bytes that are not UTF-8 for binary, where the chat's rule (is_binary) asks for more
    # than one control byte in 20, after a helper's review.
    _kb_on_sqlite(tmp_path, monkeypatch)
    line = "Caf\u00e9 cr\u00e8me: the caf\u00e9 opens at nine, Monday to Saturday.\r\n"
    data = line.encode("cp1252") * 20
    data = data[:300] + b"\x00" + data[300:]
    faq = tmp_path / "faq.txt"
    faq.write_bytes(data)
    assert "Caf\u00e9 cr\u00e8me" in extract("text", data, 50, 200_000)  # read in a chat
    assert main(["kb", "add", str(faq)]) == 0
    out, err = capsys.readouterr()
    assert "1 added" in out and "binary" not in err
    assert main(["kb", "list"]) == 0
    assert "faq.txt" in capsys.readouterr().out


def test_an_image_named_md_is_still_binary(tmp_path: Path) -> None:
    # The rule the loader now shares with the chat still refuses a real binary file.
    from bot.knowledge.loaders import load

    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
    with pytest.raises(LoaderError, match="a binary file, not text"):
        load(png, tmp_path / "photo.md")


@pytest.mark.parametrize("root", ["/", "//", "/.", "/tmp/.."])
def test_kb_remove_of_the_root_folder_removes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], root: str
) -> None:
    # `parley kb remove "$DIR/"` with DIR unset in a script is `kb remove /`: every document of
    # every collection was removed, at once and without a question (documents are known by
    # their absolute path). Refused as the empty path is, as `rm` refuses `/`.
    _kb_on_sqlite(tmp_path, monkeypatch)
    (tmp_path / "faq.md").write_text("# FAQ\n\nThe shop opens at nine.\n")
    assert main(["kb", "add", str(tmp_path / "faq.md")]) == 0
    capsys.readouterr()
    assert main(["kb", "remove", root]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "parley: kb remove / would remove every document; name the folder or file they were "
        "added from\n"
    )
    assert main(["kb", "list"]) == 0
    assert "faq.md" in capsys.readouterr().out
    assert main(["kb", "remove", str(tmp_path)]) == 0  # a folder still removes what is under it
    assert capsys.readouterr().out == "removed 1 document\n"
