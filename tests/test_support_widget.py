"""The web chat widget (adapters/support/static/widget.js) in real headless Chromium, embedded
in another site's page, against the real support API on Parley's HTTP host with PostgreSQL
and Redis. The model is a double at the backend seam whose answer each test sets, released
piece by piece, so a test sees an answer at every stage without assuming any timing.

Also the pages themselves (/widget.js, the demo page) over HTTP, without a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from adapters.kit.runner import run_adapters
from adapters.support import pages
from adapters.support.settings import SupportSettings
from adapters.support.sites import SiteStore
from bot.app import Parley
from bot.settings import Settings, load_settings
from bot.storage import migrate
from bot.storage.database import create_engine
from tests.browser import PacedBackend, chromium, embedding_page, shadow_eval
from tests.local_server import serving
from tests.ports import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "support-widget.png"
# Generous bounds for the browser to show what the server sent: a hang fails, never a pace.
SHOWN_MS = 20_000
# After the server comes back, the widget's backoff may wait up to 8 s before its next try.
RECOVERED_MS = 45_000
STOPPED_S = 30
XSS_IMG = "<img src=x onerror=window.__pwned=1>"
XSS_SCRIPT = "<script>window.__pwned=1</script>"
HTML_SINKS = (
    r"(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function"
    r"|createContextualFragment|DOMParser"
)

LAUNCHER = "parley-chat .launcher"
INPUT = "parley-chat textarea"
PANEL = "parley-chat .panel"
BANNER = "parley-chat .banner"
USER_MSGS = "parley-chat .msg.user"
BOT_MSGS = "parley-chat .msg.bot"
# What a message says, without the label that screen readers hear before it.
USER_TEXT = "parley-chat .msg.user .text"
BOT_TEXT = "parley-chat .msg.bot .body"


@dataclass
class Stack:
    settings: Settings
    backend: PacedBackend
    api: str  # Parley's HTTP host: the API and /widget.js
    page: str  # another site's page that embeds the widget
    site_key: str
    tmp_path: Path


@contextlib.asynccontextmanager
async def parley_serving(
    stack: Stack, support: SupportSettings | None = None
) -> AsyncIterator[Parley]:
    """`parley run` with the support adapter, in this loop, until the block ends."""
    async with Parley(stack.settings, backend=stack.backend) as app:
        stop = asyncio.Event()
        sections = {"support": support} if support is not None else None
        running = asyncio.create_task(run_adapters(app, ["support"], sections, stop=stop))
        async with httpx.AsyncClient(base_url=stack.api) as client:
            for _ in range(500):  # started within seconds, or the test fails
                if running.done():
                    running.result()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the HTTP host did not start")
        try:
            yield app
        finally:
            stack.backend.release_all()  # a turn held by the gate must not hold the stop
            stop.set()
            try:  # with the widget's event stream open, as a real stop happens
                async with asyncio.timeout(STOPPED_S):
                    await running
            except TimeoutError:
                pytest.fail(f"Parley did not stop within {STOPPED_S} s with a stream open")


@pytest.fixture
async def stack(
    tmp_path: Path, postgres_url: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Stack]:
    await migrate.upgrade(postgres_url)
    api_port, page_port = free_port(), free_port()
    settings = load_settings(
        None,
        database={"url": postgres_url},
        redis={"url": redis_url, "key_prefix": key_prefix},
        knowledge={"load_sample": False},
        adapters=["support"],
        http={"host": "127.0.0.1", "port": api_port},
        support={"token_secret": "widget-test-secret-32-characters", "visitor_messages": 5},
    )
    engine = create_engine(postgres_url)
    try:  # the page's origin, and Parley's own for the demo page
        origins = [f"http://127.0.0.1:{page_port}", f"http://127.0.0.1:{api_port}"]
        site = await SiteStore(engine).add_site("shop", origins)
    finally:
        await engine.dispose()
    api = f"http://127.0.0.1:{api_port}"
    page_app = embedding_page(f"{api}/widget.js", site.public_key)
    async with serving(page_app, page_port):
        yield Stack(
            settings, PacedBackend(), api, f"http://127.0.0.1:{page_port}/", site.public_key,
            tmp_path,
        )  # fmt: skip


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def new_page(browser: Any, **context: Any) -> Any:
    ctx = await browser.new_context(**{"viewport": {"width": 900, "height": 720}, **context})
    page = await ctx.new_page()
    page.set_default_timeout(SHOWN_MS)
    return page


async def open_chat(browser: Any, url: str) -> Any:
    """A new page at `url` (one that embeds the widget), its chat panel opened."""
    page = await new_page(browser)
    await page.goto(url)
    await page.click(LAUNCHER)
    return page


async def ask(page: Any, text: str) -> None:
    await page.fill(INPUT, text)
    await page.press(INPUT, "Enter")


async def wait_text(page: Any, selector: str, predicate: str) -> str:
    """Wait until the last element matching `selector` (inside the widget) has a text for
    which the JS `predicate(text)` holds; returns that text."""
    handle = await page.wait_for_function(
        """([sel, pred]) => {
            const root = document.querySelector('parley-chat')?.shadowRoot;
            const all = root ? root.querySelectorAll(sel) : [];
            const text = all.length ? all[all.length - 1].innerText : null;
            return text !== null && (0, eval)(pred)(text) ? text : null;
        }""",
        arg=[selector.removeprefix("parley-chat "), predicate],
        timeout=SHOWN_MS,
    )
    return str(await handle.json_value())


async def final_answer(page: Any, count: int = 1, *, timeout_ms: int = SHOWN_MS) -> str:
    """Wait for the `count`th answer to be complete (no longer busy); returns its text."""
    await page.wait_for_function(
        """(n) => {
            const root = document.querySelector('parley-chat').shadowRoot;
            const done = root.querySelectorAll('.msg.bot:not([aria-busy])');
            return done.length >= n;
        }""",
        arg=count,
        timeout=timeout_ms,
    )
    return str(await page.locator(BOT_TEXT).nth(count - 1).inner_text())


STREAMED = [
    "Returns are **free** ",
    "within *30 days* of delivery.",
    "\n\n- print the label at home\n- bring the `order number`\n",
    "\nSources:\n[1] Returns policy https://shop.example/returns",
]


async def test_answer_streams_in_and_stays_after_a_reload(stack: Stack, browser: Any) -> None:
    stack.backend.script(STREAMED)
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "How do returns work?")

        first = await wait_text(page, BOT_TEXT, "t => t.includes('free')")
        stack.backend.release()
        second = await wait_text(page, BOT_TEXT, "t => t.includes('30 days')")
        assert first != second and "30 days" not in first
        assert await page.locator(f"{BOT_MSGS} strong").first.inner_text() == "free"
        assert await page.locator(BOT_MSGS).last.get_attribute("aria-busy") == "true"
        await screenshot(page, stack.tmp_path)

        stack.backend.release_all()
        final = await final_answer(page)
        assert final not in (first, second)
        assert "print the label at home" in final
        assert await page.locator(f"{BOT_TEXT} li").count() == 2
        assert await page.locator(f"{BOT_TEXT} code").inner_text() == "order number"
        link = page.locator(f"{BOT_MSGS} .sources a")
        assert await link.get_attribute("href") == "https://shop.example/returns"
        assert await link.get_attribute("rel") == "noopener noreferrer"
        assert await link.get_attribute("target") == "_blank"
        assert "Sources:" not in final  # shown once, as the list of links

        await page.reload()
        await page.click(LAUNCHER)
        await wait_text(page, USER_TEXT, "t => t === 'How do returns work?'")
        restored = await final_answer(page)
        assert "within 30 days of delivery" in restored
        assert await page.locator(f"{BOT_MSGS} .sources a").count() == 1

        # The stream resumed after the last event it had shown: nothing comes twice.
        stack.backend.script(["And exchanges too."], gated=False)
        await ask(page, "And exchanges?")
        assert await final_answer(page, 2) == "And exchanges too."
        assert await page.locator(USER_MSGS).count() == 2
        assert await page.locator(BOT_MSGS).count() == 2
    assert len(stack.backend.requests) == 2


async def screenshot(page: Any, tmp_path: Path) -> None:
    """The widget mid-answer: a test artifact, and the docs' picture when asked for
    (PARLEY_UPDATE_DOCS_IMG=1)."""
    box = await page.locator(PANEL).bounding_box()
    assert box is not None
    clip = {"x": box["x"] - 24, "y": box["y"] - 24, "width": box["width"] + 48,
            "height": box["height"] + 24 + 100}  # fmt: skip
    png = await page.screenshot(clip=clip)
    (tmp_path / "support-widget.png").write_bytes(png)
    if os.environ.get("PARLEY_UPDATE_DOCS_IMG") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        DOCS_SCREENSHOT.write_bytes(png)


async def test_html_in_an_answer_or_a_question_is_text_and_runs_nothing(
    stack: Stack, browser: Any
) -> None:
    stack.backend.script(
        [f"Look: {XSS_IMG} ", f"and {XSS_SCRIPT} ", "and [a link](javascript:window.__pwned=1)."],
        gated=False,
    )
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, f"Is this safe? {XSS_IMG}")
        answer = await final_answer(page)
        assert XSS_IMG in answer and XSS_SCRIPT in answer
        assert await page.locator(USER_TEXT).inner_text() == f"Is this safe? {XSS_IMG}"
        found = await shadow_eval(
            page,
            "root => [root.querySelectorAll('img, script, iframe').length,"
            " [...root.querySelectorAll('a')].map(a => a.href)]",
        )
        assert found == [0, []]
        assert await page.evaluate("() => typeof window.__pwned") == "undefined"


async def test_a_masked_link_shows_the_host_it_goes_to(stack: Stack, browser: Any) -> None:
    """A masked link whose text looked like another address was shown as written: a prompt
    injection's "[https://shop.example/pay](https://evil.example/p?d=...)" read as the shop's
    own address. Its host now follows the text; a link whose text is its address, and a bare
    URL, are shown as they are."""
    stack.backend.script(
        [
            "Pay at [https://shop.example/pay](https://evil.example/p?d=s3cret), ",
            "see [the returns page](https://shop.example/returns), ",
            "[shop.example/faq](https://shop.example/faq/) or https://shop.example/help .",
        ],
        gated=False,
    )
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "Where do I pay?")
        assert await final_answer(page) == (
            "Pay at https://shop.example/pay (evil.example), see the returns page "
            "(shop.example), shop.example/faq or https://shop.example/help ."
        )
        hrefs = await shadow_eval(page, "root => [...root.querySelectorAll('a')].map(a => a.href)")
        assert hrefs == [
            "https://evil.example/p?d=s3cret",
            "https://shop.example/returns",
            "https://shop.example/faq/",
            "https://shop.example/help",
        ]


async def test_an_address_that_reads_as_another_host_shows_where_it_goes(
    stack: Stack, browser: Any
) -> None:
    """A link whose text is its own address was shown as it is, bare or masked; but an
    address can read as another host: "https://shop.example@evil.example/" goes to
    evil.example (the shop's name is a user name), and "https://аpple.example" (a Cyrillic
    "а") to xn--pple-43d.example. Where the host as written is not the one it goes to, or the
    address names a user, the host follows it; an address as it is goes on as it was."""
    stack.backend.script(
        [
            "Pay at https://shop.example@evil.example/pay?d=s3cret or ",
            "[https://shop.example@evil.example/](https://shop.example@evil.example/), ",
            "[shop.example@evil.example](https://shop.example@evil.example/), ",
            "log in at https://\u0430pple.example/login, not https://SHOP.example/help .",
        ],
        gated=False,
    )
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "Where do I pay?")
        assert await final_answer(page) == (
            "Pay at https://shop.example@evil.example/pay?d=s3cret (evil.example) or "
            "https://shop.example@evil.example/ (evil.example), "
            "shop.example@evil.example (evil.example), "
            "log in at https://\u0430pple.example/login (xn--pple-43d.example), "
            "not https://SHOP.example/help ."
        )


async def test_markdown_built_to_be_slow_renders_whole(stack: Stack, browser: Any) -> None:
    """The widget's Markdown renderer searched for each span's end again from every opening
    delimiter, so some answers took it quadratic or cubic time and froze the visitor's tab (a
    heading line ending in a long run of blanks: about half a minute for 5000), and a long
    run of "_" nested bold in bold until the stack ran out and the answer stayed blank. Such
    an answer now renders, its text as sent, and Markdown around it as before."""
    blanks = " " * 5000
    hostile = [f"# Returns{blanks}x", "*a " * 3000, "[" * 5000, "_" * 20000]
    normal = "Still **bold**, *italic*, `code` and [a link](https://shop.example/x)."
    stack.backend.script([f"{piece}\n\n" for piece in hostile] + [normal], gated=False)
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "Tell me about returns")
        await final_answer(page)
        shown = await shadow_eval(
            page,
            "root => [...root.querySelector('.msg.bot .body').children].map("
            "n => [n.tagName, n.textContent])",
        )
        assert [tag for tag, _ in shown] == ["P"] * 5
        texts = [text for _, text in shown]
        assert texts[0] == f"Returns{blanks}x"  # a heading, without its # and blanks
        assert texts[1].strip() == hostile[1].strip() and texts[2] == hostile[2]
        # The run's outer pairs are bold (a few levels deep at most); the rest is shown as is.
        assert set(texts[3]) == {"_"} and len(texts[3]) > len(hostile[3]) - 100
        assert texts[4] == "Still bold, italic, code and a link (shop.example)."
        tags = await shadow_eval(
            page,
            "root => [...root.querySelectorAll('.msg.bot .body > p:last-child > *')]"
            ".map(n => n.tagName)",
        )
        assert tags == ["STRONG", "EM", "CODE", "A", "SPAN"]


async def test_arabic_is_written_right_to_left(stack: Stack, browser: Any) -> None:
    stack.backend.script(["يمكنك إرجاع المنتج ", "خلال ثلاثين يومًا."], gated=False)
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page + "?lang=ar")
        assert await page.locator("parley-chat .send").inner_text() == "إرسال"
        await ask(page, "Can I return it?")
        assert "ثلاثين" in await final_answer(page)
        directions = await shadow_eval(
            page,
            "root => ['.panel', '.msg.bot', '.msg.user'].map("
            "s => getComputedStyle(root.querySelector(s)).direction)",
        )
        # The panel is Arabic; each message takes the direction of its own text.
        assert directions == ["rtl", "rtl", "ltr"]


async def test_keyboard_alone_opens_asks_and_closes(stack: Stack, browser: Any) -> None:
    stack.backend.script(["Your order ships today."], gated=False)
    async with parley_serving(stack):
        page = await new_page(browser)
        await page.goto(stack.page)
        await page.wait_for_selector(LAUNCHER)
        focused = ""
        for _ in range(5):  # the page's own link first, then the widget
            await page.keyboard.press("Tab")
            focused = await focused_in_widget(page)
            if focused == "launcher":
                break
        assert focused == "launcher"
        outline = await shadow_eval(
            page, "root => getComputedStyle(root.querySelector('.launcher')).outlineStyle"
        )
        assert outline != "none"  # a visible focus ring

        await page.keyboard.press("Enter")
        assert await focused_in_widget(page) == "input"
        assert await page.locator(PANEL).is_visible()
        labels = await shadow_eval(
            page,
            "root => [root.querySelector('textarea').labels[0]?.textContent,"
            " root.querySelector('[role=log]').getAttribute('aria-live')]",
        )
        assert labels == ["Your message", "polite"]
        await page.keyboard.type("Where is my order?")
        await page.keyboard.press("Enter")
        assert await final_answer(page) == "Your order ships today."
        await page.keyboard.press("Tab")
        assert await focused_in_widget(page) == "send"

        await page.keyboard.press("Escape")
        assert not await page.locator(PANEL).is_visible()
        assert await focused_in_widget(page) == "launcher"


async def focused_in_widget(page: Any) -> str:
    return str(
        await page.evaluate(
            """() => {
                const host = document.activeElement;
                if (!host || host.tagName !== 'PARLEY-CHAT') return '';
                const el = host.shadowRoot.activeElement;
                if (!el) return '';
                if (el.tagName === 'TEXTAREA') return 'input';
                return el.classList[0] || el.tagName.toLowerCase();
            }"""
        )
    )


async def test_a_phone_screen_gets_the_whole_screen(stack: Stack, browser: Any) -> None:
    async with parley_serving(stack):
        page = await new_page(
            browser, viewport={"width": 390, "height": 844}, is_mobile=True, locale="de-DE"
        )
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        assert await page.locator("parley-chat .send").inner_text() == "Senden"  # the phone's
        panel = await page.locator(PANEL).bounding_box()
        field = await page.locator(INPUT).bounding_box()
        assert panel is not None and field is not None
        assert panel["x"] >= 0 and panel["y"] >= 0
        assert panel["x"] + panel["width"] <= 390 and panel["y"] + panel["height"] <= 844
        assert panel["width"] == 390  # full screen under 480 px
        assert field["y"] + field["height"] <= 844  # the input is on screen
        assert not await page.locator(LAUNCHER).is_visible()  # the panel has its own close


async def test_the_server_going_away_shows_a_banner_and_nothing_is_lost(
    stack: Stack, browser: Any
) -> None:
    stack.backend.script(["First answer."], gated=False)
    page = await new_page(browser)
    async with parley_serving(stack):
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await ask(page, "first")
        assert await final_answer(page) == "First answer."
        assert not await page.locator(BANNER).is_visible()

    # Stopped: the stream breaks, and the widget says so.
    banner = await wait_text(page, ".banner", "t => t.length > 0")
    assert banner == "The assistant can't be reached right now. Retrying…"
    await ask(page, "second, sent while the server is away")
    assert "Sending" in await page.locator(USER_MSGS).last.inner_text()

    stack.backend.script(["Second answer."], gated=False)
    async with parley_serving(stack):  # back: the retried message is answered, once
        assert await final_answer(page, 2, timeout_ms=RECOVERED_MS) == "Second answer."
        await page.wait_for_selector(BANNER, state="hidden", timeout=RECOVERED_MS)
    assert await page.locator(BOT_MSGS).count() == 2
    assert len(stack.backend.requests) == 2


async def test_back_online_reconnects_without_flashing_the_unreachable_banner(
    stack: Stack, browser: Any
) -> None:
    """The browser's `online` event reopens the stream (the old one may be dead without a
    word); it showed "cannot be reached" for the second the reconnect took. The banner is
    watched for any change, so a flash counts however short."""
    stack.backend.script(["First answer."], gated=False)
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "first")
        assert await final_answer(page) == "First answer."
        await page.evaluate(
            """() => {
                const banner = document.querySelector('parley-chat').shadowRoot
                    .querySelector('.banner');
                window.__bannerShown = [];
                new MutationObserver(() => {
                    if (!banner.hidden) window.__bannerShown.push(banner.textContent);
                }).observe(banner, { attributes: true, childList: true, characterData: true,
                                     subtree: true });
                window.dispatchEvent(new Event('online'));
            }"""
        )
        stack.backend.script(["Second answer."], gated=False)
        await ask(page, "second")  # answered on the reopened stream
        assert await final_answer(page, 2) == "Second answer."
        assert await page.evaluate("() => window.__bannerShown") == []
        assert not await page.locator(BANNER).is_visible()


async def test_a_message_still_sending_when_the_page_closes_is_sent_by_the_next_page(
    stack: Stack, browser: Any
) -> None:
    """A message typed while the network was away stayed "Sending…" only as long as its
    page: a reload, or the site's next page, lost it without a word. It is now kept with the
    visitor's token until the server takes it, and the next page sends it, once, in order."""
    stack.backend.script(["Got it."], gated=False)
    sent = ["sent while offline", "and a second one"]
    async with parley_serving(stack):
        page = await new_page(browser)
        await page.route(f"{stack.api}/v1/messages", lambda route: route.abort())  # offline
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        for text in sent:
            await ask(page, text)
        await wait_text(page, USER_MSGS, "t => t.includes('Sending')")
        context = page.context
        await page.close()

        page = await context.new_page()
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await final_answer(page)
        await page.wait_for_selector(f"{USER_MSGS}.pending", state="detached")
        assert await page.locator(USER_TEXT).all_inner_texts() == sent
        stored = await page.evaluate(
            "key => JSON.parse(localStorage.getItem(`parley-widget:${key}`))", stack.site_key
        )
        assert stored["outbox"] == []  # sent: no later page sends it again
        async with httpx.AsyncClient(base_url=stack.api) as client:
            history = await client.get(
                "/v1/history", headers={"Authorization": f"Bearer {stored['token']}"}
            )
        recorded = [m["text"] for m in history.json()["messages"] if m["role"] == "user"]
        assert recorded == sent  # each once, in order


