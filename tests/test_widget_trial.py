"""The web chat widget attacked as a hostile model, a hostile agent and a careless host page
would, in real headless Chromium against the real support API, PostgreSQL and Redis (the
stack of tests/test_support_widget.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import html
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from adapters.support.sites import SiteStore
from bot.storage.database import create_engine
from tests.browser import shadow_eval
from tests.local_server import serving
from tests.support_helpers import bearer
from tests.test_support_desk_widget import server_key
from tests.test_support_widget import (
    INPUT,
    LAUNCHER,
    Stack,
    ask,
    browser,
    final_answer,
    free_port,
    new_page,
    open_chat,
    parley_serving,
    stack,
    wait_text,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
__all__ = ["browser", "stack"]  # the fixtures

# Each character of the text under a node, in the order written, with where it is drawn
# (its left edge on screen).
GLYPHS = """node => {
    const walker = document.createTreeWalker(node, NodeFilter.SHOW_TEXT);
    const glyphs = [];
    for (let text = walker.nextNode(); text; text = walker.nextNode()) {
        for (let i = 0; i < text.length; i++) {
            const r = document.createRange();
            r.setStart(text, i);
            r.setEnd(text, i + 1);
            const box = r.getBoundingClientRect();
            if (box.width) glyphs.push([text.data[i], box.left]);
        }
    }
    return glyphs;
}"""
# Where each character of the host shown after a link is drawn, left to right on screen
# in the order it is written when the host reads as it is.
HOST_GLYPHS_X = (
    "root => [...root.querySelectorAll('.msg.bot .host')]"
    f".map(span => ({GLYPHS})(span).map(([, x]) => x))"
)


async def test_a_bidi_override_in_a_links_text_cannot_turn_its_host_around(
    stack: Stack, browser: Any
) -> None:
    """The host shown after a link is the one thing in an answer the model does not write;
    a RIGHT-TO-LEFT OVERRIDE (U+202E) in the link's text ran on past the link, so the host
    " (moc.lapyap.evil.example)" was drawn backwards and read "elpmaxe.live.paypal.com"."""
    stack.backend.script(
        ["Log in at [\u202eyour account](https://moc.lapyap.evil.example/login) today."],
        gated=False,
    )
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "Where do I log in?")
        await final_answer(page)
        hosts = await shadow_eval(
            page, "root => [...root.querySelectorAll('.host')].map(s => s.textContent)"
        )
        assert hosts == [" (moc.lapyap.evil.example)"]
        (xs,) = await shadow_eval(page, HOST_GLYPHS_X)
        assert len(xs) == len("(moc.lapyap.evil.example)")
        assert xs == sorted(xs), "the host is drawn out of order"


def two_tags_in_head(stack: Stack) -> Starlette:
    """A page with the widget's tag twice in its <head>, without `async`."""
    tag = (
        f'<script src="{html.escape(stack.api)}/widget.js"'
        f' data-site-key="{html.escape(stack.site_key)}"></script>'
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shop</title>'
        f"{tag}{tag}</head><body><h1>A shop</h1></body></html>"
    )

    async def serve(request: Request) -> Response:
        return HTMLResponse(body)

    return Starlette(routes=[Route("/", serve)])


async def listed_port(stack: Stack) -> int:
    """A free port whose origin the site lists (before Parley starts, so its directory has
    it): for a page of the test's own making."""
    port = free_port()
    engine = create_engine(stack.settings.database.url.get_secret_value())
    try:
        await SiteStore(engine).update_site("shop", add_origins=[f"http://127.0.0.1:{port}"])
    finally:
        await engine.dispose()
    return port


def forum_page(stack: Stack, post: str, *, tag_in: str = "body") -> Starlette:
    """A page of the test's own with `post` (markup) in its body, and the widget's tag in its
    <head> (without `async`) or at the end of its <body> (with it)."""
    tag = (
        f'<script src="{html.escape(stack.api)}/widget.js"'
        f' data-site-key="{html.escape(stack.site_key)}"{"" if tag_in == "head" else " async"}>'
        "</script>"
    )
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Forum</title>'
        f"{tag if tag_in == 'head' else ''}</head><body><p>A post: {post}</p>"
        f"{tag if tag_in == 'body' else ''}</body></html>"
    )

    async def serve(request: Request) -> Response:
        return HTMLResponse(body)

    return Starlette(routes=[Route("/", serve)])


