"""The API's OpenAPI 3.1 document, generated from the pydantic models in schemas.py, and a
plain HTML page that renders it (served at /v1/docs; no script, nothing from a CDN)."""

from __future__ import annotations

import functools
import html
import json
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import schemas as s

REF = "#/components/schemas/{model}"
_TOKEN = {
    "in": "header",
    "name": "Authorization",
    "required": True,
    "schema": {"type": "string"},
    "description": "Bearer <visitor token or server key>",
}
EVENTS_DESCRIPTION = """Server-Sent Events of the caller's conversation. Every event has an
`id:`; reconnect with `Last-Event-ID` (or `?last_event_id=`) to continue after it, with
nothing lost or repeated (`0`: every event kept). Without one, or with one past the newest
event kept (ids are times: a clock set back, a made-up id), the stream starts with the events
after it opened. A `keep-alive` event (no id; data `{"every_s": 15}`, the interval)
comes when it opens and after `support.keepalive_s` (15 s) of silence: a client that hears
nothing for a few intervals may take the connection for dropped and reconnect. Events
(`event:` name, `data:` JSON): `message` (MessageEvent: a visitor's message was recorded,
for the visitor's other tabs; the sender knows it by `key`), `delta` (DeltaEvent: the new
text only), `answer` (AnswerEvent: the whole final answer and its
sources), `notice` (NoticeEvent: rate limited, model unavailable, refused), `handoff`
(HandoffEvent: a person was asked for, an agent has the conversation, the bot has it again)
and `agent` (AgentEvent: an agent's message, translated into the visitor's language and
marked so, with the original). EventSource cannot send headers: pass
the token as `?token=`."""


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorBody")}}},
    }


def _json(model: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


def _body(model: str, *, required: bool = True) -> dict[str, Any]:
    schema = {"$ref": REF.format(model=model)}
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"in": "query", "name": name, "required": False, "schema": schema,
            "description": description}  # fmt: skip


_ERRORS = {
    "400": _error("malformed request (JSON, parameters, NUL characters)"),
    "401": _error("no or bad credentials"),
    "403": _error("another origin, site or visitor"),
    "413": _error("body or text too large"),
    "422": _error("a field is not valid"),
    "429": _error("`rate_limited`, or `too_many_streams` (/v1/events); see Retry-After"),
    "500": _error("`internal`: a failure of the server (a bug, logged there)"),
    "503": _error("`unavailable`: the database or Redis is briefly out of reach; retry after "
                  "Retry-After (a message: with the same Idempotency-Key)"),
}  # fmt: skip
_SERVER_KEY = {**_TOKEN, "description": "Bearer <server key> (sk_...): never a visitor token"}
# Printable ASCII (adapters/support/bodies.py): a header's other bytes arrive as Latin-1.
_IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[ -~]+$"}
_DESK_ERRORS = {
    **{k: v for k, v in _ERRORS.items() if k in ("400", "401", "403", "413", "422", "500")},
    "404": _error("no conversation with this visitor on the key's site"),
    "409": _error("not possible in the conversation's handoff state"),
    "503": _error("`unavailable`: the help desk is not running on this server; or the "
                  "database or Redis is briefly out of reach (retry after Retry-After)"),
}  # fmt: skip
_VISITOR = _query("visitor_id", {"type": "string", "maxLength": 64},
                  "with a server key: the visitor it acts for")  # fmt: skip


def _paths() -> dict[str, Any]:
    # 429: the client address's limit (history pages, erasures, events), the streams' caps
    # (events).
    auth_errors = {k: v for k, v in _ERRORS.items()
                   if k in ("400", "401", "403", "422", "429", "500", "503")}  # fmt: skip
    return {
        "/v1/visitors": {"post": {
            "summary": "Get a visitor token",
            "description": "Header X-Parley-Site-Key (a browser on one of the site's origins) "
                           "or Authorization: Bearer sk_... (a server).",
            "parameters": [{"in": "header", "name": "X-Parley-Site-Key", "required": False,
                            "schema": {"type": "string", "maxLength": 64}}],
            "requestBody": _body("VisitorRequest", required=False),
            "responses": {"201": _json("VisitorResponse", "the token"), **_ERRORS},
        }},
        "/v1/messages": {"post": {
            "summary": "Send a visitor's message",
            "description": "The answer arrives on /v1/events. A retry with the same "
                           "Idempotency-Key is recorded and answered once.",
            "parameters": [_TOKEN, {"in": "header", "name": "Idempotency-Key",
                                    "required": False,
                                    "schema": _IDEMPOTENCY_KEY}],
            "requestBody": _body("MessageRequest"),
            "responses": {"202": _json("MessageAccepted", "recorded"), **_ERRORS},
        }},
        "/v1/events": {"get": {
            "summary": "The conversation's events (Server-Sent Events)",
            "description": EVENTS_DESCRIPTION,
            "parameters": [
                {**_TOKEN, "required": False},
                _query("token", {"type": "string"}, "the visitor token (EventSource)"),
                _query("last_event_id", {"type": "string", "pattern": r"^(0|\d+-\d+)$"},
                       "resume after this event"),
                _VISITOR,
            ],
            "responses": {"200": {"description": "text/event-stream",
                                  "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                          **auth_errors},
        }},
        "/v1/history": {"get": {
            "summary": "The conversation, a page at a time (oldest first)",
            "parameters": [
                _TOKEN,
                _query("before", {"type": "string", "pattern": r"^\d+$"},
                       "messages older than this id (a page's `next`)"),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000},
                       "messages per page (default 20)"),
                _VISITOR,
            ],
            "responses": {"200": _json("HistoryPage", "a page"), **auth_errors},
        }},
        "/v1/visitor": {"delete": {
            "summary": "Erase the visitor's messages and conversation",
            "parameters": [_TOKEN, _VISITOR],
            "responses": {"204": {"description": "erased"}, **auth_errors},
        }},
        **_agent_paths(),
    }  # fmt: skip


