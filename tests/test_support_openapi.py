"""The OpenAPI document (/v1/openapi.json) describes what the server sends: every event of
docs/support.md's event table with a schema of its data, and 429 wherever the API limits."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.support.openapi import document

ROOT = Path(__file__).resolve().parents[1]


def _documented_events() -> dict[str, str]:
    """Each event of docs/support.md's table (`name` -> its data's JSON example)."""
    doc = (ROOT / "docs" / "support.md").read_text()
    stream = doc.split("### The event stream", 1)[1].split("\n### ", 1)[0]
    return dict(re.findall(r"(?m)^\| `(\w+)` \| `(\{.*?\})` \|", stream))


def test_every_documented_event_is_in_the_openapi_document() -> None:
    events = _documented_events()
    assert {"message", "delta", "answer", "notice", "handoff", "agent"} <= set(events)
    spec = document()
    description = " ".join(spec["paths"]["/v1/events"]["get"]["description"].split())
    schemas = spec["components"]["schemas"]
    for name, example in events.items():
        assert f"`{name}` (" in description, name
        schema = re.search(rf"`{name}` \((\w+)Event", description)
        assert schema is not None and f"{schema.group(1)}Event" in schemas, name
        fields = set(schemas[f"{schema.group(1)}Event"]["properties"])
        top_level = re.sub(r"\[.*?\]", "[]", example)  # a source's own fields aside
        assert set(re.findall(r'"(\w+)":', top_level)) == fields, name


def test_429_is_documented_wherever_the_api_limits() -> None:
    """The client address's limit counts new visitors, messages, history pages and erasures;
    the event stream has its own caps (too_many_streams)."""
    paths = document()["paths"]
    for path, method in [
        ("/v1/visitors", "post"),
        ("/v1/messages", "post"),
        ("/v1/events", "get"),
        ("/v1/history", "get"),
        ("/v1/visitor", "delete"),
    ]:
        assert "429" in paths[path][method]["responses"], path