async def test_the_tag_twice_in_a_pages_head_makes_one_chat(stack: Stack, browser: Any) -> None:
    """A page with the widget's tag twice (a theme's header and a plugin's, without
    `async`) in its <head> got two chats: the first waits for <body> to add its element, so
    the second found none and added its own; two launchers on top of each other, two
    streams, two writers of the same saved state."""
    stack.backend.script(["Hello."], gated=False)
    port = await listed_port(stack)
    async with serving(two_tags_in_head(stack), port), parley_serving(stack):
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{port}/")  # until the load event: both tags ran
        assert await page.evaluate("() => document.querySelectorAll('parley-chat').length") == 1
        await page.click(LAUNCHER)
        await ask(page, "Hi")
        assert await final_answer(page) == "Hello."


@contextlib.asynccontextmanager
async def taken_over(
    stack: Stack, browser: Any, agent: str, *, query: str = ""
) -> AsyncIterator[Any]:
    """A page (the embedding page with `query`) whose visitor asked and was answered, and
    whose conversation an agent named `agent` then took through the desk API."""
    secret = await server_key(stack)
    stack.backend.script(["Hello."], gated=False)
    async with (
        parley_serving(stack),
        httpx.AsyncClient(base_url=stack.api, headers=bearer(secret), timeout=30) as desk,
    ):
        page = await open_chat(browser, stack.page + query)
        await ask(page, "Hi")
        await final_answer(page)
        visitor = await page.evaluate(
            "k => JSON.parse(localStorage.getItem(k)).visitor_id", f"parley-widget:{stack.site_key}"
        )
        taken = await desk.post("/v1/handoff/take", json={"visitor_id": visitor, "agent": agent})
        assert taken.status_code == 200, taken.text
        yield page


async def test_an_agents_name_of_one_long_word_stays_inside_the_panel(
    stack: Stack, browser: Any
) -> None:
    """An agent's name is up to 64 characters of anything; one without a space ran off the
    panel's edge in the "You are talking with NAME." line under the heading, clipped."""
    agent = "W" * 64
    async with taken_over(stack, browser, agent) as page:
        await wait_text(page, ".handoff", f"t => t.includes('{agent}')")
        widths = await shadow_eval(
            page,
            "root => [...root.querySelectorAll('.handoff, .msg.notice')]"
            ".map(n => [n.scrollWidth, n.clientWidth])",
        )
        assert widths and all(scroll <= client for scroll, client in widths), widths


async def test_an_image_named_current_script_on_the_page_cannot_redirect_the_chat(
    stack: Stack, browser: Any
) -> None:
    """`document.currentScript` can be clobbered: an <img name="currentScript"> on the page
    (a forum post's markup, say) is what it names, and the widget took that image's `src`
    for Parley's origin, sending the visitor's token and messages to the image's host."""
    elsewhere: list[str] = []

    async def record(request: Request) -> Response:
        elsewhere.append(f"{request.method} {request.url.path}")
        return Response(status_code=404)

    other = Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST", "OPTIONS"])])
    other_port = free_port()
    image = (
        f'<img name="currentScript" src="http://127.0.0.1:{other_port}/cat.png"'
        f' data-site-key="{html.escape(stack.site_key)}" alt="">'
    )
    stack.backend.script(["Hello."], gated=False)
    port = await listed_port(stack)
    async with (
        serving(forum_page(stack, image), port),
        serving(other, other_port),
        parley_serving(stack),
    ):
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{port}/")
        assert await page.evaluate("() => document.currentScript instanceof HTMLImageElement")
        await page.click(LAUNCHER)
        await ask(page, "Hi")
        assert await final_answer(page) == "Hello."
        assert [seen for seen in elsewhere if "/v1/" in seen] == []