def _agent_paths() -> dict[str, Any]:
    """The agent API (adapters/support/agent_api.py): a help desk's back end."""
    status = {"200": _json("HandoffStatusBody", "the handoff state now"), **_DESK_ERRORS}
    visitor = {**_VISITOR, "required": True, "description": "the visitor of the conversation"}
    return {
        "/v1/handoff": {"get": {
            "summary": "A conversation's handoff state (agent API)",
            "parameters": [_SERVER_KEY, visitor],
            "responses": status,
        }},
        "/v1/handoff/take": {"post": {
            "summary": "An agent takes the conversation over; the bot stops answering",
            "description": "409 `taken` when another agent has it, unless `force` is true. "
                           "422 for an agent named like the bot.",
            "parameters": [_SERVER_KEY],
            "requestBody": _body("TakeRequest"),
            "responses": status,
        }},
        "/v1/handoff/give-back": {"post": {
            "summary": "The agent gives the conversation back to the bot",
            "parameters": [_SERVER_KEY],
            "requestBody": _body("AgentRequest"),
            "responses": status,
        }},
        "/v1/handoff/messages": {"post": {
            "summary": "The agent's reply, delivered translated into the visitor's language",
            "description": "An Idempotency-Key belongs to the conversation: a retry with "
                           "the same key and body is posted once and gets the first "
                           "message_id; the same key with another text or agent is 422 "
                           "`idempotency_mismatch`. 409 while the bot has the conversation.",
            "parameters": [_SERVER_KEY, {"in": "header", "name": "Idempotency-Key",
                                         "required": False,
                                         "schema": _IDEMPOTENCY_KEY}],
            "requestBody": _body("AgentMessageRequest"),
            "responses": {"202": _json("AgentMessageAccepted", "recorded"), **_DESK_ERRORS},
        }},
    }  # fmt: skip


MODELS = (
    s.VisitorRequest, s.VisitorResponse, s.MessageRequest, s.MessageAccepted, s.HistoryPage,
    s.ErrorBody, s.MessageEvent, s.DeltaEvent, s.AnswerEvent, s.NoticeEvent, s.HandoffEvent,
    s.AgentEvent,
    s.AgentRequest, s.TakeRequest, s.AgentMessageRequest, s.AgentMessageAccepted,
    s.HandoffStatusBody,
)  # fmt: skip


@functools.cache
def document() -> dict[str, Any]:
    pairs: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (model, "validation") for model in MODELS
    ]
    _, defs = models_json_schema(pairs, ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Parley support API", "version": "1"},
        "paths": _paths(),
        "components": {"schemas": defs.get("$defs", {})},
    }


# The page's headers: its own inline style and nothing else; never framed (another site could
# dress it up as its own), never sniffed as anything but HTML.
DOCS_HEADERS = {
    "Content-Security-Policy": "; ".join([
        "default-src 'none'", "style-src 'unsafe-inline'", "base-uri 'none'",
        "form-action 'none'", "frame-ancestors 'none'",
    ]),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}  # fmt: skip


def docs_page() -> str:
    """The document as a readable page: each endpoint with its parameters and bodies."""
    doc = document()
    e = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             "<title>Parley support API</title><style>body{font:16px/1.5 system-ui,sans-serif;"
             "max-width:60rem;margin:2rem auto;padding:0 1rem}code,pre{background:#f4f4f4;"
             "padding:.1rem .3rem}pre{padding:1rem;overflow:auto}</style></head><body>",
             "<h1>Parley support API</h1>",
             "<p>Machine-readable: <a href='/v1/openapi.json'>openapi.json</a></p>"]  # fmt: skip
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{e(method.upper())} {e(path)}</code></h2>")
            parts.append(f"<p><strong>{e(op['summary'])}</strong></p>")
            if "description" in op:
                parts.append(f"<p>{e(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<ul>")
                for p in params:
                    note = f": {e(p['description'])}" if p.get("description") else ""
                    parts.append(f"<li><code>{e(p['name'])}</code> ({e(p['in'])}){note}</li>")
                parts.append("</ul>")
            codes = ", ".join(e(code) for code in op["responses"])
            parts.append(f"<p>Responses: {codes}</p>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h3 id='{e(name)}'>{e(name)}</h3>")
        parts.append(f"<pre>{e(json.dumps(schema, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
