"""Chatwoot: an English customer's short message reaches an English agent with no
"Translation (?)" note and no model call. The fake Chatwoot (tests/fake_chatwoot.py) over real
HTTP, the real app over PostgreSQL, a scripted model at the backend seam."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backends.base import GenerationRequest
from bot.storage import migrate
from bot.types import Role
from tests.doubles import ScriptedBackend
from tests.fake_chatwoot import ChatwootWorker, chatwoot_worker

pytestmark = pytest.mark.postgres


def echoing(request: GenerationRequest) -> str:
    """Any request, translation or not, gets its text back: a translation the desk should
    not have asked for shows as a note with the customer's own words."""
    return [m for m in request.messages if m.role is Role.USER][-1].content


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(echoing)


@pytest.fixture
async def worker(postgres_url: str, backend: ScriptedBackend) -> AsyncIterator[ChatwootWorker]:
    await migrate.upgrade(postgres_url)
    async with chatwoot_worker(postgres_url, backend) as w:
        yield w


@pytest.mark.parametrize("taken_by", ["trigger", "agent"])
async def test_an_english_customers_short_message_gets_no_translation_note(
    worker: ChatwootWorker, backend: ScriptedBackend, taken_by: str
) -> None:
    fake = worker.fake
    conv = fake.conversation(71)
    if taken_by == "trigger":  # the handoff records the customer's language: English
        await fake.contact_says(conv, "I want to talk to a human, please.")
    else:  # an agent opens it: no language recorded, and Chatwoot reports none
        await fake.contact_says(conv, "Hello there, my parcel is late.")
        await worker.idle()
        await fake.agent_sets_status(conv, "open")
    await worker.idle()
    assert conv.status == "open"
    requests = len(backend.requests)
    for text in ("Sure, thanks!", "OK, done."):
        await fake.contact_says(conv, text)
    await worker.idle()
    assert not [n for n in fake.private_notes(conv) if n.startswith("Translation")]
    assert len(backend.requests) == requests  # no model call while a person has it
