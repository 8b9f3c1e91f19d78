"""A Chatwoot webhook secret left empty (a template line left blank) let anyone sign webhooks
with the empty key: post any text to any customer as the bot, and hand conversations to
nobody. A blank secret is now no secret (the adapter then has none and is refused), a short
one is refused when settings are read, and the verifier never takes the empty key."""

from __future__ import annotations

import time

import pytest

from adapters.chatwoot.webhook import Verifier, signature
from bot.cli import main

pytestmark = pytest.mark.usefixtures("operator_folder")


@pytest.mark.parametrize("value", ["tooshort-1234", "tooshort" + " " * 12, "\tx" + " " * 15])
@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "ACCOUNT_WEBHOOK_SECRET", "PATH_SECRET"])
def test_a_short_chatwoot_secret_is_refused(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Blanks at a secret's ends are not counted: a letter and 15 spaces is no secret."""
    monkeypatch.setenv(f"PARLEY_CHATWOOT__{name}", value)
    status = main(["doctor"])
    captured = capsys.readouterr()
    assert (status, captured.out) == (2, ""), captured.err
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"parley: error: invalid setting PARLEY_CHATWOOT__{name}: ")
    assert "at least 16 characters" in captured.err and value.strip() not in captured.err


@pytest.mark.parametrize("name", ["WEBHOOK_SECRET", "ACCOUNT_WEBHOOK_SECRET", "PATH_SECRET"])
def test_a_blank_chatwoot_secret_is_no_secret(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Blank (an empty variable of a shared compose file) is unset: other adapters run as
    before, and the Chatwoot adapter, with no other secret, is refused for having none."""
    monkeypatch.setenv(f"PARLEY_CHATWOOT__{name}", "  ")
    assert main(["config"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    for setting, value in (("ADAPTERS", '["chatwoot"]'),
                           ("CHATWOOT__URL", "http://127.0.0.1:9"),
                           ("CHATWOOT__API_ACCESS_TOKEN", "a-token")):  # fmt: skip
        monkeypatch.setenv(f"PARLEY_{setting}", value)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[PROBLEM] adapter chatwoot: PARLEY_CHATWOOT__WEBHOOK_SECRET (Chatwoot 4.13+ " in out
    assert "one is required to authenticate Chatwoot's webhooks" in out


def test_the_verifier_never_takes_the_empty_key() -> None:
    body, now = b'{"event":"message_created"}', int(time.time())
    forged = signature(b"", str(now), body)
    assert Verifier([b""], 300).refusal(str(now), forged, body) == "bad signature"
    kept = Verifier([b"", b"a-real-secret-of-chatwoot"], 300)
    assert kept.refusal(str(now), forged, body) == "bad signature"
    good = signature(b"a-real-secret-of-chatwoot", str(now), body)
    assert kept.refusal(str(now), good, body) is None
