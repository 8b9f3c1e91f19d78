"""The skills with a scripted backend: /ask, /summarize, /translate, /lang, and the routing of
plain messages, on the embedded defaults (SQLite, in-process cache)."""

from __future__ import annotations

import math
from pathlib import Path

from bot.errors import NoBackendConfigured
from bot.skills import qa, summarize, translate
from bot.storage.base import MessageKind
from bot.text import split_for_budget
from tests.doubles import ScriptedBackend
from tests.skills_helpers import (
    BOB,
    KEY,
    StructuredBackend,
    incoming,
    running,
    settings_for,
    shout,
    system_of,
    user_of,
)


async def test_help_lists_every_registered_command(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path)) as (app, sink):
        await app.manager.handle(incoming("/help"))
    (help_text,) = sink.replies[KEY]
    for name in ("ask", "summarize", "translate", "lang", "autotranslate", "keep", "reset"):
        assert f"/{name} - " in help_text
    assert "/summarise" not in help_text  # the hidden spelling works but is not listed


async def test_ask_cites_the_passages_it_was_given(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: "Thirty seconds, renewed while a turn runs [1].")
    async with running(settings_for(tmp_path), backend, kb_docs=True) as (app, sink):
        await app.manager.handle(incoming("/ask how long does a conversation lock live?"))
        best = (await app.kb.search("how long does a conversation lock live?"))[0]
    (reply,) = sink.replies[KEY]
    assert best.location == "Redis > Locks"
    prompt = system_of(backend.requests[0])
    assert f"[1] {best.citation}" in prompt and "thirty seconds without renewal" in prompt
    assert user_of(backend.requests[0]) == "how long does a conversation lock live?"
    answer, sources = reply.split("\n\nSources:\n")
    assert answer.endswith("[1].")
    assert sources.splitlines()[0] == "[1] Redis > Locks"
    assert "Telegram" not in sources  # only passages that matched are cited


async def test_ask_says_it_does_not_know_without_asking_the_model(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    async with running(settings_for(tmp_path), backend, kb_docs=True) as (app, sink):
        await app.manager.handle(incoming("/ask what is the airspeed of an unladen swallow"))
    assert sink.replies[KEY] == [qa.I_DONT_KNOW]
    assert backend.requests == []


async def test_ask_without_a_model_quotes_the_best_passage(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path), kb_docs=True) as (app, sink):
        await app.manager.handle(incoming("/ask telegram webhook address"))
    (reply,) = sink.replies[KEY]
    assert "[1] Telegram > Webhooks\nIn webhook mode Telegram posts updates" in reply


def _long_text(tokens: int) -> str:
    sentence = "Ledger entry {n} records that the harbour crane moved {n} crates of tea today."
    paragraphs, size, n = [], 0, 0
    while size < tokens * 4:  # the scripted backend counts ~4 characters a token
        block = " ".join(sentence.format(n=n + i) for i in range(6))
        paragraphs.append(block)
        size += len(block) + 2
        n += 6
    return "\n\n".join(paragraphs)


async def test_a_50000_token_text_is_summarised_in_parts_within_the_context(
    tmp_path: Path,
) -> None:
    backend = ScriptedBackend(lambda r: "crates of tea were moved " * 8, max_model_len=4096)
    text = _long_text(50_000)
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("/summarize long paragraph " + text))
        style_tokens = app.settings.skills.summary_long_tokens
    maps = [r for r in backend.requests if "is part " in system_of(r)]
    combines = [r for r in backend.requests if "partial summaries" in system_of(r)]
    budget = 4096 - style_tokens - await backend.count_chat_tokens(maps[0].messages[:1]) - 48
    expected = await split_for_budget(text, budget, _estimate)
    assert len(maps) == len(expected)
    assert math.ceil(50_000 / budget) <= len(maps) <= math.ceil(50_000 / budget) + 2
    for request in backend.requests:
        assert await backend.count_chat_tokens(request.messages) + request.max_tokens <= 4096
    assert combines and "Write one paragraph." in system_of(combines[-1])
    (reply,) = sink.replies[KEY]
    assert reply.startswith(f"Summarising part 1 of {len(maps)}…\n")
    assert f"Summarising part {len(maps)} of {len(maps)}…" in reply
    assert reply.rstrip().endswith("crates of tea were moved")


