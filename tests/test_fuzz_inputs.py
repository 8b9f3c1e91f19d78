"""Property-based tests of every parser of outside input: whatever arrives, each one answers
with its result or its one documented error, never another exception.

    webhook bodies        -> an action, or MalformedUpdate (the webhook's 400)
    Telegram updates      -> an action (Update.de_json as PTB parses it, then translate)
    command arguments     -> parse_command's (name, args) or None
    settings values       -> Settings, or ConfigError (one line)
    knowledge-base files  -> a LoadedDocument, or LoaderError
    documents users send  -> text, or DocumentRefused
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from telegram import Bot

from adapters.telegram.translate import BotIdentity
from adapters.telegram.webhook import MalformedUpdate, read_update
from bot.documents import DocumentRefused, extract
from bot.errors import ConfigError
from bot.knowledge.loaders import LoaderError, load
from bot.settings import load_settings
from bot.skills.router import parse_command
from bot.text.decoding import decode_text
from bot.text.encoding import mostly_controls
from tests.telegram_updates import text_update

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ME = BotIdentity(999, "parley_bot")
BOT = Bot("123:fuzz")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# A real update's message with any of its fields replaced by any JSON value.
message_fields = st.sampled_from(
    [
        "text",
        "date",
        "chat",
        "from",
        "entities",
        "message_id",
        "caption",
        "document",
        "reply_to_message",
    ]
)


@st.composite
def mangled_updates(draw: st.DrawFn) -> dict[str, Any]:
    update = text_update(draw(st.integers(1, 10**9)), draw(st.integers(-(10**12), 10**12)), "hi")
    for field in draw(st.lists(message_fields, max_size=3)):
        update["message"][field] = draw(json_values)
    return update


@FUZZ
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_webhook_body_is_an_update_or_malformed(body: bytes) -> None:
    with contextlib.suppress(MalformedUpdate):
        read_update(body, BOT, ME)


@FUZZ
@given(update=mangled_updates())
def test_a_mangled_update_is_an_action_or_malformed(update: dict[str, Any]) -> None:
    try:
        update_id, _ = read_update(json.dumps(update).encode(), BOT, ME)
    except MalformedUpdate:
        return
    assert update_id == update["update_id"]


@FUZZ
@given(text=st.text(max_size=200))
def test_command_arguments_parse_or_are_not_commands(text: str) -> None:
    parsed = parse_command(text)
    if parsed is not None:
        name, args = parsed
        assert name.isascii() and name == name.lower() and args == args.strip()


@FUZZ
@given(
    section=st.sampled_from(["conversation", "telegram", "documents", "http", "skills"]),
    key=st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12),
    value=json_values,
)
def test_any_setting_value_is_settings_or_one_line(section: str, key: str, value: Any) -> None:
    try:
        load_settings(None, **{section: {key: value}})
    except ConfigError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".md", ".txt", ".html", ".pdf"]))
def test_any_knowledge_base_file_loads_or_is_refused(data: bytes, suffix: str) -> None:
    with contextlib.suppress(LoaderError):
        load(data, Path(f"doc{suffix}"))


@FUZZ
@given(
    text=st.text(max_size=500),
    wrap=st.sampled_from(["", "<html><body><h1>{}</h1><script>x</script></body></html>", "# {}\n"]),
)
def test_any_html_or_markdown_text_loads(text: str, wrap: str) -> None:
    body = wrap.format(text) if wrap else text
    for suffix in (".md", ".html"):
        try:
            loaded = load(body.encode(), Path(f"doc{suffix}"))
        except LoaderError as exc:  # only a text of control characters is no text
            assert str(exc) == "a binary file, not text", body
            assert mostly_controls(decode_text(body.encode())), body
            continue
        assert isinstance(loaded.title, str)


@FUZZ
@given(data=st.binary(max_size=2000), kind=st.sampled_from(["text", "html", "pdf"]))
def test_any_document_is_text_or_refused(data: bytes, kind: str) -> None:
    try:
        text = extract(kind, data, max_pages=5, max_chars=10_000)
    except DocumentRefused:
        return
    assert "\x00" not in text
