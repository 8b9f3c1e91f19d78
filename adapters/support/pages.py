"""The support channel's pages on Parley's HTTP host: the web chat widget's script at
`/widget.js` and, when `support.demo` is on, a demo page at `/` that embeds it.

The script is one static file (static/widget.js: no build step, nothing fetched from a CDN).
It is read when the routes are built, not at import, and served with an ETag and a short
max-age, so a host page revalidates it cheaply and picks up a new Parley within minutes. It
carries `Cross-Origin-Resource-Policy: cross-origin` because it is made to be loaded by other
sites, including ones that isolate themselves with COEP.

The demo page holds no inline script and a strict Content-Security-Policy, the one a careful
site would set: it shows that the widget needs only `script-src` and `connect-src` for
Parley's origin (its styles are a constructed stylesheet, which `style-src` does not govern).
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

STATIC = Path(__file__).resolve().parent / "static"
WIDGET_PATH = "/widget.js"
# Long enough to spare a busy site's visitors a request per page, short enough that a new
# version reaches them the same hour; the ETag makes the revalidation a 304.
WIDGET_MAX_AGE_S = 300


class PageSettings(Protocol):
    """What the pages read from the `[support]` section."""

    @property
    def demo(self) -> bool: ...

    @property
    def demo_site_key(self) -> str: ...


def routes(settings: PageSettings) -> list[BaseRoute]:
    """The widget's script, and the demo page when `settings.demo` is on."""
    widget = _Asset.read(STATIC / "widget.js", "text/javascript; charset=utf-8")
    mounted: list[BaseRoute] = [Route(WIDGET_PATH, widget.serve, methods=["GET"])]
    if settings.demo:
        mounted.append(Route("/", _DemoPage(settings.demo_site_key).serve, methods=["GET"]))
    return mounted


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def read(cls, path: Path, media_type: str) -> _Asset:
        body = path.read_bytes()
        return cls(body, media_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    async def serve(self, request: Request) -> Response:
        headers = {
            "ETag": self.etag,
            "Cache-Control": f"public, max-age={WIDGET_MAX_AGE_S}",
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        if self.etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


DEMO_STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f7f9}"
    "main{max-width:40rem;margin:3rem auto;padding:0 1rem}"
    "code{background:#e8eaee;padding:.1em .3em;border-radius:4px;overflow-wrap:anywhere}"
)

DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Parley support chat: demo</title>
<style>{style}</style>
</head>
<body>
<main>
<h1>Parley support chat</h1>
<p>This page shows Parley's web chat widget. Open the chat with the button in the corner
and ask a question; the answer streams in, with its sources.</p>
<p>To put the same chat on your own site, add one tag to its pages (docs/support.md):</p>
<p><code>&lt;script src="https://YOUR-PARLEY-HOST/widget.js"
data-site-key="pk_..." async&gt;&lt;/script&gt;</code></p>
</main>
<script src="{widget}" data-site-key="{key}" async></script>
</body>
</html>
"""


class _DemoPage:
    def __init__(self, site_key: str) -> None:
        self._site_key = site_key
        self._html = DEMO_PAGE.format(
            style=DEMO_STYLE, widget=WIDGET_PATH, key=html.escape(site_key, quote=True)
        )
        style_hash = base64.b64encode(hashlib.sha256(DEMO_STYLE.encode()).digest()).decode()
        self._csp = "; ".join(
            [
                "default-src 'none'",
                "script-src 'self'",
                "connect-src 'self'",
                f"style-src 'sha256-{style_hash}'",
                "img-src 'self'",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            ]
        )

    async def serve(self, request: Request) -> Response:
        if not self._site_key:
            return PlainTextResponse(
                "The demo page needs support.demo_site_key (a site's public key).",
                status_code=503,
            )
        headers = {"Content-Security-Policy": self._csp, "Cache-Control": "no-cache"}
        return HTMLResponse(self._html, headers=headers)