async def test_messages_reach_the_server_in_the_order_they_were_sent(
    stack: Stack, browser: Any
) -> None:
    """A message whose post failed (a network blip) was posted again after its backoff, and
    the next message, posted at once, got there first: the server recorded and answered them
    in the other order than the visitor's screen showed. A message now waits for the one
    before it."""
    stack.backend.script(["Noted."], gated=False)
    sent = ["first", "second"]
    refused: list[str] = []
    retried, through = asyncio.Event(), asyncio.Event()

    async def blip(route: Any) -> None:  # the first message's posts fail until told
        if not through.is_set() and '"first"' in (route.request.post_data or ""):
            refused.append("first")
            if len(refused) == 2:
                retried.set()
            await route.abort()
        else:
            await route.continue_()

    async with parley_serving(stack):
        page = await new_page(browser)
        await page.route(f"{stack.api}/v1/messages", blip)
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        for text in sent:
            await ask(page, text)
        async with asyncio.timeout(SHOWN_MS / 1000):
            await retried.wait()  # refused, and tried again
        through.set()
        await page.wait_for_selector(f"{USER_MSGS}.pending", state="detached")
        await final_answer(page)
        stored = await page.evaluate(
            "key => JSON.parse(localStorage.getItem(`parley-widget:${key}`))", stack.site_key
        )
        async with httpx.AsyncClient(base_url=stack.api) as client:
            history = await client.get(
                "/v1/history", headers={"Authorization": f"Bearer {stored['token']}"}
            )
        recorded = [m["text"] for m in history.json()["messages"] if m["role"] == "user"]
        assert recorded == sent
        assert await page.locator(USER_TEXT).all_inner_texts() == sent


