"""Parley's Chatwoot webhook as another tenant of the same Chatwoot tries it: the fake
Chatwoot (tests/fake_chatwoot.py, a real HTTP server) sends signed webhooks to Parley's real
HTTP host, over real PostgreSQL; the model is a scripted backend."""

from __future__ import annotations

import pytest

from adapters.chatwoot.settings import ChatwootSettings
from bot.errors import ConfigError
from bot.settings import load_settings
from bot.storage import migrate
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ACCOUNT, ACCOUNT_SECRET, BOT_SECRET, chatwoot_worker

pytestmark = pytest.mark.postgres


async def test_another_accounts_conversation_event_naming_no_account_moves_nothing_here(
    postgres_url: str,
) -> None:
    """An agent bot made by Chatwoot's super admin can be added to any account's inbox, and
    Chatwoot signs that account's webhooks with the bot's secret. A conversation event names
    its account only through its last message: one of a conversation without messages was
    taken for chatwoot.account_id's conversation of the same number, which an agent of the
    other account then took from the bot here (opened) or gave back (resolved)."""
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: "echo")
    async with chatwoot_worker(postgres_url, backend, account_id=ACCOUNT) as w:
        fake = w.fake
        mine = fake.conversation(26)
        assert await fake.contact_says(mine, "hello") == 200
        await w.idle()
        key = ConversationKey("chatwoot", f"{ACCOUNT}:26")
        other = fake.conversation(26, "open", account=99)  # no message in it yet
        opened = {**fake.conversation_data(other), "event": "conversation_opened"}
        assert opened["messages"] == [] and "account" not in opened
        assert await fake.send(opened, secret=BOT_SECRET) == 200
        await w.idle()
        assert (await w.app.desk.status(key)).state.value == "bot"
        assert await fake.contact_says(mine, "still there?") == 200
        await w.idle()
        assert fake.public_replies(mine) == ["echo", "echo"]
        # The account's own webhook (its secret is this account's) names it by being sent.
        assert await fake.send(opened, secret=ACCOUNT_SECRET) == 200
        await w.idle()
        assert (await w.app.desk.status(key)).state.value == "human"


async def test_a_secret_with_a_line_end_from_an_env_file_still_verifies(
    postgres_url: str,
) -> None:
    """An .env file saved with Windows line ends gives each value a "\\r" at its end, which
    the check of a secret's length already did not count; it was part of the HMAC key all the
    same, so every delivery of Chatwoot got 401 and was lost."""
    await migrate.upgrade(postgres_url)
    backend = ScriptedBackend(lambda r: "echo")
    async with chatwoot_worker(postgres_url, backend, webhook_secret=BOT_SECRET + "\r") as w:
        conv = w.fake.conversation(27)
        assert await w.fake.contact_says(conv, "hello") == 200
        await w.idle()
        assert w.fake.public_replies(conv) == ["echo"]


async def test_a_path_secret_with_a_line_end_from_an_env_file_still_matches(
    postgres_url: str,
) -> None:
    """As above: the "\\r\\n" was part of the path Parley served, which no URL Chatwoot
    posts to has (403 for every delivery)."""
    await migrate.upgrade(postgres_url)
    path_secret = "a-long-random-path-secret-0123456789"
    section = {"webhook_secret": None, "account_webhook_secret": None}
    backend = ScriptedBackend(lambda r: "echo")
    async with chatwoot_worker(
        postgres_url, backend, path_secret=path_secret + "\r\n", **section
    ) as w:
        w.fake.webhook_url += f"/{path_secret}"
        conv = w.fake.conversation(28)
        assert await w.fake.contact_says(conv, "hello") == 200
        await w.idle()
        assert w.fake.public_replies(conv) == ["echo"]


@pytest.mark.parametrize(
    "secret",
    [
        "Zm9vYmFyYmF6cXV4/cXV1eA==",
        "a-long-random-secret?x",
        "a-long-random-secret#x",
        "a%2Flong-random-secret",
    ],
    ids=["base64-slash", "question-mark", "hash", "percent"],
)
def test_a_path_secret_no_url_path_can_hold_is_refused_when_settings_load(secret: str) -> None:
    """`openssl rand -base64` gives "/": Parley served /chatwoot/webhook/<secret> as one path
    segment, which a secret with "/" never is, and answered every delivery of Chatwoot 404
    (lost); "?", "#" end the path, "%" is decoded. Refused with one line, never the value."""
    chatwoot = {"url": "https://chatwoot.example.com", "api_access_token": "t" * 24}
    with pytest.raises(ConfigError) as refused:
        load_settings(None, adapters=["chatwoot"], chatwoot={**chatwoot, "path_secret": secret})
    told = str(refused.value)
    assert told.startswith("invalid setting PARLEY_CHATWOOT__PATH_SECRET: "), told
    assert secret not in told and "\n" not in told
    good = "Zm9vYmFyYmF6cXV4-cXV1eA_~.+="  # what a URL path segment holds as it is
    section = load_settings(None, chatwoot={**chatwoot, "path_secret": good}).section("chatwoot")
    assert isinstance(section, ChatwootSettings) and section.path_secret is not None
    assert section.path_secret.get_secret_value() == good
