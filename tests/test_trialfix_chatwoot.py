"""A Chatwoot webhook secret left empty (a template line left blank) let anyone sign webhooks
with the empty key: post any text to any customer as the bot, and hand conversations to
nobody. Such secrets are refused when settings are read; the verifier never signs with one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from adapters.chatwoot.webhook import Verifier, signature
from bot.cli import main


@pytest.fixture(autouse=True)
def _clean_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PARLEY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "ACCOUNT_WEBHOOK_SECRET", "PATH_SECRET"])
@pytest.mark.parametrize("value", ["", "tooshort-1234"])
def test_an_empty_or_short_chatwoot_secret_is_refused(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(f"PARLEY_CHATWOOT__{name}", value)
    status = main(["doctor"])
    captured = capsys.readouterr()
    assert (status, captured.out) == (2, ""), captured.err
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"parley: error: invalid setting PARLEY_CHATWOOT__{name}: ")
    assert "at least 16 characters" in captured.err
    assert not value or value not in captured.err
    if not value:
        assert "is empty, which lets anyone through" in captured.err


def test_the_verifier_never_takes_the_empty_key() -> None:
    body, now = b'{"event":"message_created"}', int(time.time())
    forged = signature(b"", str(now), body)
    assert Verifier([b""], 300).refusal(str(now), forged, body) == "bad signature"
    kept = Verifier([b"", b"a-real-secret-of-chatwoot"], 300)
    assert kept.refusal(str(now), forged, body) == "bad signature"
    good = signature(b"a-real-secret-of-chatwoot", str(now), body)
    assert kept.refusal(str(now), good, body) is None