async def test_too_many_messages_says_when_to_try_again(stack: Stack, browser: Any) -> None:
    limited = SupportSettings(token_secret="widget-test-secret-32-characters", visitor_messages=1)  # type: ignore[arg-type]
    stack.backend.script(["Fine."], gated=False)
    async with parley_serving(stack, limited):
        page = await open_chat(browser, stack.page)
        await ask(page, "one")
        await final_answer(page)
        await ask(page, "two")
        banner = await wait_text(page, ".banner", "t => /try again/.test(t)")
        assert re.fullmatch(r"Too many messages, try again in \d+ s\.", banner)
        assert await page.locator("parley-chat .send").is_disabled()
        assert await page.locator(INPUT).input_value() == "two"  # nothing typed is lost
        assert await page.locator(USER_MSGS).count() == 1


async def test_a_message_sent_in_one_tab_shows_in_the_visitors_other_tab(
    stack: Stack, browser: Any
) -> None:
    """The other tab showed the answer under no question until it was reloaded."""
    stack.backend.script(["Two ", "tabs."])
    async with parley_serving(stack):
        first = await new_page(browser)
        await first.goto(stack.page)
        await first.click(LAUNCHER)
        await ask(first, "warm up")  # the visitor exists, and both tabs share it
        stack.backend.release_all()
        await final_answer(first)
        second = await first.context.new_page()
        await second.goto(stack.page)
        await second.click(LAUNCHER)
        await final_answer(second)
        stack.backend.script(["Seen ", "twice."])
        await ask(first, "from the first tab")
        stack.backend.release_all()
        for page in (first, second):
            assert await final_answer(page, 2) == "Seen twice."
            texts = await page.locator(USER_TEXT).all_inner_texts()
            assert texts == ["warm up", "from the first tab"]  # once each, above its answer
            order = await page.locator("parley-chat .msg.user, parley-chat .msg.bot").evaluate_all(
                "nodes => nodes.map(n => n.classList.contains('user') ? 'user' : 'bot')"
            )
            assert order == ["user", "bot", "user", "bot"]


