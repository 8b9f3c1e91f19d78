"""The web chat widget in real headless Chromium during a handoff (tests/test_support_widget.py
has the stack): the "connecting you" and "you are talking with NAME" states, and a person's
message with their name, shown as text, marked translated, its original a keyboard press
away. The agent acts through the real agent API with the site's server key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from adapters.support.sites import SiteStore
from bot.storage.database import create_engine
from tests.browser import shadow_eval
from tests.support_helpers import bearer
from tests.test_support_widget import (  # noqa: F401  (fixtures, used by name)
    LAUNCHER,
    PANEL,
    XSS_IMG,
    XSS_SCRIPT,
    Stack,
    ask,
    browser,
    new_page,
    open_chat,
    parley_serving,
    stack,
    wait_text,
)

AGENT = f"Dana {XSS_IMG}"
REPLY = "Your order ships **today**."
# The scripted model's answer to every request from here on: the translation into German.
GERMAN = f"Ihre Bestellung wird **heute** verschickt. {XSS_SCRIPT}"


async def server_key(at: Stack) -> str:
    """A server key for the site, made before Parley starts (so its directory has it)."""
    engine = create_engine(at.settings.database.url.get_secret_value())
    try:
        _, secret = await SiteStore(engine).add_key("shop")
    finally:
        await engine.dispose()
    return secret


async def test_a_persons_message_shows_their_name_as_text_marked_translated(
    stack: Stack,  # noqa: F811  (the fixture imported above)
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    secret = await server_key(stack)
    stack.backend.script([GERMAN], gated=False)
    async with (
        parley_serving(stack),
        httpx.AsyncClient(base_url=stack.api, headers=bearer(secret), timeout=30) as desk,
    ):
        page = await new_page(browser, locale="de-DE")  # Accept-Language: de-DE
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await ask(page, "Ich möchte mit einem Menschen sprechen")
        await wait_text(page, ".handoff", "t => t.includes('Person verbunden')")

        visitor = await page.evaluate(
            "k => JSON.parse(localStorage.getItem(k)).visitor_id", f"parley-widget:{stack.site_key}"
        )
        taken = await desk.post("/v1/handoff/take", json={"visitor_id": visitor, "agent": AGENT})
        assert taken.status_code == 200, taken.text
        status = await wait_text(page, ".handoff", "t => t.includes('Dana')")
        assert status == f"Sie sprechen mit {AGENT}."
        posted = await desk.post(
            "/v1/handoff/messages",
            headers={"Idempotency-Key": "r-1"},
            json={"visitor_id": visitor, "agent": AGENT, "text": REPLY},
        )
        assert posted.status_code == 202, posted.text

        shown = await wait_text(page, ".msg.agent .body", "t => t.includes('heute')")
        assert XSS_SCRIPT in shown and "(automatisch" not in shown
        assert await page.locator("parley-chat .msg.agent .who").inner_text() == AGENT
        assert await page.locator("parley-chat .msg.agent .body strong").inner_text() == "heute"
        mark = page.locator("parley-chat .msg.agent details summary")
        assert await mark.inner_text() == "Übersetzt"
        await mark.focus()
        await page.keyboard.press("Enter")  # a native <details>: the keyboard opens it
        original = page.locator("parley-chat .msg.agent .original")
        assert await original.inner_text() == "Your order ships today."
        assert await original.get_attribute("aria-label") == "Original"

        found = await shadow_eval(
            page, "root => root.querySelectorAll('img, script, iframe, [onerror]').length"
        )
        assert found == 0
        assert await page.evaluate("() => typeof window.__pwned") == "undefined"
        label = await shadow_eval(page, "root => root.querySelector('.msg.agent .sr').textContent")
        assert label == f"{AGENT}: "  # what a screen reader hears before the message
        box = await page.locator(PANEL).bounding_box()
        assert box is not None
        png = await page.screenshot(clip=box)
        (tmp_path / "support-widget-agent.png").write_bytes(png)

        back = await desk.post(
            "/v1/handoff/give-back", json={"visitor_id": visitor, "agent": AGENT}
        )
        assert back.status_code == 200
        await wait_text(page, ".msg.notice", "t => t.includes('wieder mit dem Assistenten')")
        assert await page.locator("parley-chat .handoff").is_hidden()


# Every entry of the conversation in the widget's log, in order (the "…" of an answer being
# waited for and the "Show earlier" button are not entries).
LOG_ENTRIES = """() => [...document.querySelector('parley-chat').shadowRoot
    .querySelectorAll('.log > .msg:not(.waiting)')].map(n => n.innerText.trim())"""


async def test_handoff_notes_show_once_in_their_place_after_a_reload(
    stack: Stack,  # noqa: F811  (the fixture imported above)
    browser: Any,  # noqa: F811
) -> None:
    """A person asked for, taken, then given back, with the agent's message and the bot's
    answer in between: after a reload the notes ("Connecting you...", "You are talking with
    Dana", "...the assistant again") are each shown once, where they were, whether the stream
    resumes after the last event seen or from an earlier one (the history's and the replayed
    events' then overlap). They were in no history: missing after the one reload, at the
    bottom after the other (and so twice on a page that had them)."""
    secret = await server_key(stack)
    stack.backend.script(["Happy to help again."], gated=False)
    storage = f"parley-widget:{stack.site_key}"
    async with (
        parley_serving(stack),
        httpx.AsyncClient(base_url=stack.api, headers=bearer(secret), timeout=30) as desk,
    ):
        page = await open_chat(browser, stack.page)
        await ask(page, "I want to talk to a human")
        await wait_text(page, ".handoff", "t => t.includes('Connecting')")
        visitor = await page.evaluate(
            "k => JSON.parse(localStorage.getItem(k)).visitor_id", storage
        )
        taken = await desk.post("/v1/handoff/take", json={"visitor_id": visitor, "agent": "Dana"})
        assert taken.status_code == 200, taken.text
        posted = await desk.post(
            "/v1/handoff/messages",
            headers={"Idempotency-Key": "r-1"},
            json={"visitor_id": visitor, "agent": "Dana", "text": "Your order ships today."},
        )
        assert posted.status_code == 202, posted.text
        await wait_text(page, ".msg.agent .body", "t => t.includes('ships today')")
        back = await desk.post(
            "/v1/handoff/give-back", json={"visitor_id": visitor, "agent": "Dana"}
        )
        assert back.status_code == 200, back.text
        await wait_text(page, ".msg.notice", "t => t.includes('assistant again')")
        await ask(page, "thanks")
        await wait_text(page, ".msg.bot .body", "t => t.includes('Happy to help again')")
        shown = await page.evaluate(LOG_ENTRIES)
        for note in ("Connecting you", "You are talking with Dana", "assistant again"):
            assert sum(note in entry for entry in shown) == 1, shown

        await page.reload()
        await page.click(LAUNCHER)
        await wait_text(page, ".msg.bot .body", "t => t.includes('Happy to help again')")
        assert await page.evaluate(LOG_ENTRIES) == shown  # after the last event seen

        # From the conversation's first event: what the history shows is replayed too.
        newest = await page.evaluate(
            "k => JSON.parse(localStorage.getItem(k)).last_event_id", storage
        )
        await page.evaluate(
            """k => {
                const saved = JSON.parse(localStorage.getItem(k));
                localStorage.setItem(k, JSON.stringify({ ...saved, last_event_id: "0-0" }));
            }""",
            storage,
        )
        await page.reload()
        await page.click(LAUNCHER)
        await wait_text(page, ".msg.bot .body", "t => t.includes('Happy to help again')")
        await page.wait_for_function(  # every event replayed, up to the newest
            "([k, id]) => JSON.parse(localStorage.getItem(k)).last_event_id === id",
            arg=[storage, newest],
        )
        assert await page.evaluate(LOG_ENTRIES) == shown