async def test_the_box_takes_what_the_server_takes_and_a_longer_message_is_said_too_long(
    stack: Stack, browser: Any
) -> None:
    """With `conversation.max_message_chars` under the box's fixed 8,000, a longer message
    was refused (413) and shown as "could not be sent", with nothing saying why nor keeping
    its text. The visitor token's answer says the limit; the box takes no more, and a
    message over it that reaches the server anyway (a value a script or an earlier page put
    in the box, which maxlength does not cut) is said to be too long and goes back in the box."""
    limited = dataclasses.replace(stack, settings=stack.settings.model_copy(update={
        "conversation": stack.settings.conversation.model_copy(update={"max_message_chars": 40}),
    }))  # fmt: skip
    async with parley_serving(limited):
        async with httpx.AsyncClient(base_url=stack.api) as client:
            visitor = await client.post("/v1/visitors", headers={
                "Origin": stack.page.rstrip("/"), "X-Parley-Site-Key": stack.site_key,
            })  # fmt: skip
        assert visitor.status_code == 201 and visitor.json()["max_message_chars"] == 40
        page = await open_chat(browser, stack.page)
        await page.wait_for_function(
            "() => document.querySelector('parley-chat').shadowRoot"
            ".querySelector('textarea').maxLength === 40"
        )
        await page.click(INPUT)
        await page.keyboard.type("y" * 60)
        assert await page.input_value(INPUT) == "y" * 40

        long = "z" * 100
        await shadow_eval(page, f"root => {{ root.querySelector('textarea').value = '{long}'; }}")
        await page.press(INPUT, "Enter")
        said = await wait_text(page, ".msg.user.failed .status", "t => t.length > 0")
        assert said == "This message is too long: at most 40 characters."
        assert await page.input_value(INPUT) == long  # to be shortened and sent again

        # A reload knows the limit before any request (the token is still fresh).
        await page.reload()
        await page.click(LAUNCHER)
        assert await shadow_eval(page, "root => root.querySelector('textarea').maxLength") == 40


CLOBBERED = ("body", "querySelector", "createElement", "createElementNS",
             "createDocumentFragment", "addEventListener")  # fmt: skip
CLOBBERING = (
    "".join(f'<img name="{name}" src="data:," alt="">' for name in CLOBBERED)
    + '<div id="addEventListener"></div><form name="body"></form>'
)


@pytest.mark.parametrize("tag_in", ["head", "body"])
async def test_elements_named_like_the_documents_methods_leave_the_chat_working(
    stack: Stack, browser: Any, tag_in: str
) -> None:
    """A named <img> or <form> on the page is what `document.<its name>` gives: one named
    `body`, `querySelector` or `createElement` (a forum post's markup) stopped the chat from
    appearing or from showing a message. The widget asks Document's own methods."""
    stack.backend.script(["Hello."], gated=False)
    port = await listed_port(stack)
    async with serving(forum_page(stack, CLOBBERING, tag_in=tag_in), port), parley_serving(stack):
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{port}/")
        clobbered = await page.evaluate(
            "() => [document.body instanceof HTMLBodyElement, typeof document.querySelector,"
            " typeof document.createElement]"
        )
        assert clobbered == [False, "object", "object"]  # as hostile as it means to be
        await page.click(LAUNCHER)
        await ask(page, "Hi")
        # Found by Playwright's own selector engine: the helpers' document.querySelector is
        # one of the page's images here.
        answer = page.locator("parley-chat .msg.bot:not([aria-busy]) .body").first
        await answer.wait_for()
        assert await answer.inner_text() == "Hello."


# The glyphs of the handoff line (under the heading) and of the last note in the log.
LINE_GLYPHS_X = (
    "root => ['.handoff', '.msg.notice']"
    f".map(sel => ({GLYPHS})([...root.querySelectorAll(sel)].at(-1)))"
)
TALKING_WITH_AR = "\u0623\u0646\u062a \u062a\u062a\u062d\u062f\u062b \u0645\u0639 "


@pytest.mark.parametrize("agent", ["John Smith Jr.", "Eve :)", "Sara (\u0633\u0627\u0631\u0629)"])
async def test_an_agents_name_is_drawn_as_written_in_a_right_to_left_panel(
    stack: Stack, browser: Any, agent: str
) -> None:
    """The Arabic panel's "You are talking with NAME." drew "John Smith Jr." as ".John Smith
    Jr" and "Eve :)" as "): Eve": the name's last neutral characters took the sentence's
    direction. The name is isolated (a <bdi>): it reads as written, and the sentence's "."
    ends the line on the left."""
    async with taken_over(stack, browser, agent, query="?lang=ar") as page:
        for where in (".handoff", ".msg.notice"):
            await wait_text(page, where, f"t => t.startsWith('{TALKING_WITH_AR}')")
        for glyphs in await shadow_eval(page, LINE_GLYPHS_X):
            assert "".join(c for c, _ in glyphs) == f"{TALKING_WITH_AR}{agent}.", glyphs
            name = glyphs[len(TALKING_WITH_AR) :]
            *in_name, (stop, stop_x) = name
            latin = [x for c, x in in_name if not "\u0600" <= c <= "\u06ff"]
            assert latin == sorted(latin), f"the name is not drawn as written: {glyphs}"
            assert stop == "." and stop_x < min(x for _, x in in_name), glyphs