def history_message(n: int, role: str, text: str, **more: str) -> dict[str, Any]:
    at = f"2026-12-01T10:00:{n:02}+00:00"
    return {"id": str(n), "role": role, "text": text, "sources": [], "created_at": at, **more}


# Two pages of /v1/history as the server answers them (oldest first within a page): a person's
# message and a notice on the earlier one.
HISTORY_PAGES = {
    "": {
        "messages": [
            history_message(4, "user", "Q4 second question"),
            history_message(5, "agent", "A5 Dana answers Q4", name="Dana"),
            history_message(6, "user", "Q6 third question"),
            history_message(7, "assistant", "B7 the bot answers Q6", reply_to="6"),
        ],
        "next": "4",
    },
    "4": {
        "messages": [
            history_message(1, "user", "Q1 first question"),
            history_message(2, "agent", "A2 Dana answers Q1", name="Dana"),
            history_message(3, "notice", "N3 the assistant is back"),
        ],
        "next": None,
    },
}


async def serve_history_pages(page: Any, stack: Stack) -> None:
    """The page gets its history from HISTORY_PAGES: a real history of two pages is over 50
    messages."""
    origin = stack.page.rstrip("/")

    async def history(route: Any) -> None:
        before = parse_qs(urlsplit(route.request.url).query).get("before", [""])[0]
        await route.fulfill(
            json=HISTORY_PAGES[before], headers={"Access-Control-Allow-Origin": origin}
        )

    await page.route(f"{stack.api}/v1/history*", history)