async def _estimate(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


async def test_summary_without_a_model_is_extractive(tmp_path: Path) -> None:
    text = _long_text(600)
    async with running(settings_for(tmp_path, extractive_sentences=3)) as (app, sink):
        await app.manager.handle(incoming("/summarize " + text))
    (reply,) = sink.replies[KEY]
    bullets = reply.splitlines()
    assert len(bullets) == 3 and all(b.startswith("- Ledger entry") for b in bullets)


async def test_summary_of_a_replied_message_in_the_users_language(tmp_path: Path) -> None:
    backend = ScriptedBackend(lambda r: "Kurz gesagt: Tee.")
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("/lang Deutsch"))
        await app.manager.handle(incoming("/summarize", reply_to="The crane moved the tea."))
    assert sink.replies[KEY] == ["Your language is now German (de).", "Kurz gesagt: Tee."]
    (request,) = backend.requests
    assert user_of(request) == "The crane moved the tea."
    assert "Write in German." in system_of(request)


async def test_summary_of_the_conversation_and_what_i_missed(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("/summarize missed"))
        await app.manager.handle(incoming("/keep on"))
        await app.manager.handle(incoming("I am off to lunch"))
        await app.manager.handle(incoming("the deploy is at five", user=BOB))
        await app.manager.handle(incoming("what did I miss?"))
        await app.manager.handle(incoming("/summarize"))
    assert sink.replies[KEY][0] == summarize.NOT_KEPT
    missed, whole = backend.requests[-2:]
    assert "Bob: the deploy is at five" in user_of(missed)
    assert "lunch" not in user_of(missed)  # only what came after Ada's last message
    assert "Ada: I am off to lunch" in user_of(whole) and "Parley: echo:" in user_of(whole)


async def test_translation_keeps_code_links_and_mentions(tmp_path: Path) -> None:
    backend = ScriptedBackend(shout)
    text = (
        "please ask @marta to run `make test` and read https://example.org/docs?a=1 today 🙂\n"
        "```python\nprint('hello world')\n```"
    )
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("/translate to French " + text))
    (reply,) = sink.replies[KEY]
    assert reply.startswith("PLEASE ASK @marta TO RUN `make test` AND READ ")
    for kept in ("https://example.org/docs?a=1", "🙂", "```python\nprint('hello world')\n```"):
        assert kept in reply
    prompt = user_of(backend.requests[0])
    assert "example.org" not in prompt and "@marta" not in prompt and "⟦0⟧" in prompt
    assert "into French" in system_of(backend.requests[0])


async def test_translation_honours_the_glossary(tmp_path: Path) -> None:
    backend = ScriptedBackend(shout)
    settings = settings_for(tmp_path, glossary=["Parley", "prefix cache"])
    async with running(settings, backend) as (app, sink):
        await app.manager.handle(incoming("/translate to de Parley reuses the prefix cache well"))
    assert sink.replies[KEY] == ["Parley REUSES THE prefix cache WELL"]


async def test_translation_of_a_reply_into_the_users_language(tmp_path: Path) -> None:
    backend = ScriptedBackend(shout)
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("/lang fr"))
        await app.manager.handle(incoming("/translate", reply_to="Where is the station, please?"))
        await app.manager.handle(incoming("/translate to Klingonese hello"))
    assert sink.replies[KEY][1] == "WHERE IS THE STATION, PLEASE?"
    assert "from English into French" in system_of(backend.requests[0])
    assert sink.replies[KEY][2].startswith("Unknown language 'Klingonese'. ")
    assert "for example: de, German" in sink.replies[KEY][2]


async def test_no_model_answers(tmp_path: Path) -> None:
    async with running(settings_for(tmp_path)) as (app, sink):
        await app.manager.handle(incoming("/translate to de good morning to all of you"))
        await app.manager.handle(incoming("translate to German: see you tomorrow evening"))
        await app.manager.handle(incoming("just chatting"))
    assert sink.replies[KEY] == [
        translate.NEEDS_MODEL,
        translate.NEEDS_MODEL,
        NoBackendConfigured.user_message,
    ]


