"""`parley data forget` and `parley data prune` (docs/cli.md): a dry run without --yes, one
line per outcome, and one line with exit status 3 when the database cannot be used."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bot.cli import main
from bot.storage.base import MessageKind
from bot.storage.database import create_engine
from bot.storage.migrate import upgrade
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey, Incoming, User, utcnow

GROUP = ConversationKey("telegram", "-100")
ADA, BOB = User("telegram", "12345", "Ada"), User("telegram", "678", "Bob")


def _seed(url: str) -> None:
    async def seed() -> None:
        await upgrade(url)
        store = SqlStore(create_engine(url))
        old = utcnow() - timedelta(days=100)
        for n, (user, sent_at) in enumerate([(ADA, utcnow()), (BOB, old), (BOB, utcnow())]):
            said = Incoming(GROUP, user, f"message {n}", idempotency_key=f"m{n}", sent_at=sent_at)
            await store.record_incoming(said, kind=MessageKind.OBSERVED, token_count=1)
        await store.aclose()

    asyncio.run(seed())


def _count(url: str) -> int:
    async def count() -> int:
        store = SqlStore(create_engine(url))
        cid = await store.conversation_id(GROUP)
        assert cid is not None
        found = await store.messages_between(cid, before_id=2**62, limit=50)
        await store.aclose()
        return len(found)

    return asyncio.run(count())


def test_forget_and_prune_count_first_and_delete_with_yes(
    kb_cli_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _seed(kb_cli_url)
    forget = ["data", "forget", "--platform", "telegram", "--user", "12345"]
    assert main(forget) == 0
    out = capsys.readouterr().out
    assert "messages: 1 would be deleted" in out and "add --yes" in out
    assert _count(kb_cli_url) == 3
    assert main([*forget, "--yes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "messages: 1 deleted" and lines[-1].startswith("cache: ")
    assert _count(kb_cli_url) == 2
    assert main([*forget, "--yes"]) == 0
    assert "nothing to forget" in capsys.readouterr().out

    assert main(["data", "prune", "--older-than", "90d"]) == 0
    assert "messages: 1 would be deleted" in capsys.readouterr().out
    assert main(["data", "prune", "--older-than", "90d", "--yes"]) == 0
    assert capsys.readouterr().out.startswith("messages: 1 deleted\nsummaries: 1 cleared\n")
    assert _count(kb_cli_url) == 1


def test_a_database_that_does_not_answer_is_one_line_and_status_3(
    operator_folder: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PARLEY_DATABASE__URL", "postgresql+asyncpg://parley@127.0.0.1:9/parley")
    monkeypatch.setenv("PARLEY_DATABASE__AUTO_MIGRATE", "false")
    for argv in (["data", "forget", "--platform", "telegram", "--user", "1", "--yes"],
                 ["data", "prune", "--older-than", "30d"]):  # fmt: skip
        assert main(argv) == 3
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("parley: error: ") and err.count("\n") == 1, err


def test_an_age_it_cannot_read_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["data", "prune", "--older-than", "ninety days"])
    assert exited.value.code == 2
    assert "an age such as 90d" in capsys.readouterr().err