async def test_show_earlier_puts_an_earlier_page_above_in_order(stack: Stack, browser: Any) -> None:
    """A person's messages and notices of an earlier page were added at the bottom, below the
    newest message, while the visitor's questions and the bot's answers went above."""
    async with parley_serving(stack):
        page = await new_page(browser)
        await serve_history_pages(page, stack)
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await wait_text(page, BOT_TEXT, "t => t.includes('B7')")
        await page.click("parley-chat .earlier")
        await page.locator("parley-chat .msg.notice", has_text="N3").wait_for()  # the last of it
        shown = await page.locator("parley-chat .msg").evaluate_all(
            "nodes => nodes.map(n => n.textContent.match(/[QABN][0-9]/)[0])"
        )
        assert await page.locator("parley-chat .earlier").count() == 0  # no page before it
    assert shown == ["Q1", "A2", "N3", "Q4", "A5", "Q6", "B7"]


async def test_show_earlier_by_keyboard_keeps_the_keyboard_in_the_conversation(
    stack: Stack, browser: Any
) -> None:
    """The "Show earlier messages" button pressed with Enter was removed with the focus, which
    fell back to the page's start: the next Tab left the chat. The focus now goes to the next
    such button, or to the conversation when there is no earlier page."""
    async with parley_serving(stack):
        page = await new_page(browser)
        await serve_history_pages(page, stack)
        await page.goto(stack.page)
        await page.click(LAUNCHER)
        await wait_text(page, BOT_TEXT, "t => t.includes('B7')")
        await page.focus("parley-chat .earlier")
        await page.keyboard.press("Enter")
        await page.locator("parley-chat .msg.notice", has_text="N3").wait_for()
        assert await focused_in_widget(page) == "log"
        await page.keyboard.press("Tab")
        assert await focused_in_widget(page) == "input"