async def test_plain_messages_are_routed_by_pattern_then_chat(tmp_path: Path) -> None:
    backend = ScriptedBackend(shout)
    async with running(settings_for(tmp_path), backend, kb_docs=True) as (app, sink):
        await app.manager.handle(incoming("translate to German: see you tomorrow"))
        await app.manager.handle(incoming("search the docs for webhook mode"))
        await app.manager.handle(incoming("tell me a joke"))
        history = await app.store.history(1, 10)
    translated, answered, chat = sink.replies[KEY]
    assert translated == "SEE YOU TOMORROW"
    assert "Sources:\n[1] Telegram > Webhooks" in answered
    assert chat == "TELL ME A JOKE"
    assert "into German" in system_of(backend.requests[0])
    kinds = [(m.role.value, m.kind) for m in history]
    assert kinds[-1] == ("assistant", MessageKind.CHAT)  # only the chat turn joins the context
    assert kinds[1] == ("assistant", MessageKind.COMMAND)
    assert sink.chunks[0] > 1  # skill answers stream too


async def test_auto_translate_translates_other_languages_only(tmp_path: Path) -> None:
    backend = ScriptedBackend(shout)
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("/autotranslate Deutsch"))
        await app.manager.handle(incoming("Good morning, how are you doing today?"))
        await app.manager.handle(incoming("Guten Morgen, wie geht es dir heute?"))
        await app.manager.handle(incoming("/autotranslate off"))
        await app.manager.handle(incoming("Good evening, how was your day today?"))
    replies = sink.replies[KEY]
    assert replies[0].startswith("Auto-translate is on")
    assert replies[1] == "GOOD MORNING, HOW ARE YOU DOING TODAY?"
    assert "into German" in system_of(backend.requests[0])
    assert replies[2] == "GUTEN MORGEN, WIE GEHT ES DIR HEUTE?"  # German already: chat
    assert "into" not in system_of(backend.requests[1])
    assert replies[4] == "GOOD EVENING, HOW WAS YOUR DAY TODAY?"
    assert len(backend.requests) == 3


async def test_the_model_classifies_what_no_pattern_matched(tmp_path: Path) -> None:
    choice = '{"intent": "translate", "text": "the train leaves at noon", "language": "es"}'
    backend = StructuredBackend(choice, shout)
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(
            incoming("how would a Spaniard say the train leaves at noon? a translation please")
        )
    assert sink.replies[KEY] == ["THE TRAIN LEAVES AT NOON"]
    classify, translation = backend.requests
    assert classify.json_schema is not None
    assert "- translate:" in system_of(classify)
    assert "into Spanish" in system_of(translation)


async def test_ordinary_chat_costs_no_classification_call(tmp_path: Path) -> None:
    backend = StructuredBackend('{"intent": "translate"}', shout)
    async with running(settings_for(tmp_path), backend) as (app, sink):
        await app.manager.handle(incoming("how are you today"))
    assert sink.replies[KEY] == ["HOW ARE YOU TODAY"]
    assert len(backend.requests) == 1 and backend.requests[0].json_schema is None


async def test_model_intents_can_be_turned_off(tmp_path: Path) -> None:
    backend = StructuredBackend('{"intent": "translate"}', shout)
    async with running(settings_for(tmp_path, model_intents=False), backend) as (app, sink):
        await app.manager.handle(incoming("a translation of how are you"))
    assert sink.replies[KEY] == ["A TRANSLATION OF HOW ARE YOU"]
    assert all(r.json_schema is None for r in backend.requests)


async def test_operator_prompt_folder_overrides_a_template(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "translate.j2").write_text("Render {{ source }} as {{ target }}, pirate style.")
    backend = ScriptedBackend(shout)
    async with running(settings_for(tmp_path, prompts_dir=str(prompts)), backend) as (app, _):
        await app.manager.handle(incoming("/translate to fr Good morning to all of you"))
        await app.manager.handle(incoming("/summarize some text to shorten"))
    assert system_of(backend.requests[0]) == "Render English as French, pirate style."
    assert system_of(backend.requests[1]).startswith("Summarise the text")  # shipped one
