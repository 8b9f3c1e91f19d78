"""Preferences in SQL, per user and per chat, on SQLite and PostgreSQL (the `database_url`
pair): the repository itself, and /lang, /autotranslate and /keep through the app."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.app import Parley
from bot.settings import Settings
from bot.storage import migrate
from bot.storage.base import MessageKind
from bot.storage.cache import MemoryCache
from bot.storage.database import create_engine
from bot.storage.prefs import PrefsRepository
from bot.storage.sql_store import SqlStore
from bot.types import ConversationKey
from tests.doubles import CollectingSink
from tests.skills_helpers import ADA, BOB, KEY, incoming, running, settings_for

OTHER = ConversationKey("test", "chat-2")


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[SqlStore, PrefsRepository]]:
    await migrate.upgrade(database_url)  # the SQLite file of the pair starts empty
    store = SqlStore(create_engine(database_url))
    await store.start()
    yield store, PrefsRepository(store.engine, store, MemoryCache())
    await store.aclose()


async def _record(store: SqlStore, text: str, **kw: object) -> tuple[int, int]:
    recorded = await store.record_incoming(
        incoming(text, **kw),  # type: ignore[arg-type]
        kind=MessageKind.CHAT,
        token_count=3,
    )
    return recorded.message_id, recorded.conversation_id


async def test_language_is_stored_per_user(stores: tuple[SqlStore, PrefsRepository]) -> None:
    store, prefs = stores
    ada_msg, _ = await _record(store, "hi")
    bob_msg, _ = await _record(store, "hello", user=BOB)
    ada = (await prefs.for_message(ada_msg)).user_ref
    bob = (await prefs.for_message(bob_msg)).user_ref
    assert ada is not None and bob is not None and ada != bob
    await prefs.set_language(ada, "de")
    await prefs.set_language(ada, "fr")  # an upsert, not a second row
    assert (await prefs.for_message(ada_msg)).language == "fr"
    assert (await prefs.for_message(bob_msg)).language is None
    await prefs.set_language(ada, None)
    assert (await prefs.for_message(ada_msg)).language is None


async def test_chat_settings_are_stored_per_chat(stores: tuple[SqlStore, PrefsRepository]) -> None:
    store, prefs = stores
    first_msg, first = await _record(store, "hi")
    _, second = await _record(store, "hi", key=OTHER)
    await prefs.set_auto_translate(first, "de")
    await prefs.set_keep_messages(first, True)
    await prefs.set_keep_messages(second, False)
    assert await prefs.chat(first) == ("de", True)
    assert await prefs.chat(second) == (None, False)
    turn = await prefs.for_message(first_msg)
    assert (turn.auto_translate, turn.keep_messages) == ("de", True)
    await prefs.set_auto_translate(first, None)
    assert await prefs.chat(first) == (None, True)


async def test_reply_text_and_missed_messages(stores: tuple[SqlStore, PrefsRepository]) -> None:
    store, prefs = stores
    ada_msg, cid = await _record(store, "lunch?", user=ADA)
    await prefs.remember_reply_to(ada_msg, "the original")
    await prefs.remember_reply_to(ada_msg, "the original")  # a redelivery writes nothing
    reply = await store.record_reply(cid, [ada_msg], "sure", kind=MessageKind.CHAT, token_count=1)
    assert reply is not None
    bob_msg, _ = await _record(store, "deploy at five", user=BOB)
    now_msg, _ = await _record(store, "what did I miss", user=ADA)
    assert (await prefs.for_message(ada_msg)).reply_to_text == "the original"
    assert (await prefs.for_message(bob_msg)).reply_to_text is None
    ada = (await prefs.for_message(ada_msg)).user_ref
    assert ada is not None
    seen = await store.last_seen_id(cid, ada, now_msg)
    assert seen == reply.id
    missed = await store.messages_between(cid, after_id=seen, before_id=now_msg, limit=10)
    assert [(m.author, m.content) for m in missed] == [("Bob", "deploy at five")]
    everything = await store.messages_between(cid, before_id=now_msg, limit=10)
    assert [m.is_bot for m in everything] == [False, True, False]


async def test_commands_store_preferences_in_sql(database_url: str) -> None:
    settings = Settings(database={"url": database_url})  # type: ignore[arg-type]
    async with Parley(settings) as app:
        sink = CollectingSink()
        app.manager.attach("test", sink)
        for text in ("/lang español", "/autotranslate ja", "/keep on", "/lang"):
            await app.manager.handle(incoming(text))
        await app.manager.handle(incoming("/lang", user=BOB))
        async with app.store.engine.connect() as conn:
            users = (await conn.execute(sa.text("SELECT language FROM user_prefs"))).all()
            chats = (
                await conn.execute(sa.text("SELECT auto_translate, keep_messages FROM chat_prefs"))
            ).all()
    assert [tuple(r) for r in users] == [("es",)]
    assert [(r[0], bool(r[1])) for r in chats] == [("ja", True)]
    replies = sink.replies[KEY]
    assert replies[0] == "Tu idioma ahora es Español (es)."  # said after the change: in Spanish
    assert replies[3] == "Tu idioma es Español (es)."
    assert replies[4].startswith("You have no language set")  # Bob has none: the default


async def test_the_platforms_language_for_a_user_is_kept_current(
    stores: tuple[SqlStore, PrefsRepository],
) -> None:
    store, prefs = stores
    german = dataclasses.replace(ADA, language="de")
    first, _ = await _record(store, "hallo", user=german)
    assert (await prefs.for_message(first)).platform_language == "de"
    later, _ = await _record(store, "bonjour", user=dataclasses.replace(ADA, language="fr"))
    assert (await prefs.for_message(later)).platform_language == "fr"
    assert (await prefs.for_message(first)).platform_language == "fr"  # it is the user's
    other = SqlStore(create_engine(store.engine.url.render_as_string(hide_password=False)))
    await other.start()  # another worker that never wrote it: no needless write either way
    try:
        third = await other.record_incoming(
            incoming("salut", user=dataclasses.replace(ADA, language="fr")),
            kind=MessageKind.CHAT,
            token_count=1,
        )
    finally:
        await other.aclose()
    assert (await prefs.for_message(third.message_id)).platform_language == "fr"


async def test_a_user_whose_language_is_german_is_answered_in_german(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path)) as (app, sink):
        for text in ("/lang de", "/lang Klingonisch", "/keep", "/nope", "/help"):
            await app.manager.handle(incoming(text))
        await app.manager.handle(incoming("/help", user=BOB))  # no /lang: the default, English
    now_german, klingon, keep, unknown, german_help, english_help = sink.replies[KEY]
    assert now_german == "Deine Sprache ist jetzt Deutsch (de)."  # the name in German too
    assert klingon.startswith("Unbekannte Sprache „Klingonisch“. Gib einen Sprachcode")
    assert keep == (
        "Das Aufbewahren von Nachrichten für Zusammenfassungen ist in diesem Chat aus. "
        "Verwendung: /keep on|off|delete"
    )
    assert unknown == "Unbekannter Befehl /nope. Sende /help, um zu sehen, was ich kann."
    lines = german_help.splitlines()
    assert lines[0] == "Befehle:" and lines[-1] == "Alles andere ist eine Nachricht an mich."
    assert "/reset - eine neue Unterhaltung beginnen (der Verlauf bleibt erhalten)" in lines
    assert "/lang - deine Sprache für Zusammenfassungen und Übersetzungen: /lang de" in lines
    # Every command a skill registers, in German: no line of /help is left as in English.
    english = english_help.splitlines()
    assert len(lines) == len(english)
    assert [line for line in lines if line in english] == []


async def test_lang_no_is_norwegian_not_off(tmp_path: Path) -> None:
    """`/lang no` cleared the preference and `/autotranslate no` turned translation off:
    Norwegian's code could not be used (a helper's review). `/keep no` still means off."""
    async with running(settings_for(tmp_path)) as (app, sink):
        for text in ("/lang no", "/autotranslate no", "/lang off", "/autotranslate off"):
            await app.manager.handle(incoming(text))
    norwegian, auto, cleared, off = sink.replies[KEY]
    assert norwegian.endswith("(no).") and "Norw" in norwegian
    assert "Norw" in auto
    assert cleared == "Language preference cleared."
    assert off == "Auto-translate is off in this chat."