async def test_a_reload_before_the_first_word_still_shows_the_answer_is_coming(
    stack: Stack, browser: Any
) -> None:
    """After a reload the "…" bubble was gone until the first word came: nothing said that
    an answer was on its way (a slow model, or one being retried, can take a minute)."""
    stack.backend.script(["", "Here it is."])  # nothing shown until the test says so
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "Anyone there?")
        await stack.backend.streaming.wait()
        await page.reload()
        await page.click(LAUNCHER)
        await wait_text(page, USER_TEXT, "t => t === 'Anyone there?'")
        await page.locator("parley-chat .msg.waiting").wait_for()
        stack.backend.release_all()
        assert await final_answer(page) == "Here it is."
        assert await page.locator("parley-chat .msg.waiting").count() == 0


async def test_a_wrong_site_key_says_the_chat_is_not_available_here_and_stops(
    stack: Stack, browser: Any, postgres_url: str
) -> None:
    """A page with a mistyped key showed "can't be reached. Retrying..." and retried for ever,
    its message stuck at "Sending...": a refusal for good now says so and stops."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    engine = create_engine(postgres_url)
    try:  # the origin is another site's: the refusal can be read
        await SiteStore(engine).add_site("other", [origin])
    finally:
        await engine.dispose()
    wrong = embedding_page(f"{stack.api}/widget.js", "pk_wrongkey123")
    async with parley_serving(stack), serving(wrong, port):
        page = await open_chat(browser, f"{origin}/")
        banner = await wait_text(page, ".banner", "t => t.length > 0")
        assert banner == "The chat isn't available on this page."
        assert await page.locator("parley-chat .send").is_disabled()


async def test_the_demo_page_works_under_its_strict_csp(stack: Stack, browser: Any) -> None:
    demo = SupportSettings(
        token_secret="widget-test-secret-32-characters",  # type: ignore[arg-type]
        demo=True,
        demo_site_key=stack.site_key,
    )
    stack.backend.script(["Welcome to the demo."], gated=False)
    async with parley_serving(stack, demo):
        page = await new_page(browser)
        said: list[str] = []
        page.on("console", lambda message: said.append(message.text))
        await page.goto(stack.api + "/")
        await page.click(LAUNCHER)
        position = await shadow_eval(
            page, "root => getComputedStyle(root.querySelector('.launcher')).position"
        )
        assert position == "fixed"  # the widget's styles apply under the page's CSP
        await ask(page, "hello")
        assert await final_answer(page) == "Welcome to the demo."
        assert not [line for line in said if "Content Security Policy" in line]


# -- the pages over HTTP, no browser ------------------------------------------------------------


@dataclass
class _Pages:
    demo: bool
    demo_site_key: str


def _client(settings: _Pages) -> httpx.AsyncClient:
    app = Starlette(routes=pages.routes(settings))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://parley")


async def test_the_script_is_served_with_caching_and_for_other_sites() -> None:
    async with _client(_Pages(demo=False, demo_site_key="")) as client:
        script = await client.get("/widget.js")
        assert script.status_code == 200
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.headers["cross-origin-resource-policy"] == "cross-origin"
        # No way from a string to markup or code anywhere in it.
        assert not re.search(HTML_SINKS, script.text)
        again = await client.get("/widget.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert (await client.get("/")).status_code == 404  # no demo unless asked for


async def test_the_demo_page_embeds_the_demo_key_escaped() -> None:
    async with _client(_Pages(demo=True, demo_site_key='pk_"><script>')) as client:
        page = await client.get("/")
    assert page.status_code == 200
    assert 'data-site-key="pk_&quot;&gt;&lt;script&gt;"' in page.text
    assert '<script src="/widget.js"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


async def test_the_demo_without_a_key_says_what_is_missing() -> None:
    async with _client(_Pages(demo=True, demo_site_key="")) as client:
        page = await client.get("/")
    assert page.status_code == 503
    assert "support.demo_site_key" in page.text
