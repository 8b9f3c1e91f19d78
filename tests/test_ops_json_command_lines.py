"""With `log_format = "json"`, the lines `parley health` (and `python -m bot.health`, the
image's HEALTHCHECK) and `parley kb` write on stderr themselves are JSON objects with a log
line's fields, like every other line there; they were plain text, which broke a collector
reading JSON lines (an operator's report). Plain text stays plain. Exit statuses unchanged."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import health
from bot.cli import main
from bot.text.terminal import printable
from tests.ports import free_port

FIELDS = {"time", "level", "logger", "message"}


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines()]
    assert lines and all(line.keys() >= FIELDS for line in lines), lines
    return lines


@pytest.fixture
def unhealthy() -> Iterator[int]:
    """A worker whose /healthz answers 503: its port."""

    class Down(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port nothing listens on (kept from other processes' servers: tests/ports.py)."""
    return free_port()


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_parley_health_failure_lines_follow_the_log_format(
    operator_folder: Path,
    unhealthy: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_format: str,
) -> None:
    monkeypatch.setenv("PARLEY_LOG_FORMAT", log_format)
    monkeypatch.setenv("PARLEY_HTTP__PORT", str(unhealthy))
    assert main(["health"]) == 1
    err = capsys.readouterr().err
    monkeypatch.setenv("PARLEY_HTTP__PORT", str(closed_port()))
    assert main(["health"]) == 1
    err += capsys.readouterr().err
    if log_format == "text":
        assert (
            err.splitlines()[0] == f"parley: http://127.0.0.1:{unhealthy}/healthz answered HTTP 503"
        )
        assert err.splitlines()[1].startswith("parley: no answer from http://127.0.0.1:")
        return
    said = json_lines(err)
    assert [line["level"] for line in said] == ["ERROR", "ERROR"]
    assert said[0]["logger"] == "parley"
    assert said[0]["message"] == f"parley: http://127.0.0.1:{unhealthy}/healthz answered HTTP 503"
    assert said[1]["message"].startswith("parley: no answer from http://127.0.0.1:")


def test_the_image_health_check_writes_json_where_the_config_file_asks(
    tmp_path: Path, unhealthy: int, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(f'log_format = "json"\n[http]\nport = {unhealthy}\n', encoding="utf-8")
    assert health.check(str(config), {}) == 1
    (line,) = json_lines(capsys.readouterr().err)
    assert line["message"].endswith("answered HTTP 503")
    assert health.check(None, {"parley_log_format": "JSON", "PARLEY_HTTP__PORT": "port"}) == 2
    (line,) = json_lines(capsys.readouterr().err)
    assert "http.port is not a port number" in line["message"]
    assert health.check(None, {"PARLEY_HTTP__PORT": "port"}) == 2  # text: as before
    assert capsys.readouterr().err.startswith("parley: http.port is not a port number")


def test_parley_kb_lines_on_stderr_are_json_lines_with_json_logs(
    kb_cli_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PARLEY_LOG_FORMAT", "json")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "faq.md").write_text("# Refunds\n\nWithin 30 days.\n", encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 not really a PDF")
    empty = tmp_path / "empty"
    empty.mkdir()

    assert main(["kb", "add", str(folder)]) == 1  # a file failed
    out, err = capsys.readouterr()
    progress = json_lines(err)
    assert sorted(line["level"] for line in progress) == ["INFO", "WARNING"]
    assert any("broken.pdf" in line["message"] for line in progress)
    assert "1 added" in out  # results stay on stdout, as they were

    assert main(["kb", "add", str(empty)]) == 1
    (line,) = json_lines(capsys.readouterr().err)
    assert line["level"] == "ERROR" and "nothing to add" in line["message"]

    assert main(["kb", "remove", str(tmp_path / "nowhere")]) == 1
    (line,) = json_lines(capsys.readouterr().err)
    assert "nothing in the knowledge base" in line["message"]

    assert main(["kb", "remove", " "]) == 2
    (line,) = json_lines(capsys.readouterr().err)
    assert "kb remove needs a path" in line["message"]


def test_parley_kb_lines_stay_plain_with_text_logs(
    kb_cli_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert os.environ.get("PARLEY_LOG_FORMAT") in (None, "text")
    assert main(["kb", "remove", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err == (
        f"parley: nothing in the knowledge base at or under {tmp_path / 'nowhere'}\n"
    )


def test_a_path_with_a_unicode_line_break_stays_on_one_json_line(
    kb_cli_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """U+0085, U+2028 and U+2029 are valid in a JSON string, but `str.splitlines` (and a
    collector reading lines by it) breaks a line at each: `parley kb remove` of a path holding
    them wrote one object that read as four broken lines. They are escaped, as JSON allows."""
    monkeypatch.setenv("PARLEY_LOG_FORMAT", "json")
    odd = str(tmp_path / "a\u0085b\u2028c\u2029d")
    assert main(["kb", "remove", odd]) == 1
    err = capsys.readouterr().err
    (line,) = json_lines(err)
    # The path as every kb line shows it (printable: U+0085, a C1 control, as U+FFFD).
    assert printable(odd) in line["message"]
    assert not {"\u0085", "\u2028", "\u2029"} & set(err)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_refused_arguments_are_one_json_line_with_json_logs(
    operator_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_format: str,
) -> None:
    """An unknown option or a bad argument was argparse's usage and error line in plain text
    whatever the log format (an operator's collector of JSON lines choked on it); status 2."""
    monkeypatch.setenv("PARLEY_LOG_FORMAT", log_format)
    refusals = {
        ("--bogus", "doctor"): "parley: error: unrecognized arguments: --bogus",
        ("db", "sideways"): "parley db: error: argument action: invalid choice: 'sideways'",
        ("chat", "--user", " "): "parley chat: error: argument --user: must not be empty",
        ("kb",): "parley kb: error: the following arguments are required: kb_action",
    }
    for argv, says in refusals.items():
        with pytest.raises(SystemExit) as ended:
            main(list(argv))
        out, err = capsys.readouterr()
        assert (ended.value.code, out) == (2, "")
        if log_format == "text":  # argparse's own, as before
            assert err.startswith("usage: parley")
            assert err.splitlines()[-1].startswith(says), err
            continue
        (line,) = json_lines(err)
        assert (line["level"], line["logger"]) == ("ERROR", "parley")
        assert line["message"].startswith(says), line


def test_refused_arguments_follow_the_log_format_of_the_config_file_they_name(
    operator_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = operator_folder / "parley.toml"
    config.write_text('log_format = "json"\n', encoding="utf-8")
    with pytest.raises(SystemExit) as ended:
        main(["--config", str(config), "db", "sideways"])
    assert ended.value.code == 2
    (line,) = json_lines(capsys.readouterr().err)
    assert line["message"].startswith("parley db: error: argument action: invalid choice")
    # A config file that does not load says nothing: plain, as argparse writes it.
    config.write_text('log_format = "yaml"\n', encoding="utf-8")
    with pytest.raises(SystemExit) as ended:
        main(["--config", str(config), "db", "sideways"])
    assert ended.value.code == 2
    assert capsys.readouterr().err.startswith("usage: parley db")