STAGES = [
    "# Returns\n\nYou can return **any item** within `30` days.\n\n",
    "- unworn\n- in its box\n  with the receipt\n\n",
    "```text\nRMA-1234\n\nkeep this number\n```\n\n",
    "> Refunds take\n> five days.\n\n",
    "1. Pack it\n2. Post it\n\nQuestions? [Write to us](https://shop.example/help).",
]


async def test_a_streamed_answer_keeps_what_it_has_drawn_and_ends_as_a_reload_shows_it(
    stack: Stack, browser: Any
) -> None:
    """Each frame of a streamed answer parsed and redrew the whole text: the cost grew with
    the answer, and text the visitor had selected in an earlier paragraph was lost at the
    next delta. Blocks that later text cannot change (each ended by a whole line) are kept;
    the answer, once complete, is drawn exactly as the history draws it after a reload."""
    pieces = [stage[i : i + 6] for stage in STAGES for i in range(0, len(stage), 6)]
    per_stage = [len(range(0, len(stage), 6)) for stage in STAGES]
    stack.backend.script(pieces, gated=True)
    body = "parley-chat .msg.bot .body"
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "How do returns work?")
        stage_ends = ["30 days.", "with the receipt", "keep this number", "five days.", "to us"]
        for n, (count, end) in enumerate(zip(per_stage, stage_ends, strict=True)):
            stack.backend.release(count - 1 if n == 0 else count)
            await wait_text(page, body, f"t => t.includes({end!r})")
            if n == 0:  # the heading, drawn once
                await shadow_eval(
                    page, "root => { root.querySelector('.msg.bot .body').firstChild.mark = 1; }"
                )
        streamed = await final_answer(page)
        kept = await shadow_eval(
            page, "root => root.querySelector('.msg.bot .body').firstChild.mark === 1"
        )
        assert kept, "the heading was drawn again"
        drawn = await shadow_eval(page, "root => root.querySelector('.msg.bot .body').innerHTML")

        await page.reload()
        await page.click(LAUNCHER)
        assert await final_answer(page) == streamed
        again = await shadow_eval(page, "root => root.querySelector('.msg.bot .body').innerHTML")
        assert drawn == again
        assert drawn.count("<pre") == 1 and "<blockquote>" in drawn and "<ol>" in drawn


# Blocks whose end depends on the line after them, fences with blank lines inside, a list
# item's indented fence (text of the item, not a fence), Windows line breaks split between
# deltas, a fence never closed.
AWKWARD = (
    "Intro line\r\nsecond line\r\n\r\n- a\n  ```\n  in the item\n\n  ```\n- b\n\n"
    "```js\nlet x;\n\n\nx = 1;\n```\n> q1\n> q2\n- after the quote\n"
    "# Heading after a list\ntext\n   \n1. one\n\n2. two\n~~~\nnever closed\n\nstill code"
)


async def test_an_awkward_answer_streamed_in_small_pieces_ends_as_a_reload_draws_it(
    stack: Stack, browser: Any
) -> None:
    pieces = [AWKWARD[i : i + 5] for i in range(0, len(AWKWARD), 5)]
    stack.backend.script(pieces, gated=True)
    async with parley_serving(stack):
        page = await open_chat(browser, stack.page)
        await ask(page, "Show me")
        await wait_text(page, ".msg.bot .body", "t => t.length > 0")
        for _ in pieces[1:]:  # a paint or more between pieces, most of the time
            stack.backend.release()
            await page.evaluate("() => new Promise(r => setTimeout(r, 20))")
        await final_answer(page)
        drawn = await shadow_eval(page, "root => root.querySelector('.msg.bot .body').innerHTML")
        await page.reload()
        await page.click(LAUNCHER)
        await final_answer(page)
        again = await shadow_eval(page, "root => root.querySelector('.msg.bot .body').innerHTML")
        assert drawn == again
        assert "never closed" in drawn and drawn.count("<pre") == 2, drawn
