"""A real browser for the web chat widget's tests: Debian's Chromium (/usr/bin/chromium,
installed by .ci/run) driven by Playwright's Python package. `playwright install` is never
used: it downloads a browser of its own, which these machines cannot.

Where Chromium or Playwright is missing the tests skip with the reason; under CI (CI=true) they
fail instead, because .ci/run installs Chromium.

Also here: the model double the widget's tests answer with (a backend whose answer the test
sets and releases piece by piece), and the page of another site that embeds the widget.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import os
import shutil
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from backends.base import Chunk, GenerationRequest, Usage, estimate_tokens
from tests.doubles import ScriptedBackend

if TYPE_CHECKING:
    from playwright.async_api import Browser

CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")
# Debian's build in a container: no setuid sandbox, no GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _unavailable(why: str) -> None:
    reason = f"{why}; install it with `apt-get install -y chromium` (.ci/run does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI requires a browser: {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium, closed at the end of the block."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (the dev extra has it)")
    if shutil.which(CHROMIUM) is None:
        _unavailable(f"no Chromium at {CHROMIUM}")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class PacedBackend(ScriptedBackend):
    """A model double that answers what the test sets, in the pieces the test sets.

    Gated (the default), each piece after the first waits until the test calls `release()`:
    the test sees the answer at each stage in the browser, with no timing assumed. Ungated,
    the pieces go out at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = ["Hello."]
        self.gated = False
        self._permits = asyncio.Semaphore(0)
        self.streaming = asyncio.Event()

    def script(self, pieces: Sequence[str], *, gated: bool = True) -> None:
        self.pieces = list(pieces)
        self.gated = gated
        self._permits = asyncio.Semaphore(0)
        self.streaming = asyncio.Event()

    def release(self, pieces: int = 1) -> None:
        for _ in range(pieces):
            self._permits.release()

    def release_all(self) -> None:
        self.gated = False
        self.release(len(self.pieces))

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        self.requests.append(request)
        pieces = list(self.pieces)
        for i, piece in enumerate(pieces):
            if i and self.gated:
                await self._permits.acquire()
            yield Chunk(text=piece)
            self.streaming.set()
        yield Chunk(usage=Usage(0, estimate_tokens("".join(pieces))), finish_reason="stop")


def embedding_page(widget_src: str, site_key: str) -> Starlette:
    """Another site's page with the widget's one tag, and a link before it, so that keyboard
    tests start from the page's own content. Its CSS is hostile on purpose (every div, p and
    button unset, red serif text): the widget's Shadow DOM must keep it out. Query parameters
    become the tag's data attributes (`/?lang=ar` -> data-lang="ar")."""

    async def serve(request: Request) -> Response:
        attrs = "".join(
            f' data-{html.escape(k, quote=True)}="{html.escape(v, quote=True)}"'
            for k, v in request.query_params.items()
            if k.isalpha()
        )
        return HTMLResponse(
            f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shop</title>
<style>body {{ font-family: serif; color: red }} div, p, button, section {{ all: unset }}</style>
</head><body>
<h1>A shop</h1><p><a href="#help">Help centre</a></p>
<script src="{html.escape(widget_src, quote=True)}" data-site-key="{html.escape(site_key)}"{attrs}
 async></script>
</body></html>"""
        )

    return Starlette(routes=[Route("/", serve)])


async def shadow_eval(page: Any, script: str) -> Any:
    """Evaluate `script` as a function of the widget's shadow root."""
    return await page.evaluate(
        f"() => {{ const root = document.querySelector('parley-chat').shadowRoot; "
        f"return ({script})(root); }}"
    )
