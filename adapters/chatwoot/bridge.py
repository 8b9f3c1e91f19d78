"""The desk bridge for conversations that live in Chatwoot: Parley's handoff events become
Chatwoot calls.

    handoff.requested   status -> open (Chatwoot's agents see it in their queue), then the
                        handoff note as a private note
    handoff.taken       status -> open, unless the taking came from Chatwoot itself
    handoff.returned    status -> pending, unless the giving back came from Chatwoot (an agent
                        who resolved it must not see it reopened)
    message.customer    the translation for the agent as a private note (the customer's own
                        message is already in the conversation); nothing when none was made

Both notes hold text from the customer; Chatwoot renders notes as Markdown (markdown-it, in
the dashboard's MessageFormatter), so that text is made one line (no forged lines), cleaned of
invisible controls and control tokens, and Markdown-escaped (an image shows as its text).
    message.agent       nothing: the adapter's sink posts the reply as it reaches the customer

Raising (a ChatwootError after the client's retries) leaves the event to the desk's retry;
each step is safe to repeat (a status set twice stays set). Chatwoot out of reach or failing
(no connection, a timeout, 429, a 5xx) is DeskAway: the desk keeps the event until Chatwoot
answers, where it would otherwise drop it after a few tries and no agent would see the
request; a private note may then show twice (a timeout after Chatwoot created it), which
agents can live with, unlike a lost handoff.
"""

from __future__ import annotations

import logging

from bot.handoff.types import DeskAway, DeskEvent, EventKind, clean_line, escape_markdown

from .client import ChatwootClient, ChatwootError, ConversationRef
from .payloads import PLATFORM

log = logging.getLogger(__name__)

# A translation note holds one customer message; Chatwoot takes up to 150,000 characters.
MESSAGE_NOTE_CHARS = 10_000


def conversation_ref(chat_id: str) -> ConversationRef:
    account, _, conversation = chat_id.partition(":")
    return ConversationRef(int(account), int(conversation))


def from_chatwoot(agent: str) -> bool:
    """Whether a desk change was made in Chatwoot (the adapter names Chatwoot's agents so)."""
    return agent == PLATFORM or agent.startswith(f"{PLATFORM}:")


def translation_note(event: DeskEvent) -> str:
    """The customer's message in the agent's language, as Markdown that shows it as typed
    (Chatwoot renders notes as Markdown: an image in it would load in the agent's browser)."""
    source = clean_line(event.language, 20) or "?"
    text = escape_markdown(clean_line(event.translation, MESSAGE_NOTE_CHARS))
    return f"Translation ({escape_markdown(source)}):\n{text}"


class ChatwootBridge:
    platforms: frozenset[str] | None = frozenset({PLATFORM})

    def __init__(self, client: ChatwootClient) -> None:
        self._client = client

    async def publish(self, event: DeskEvent) -> None:
        if self._client.closed:  # stopping: kept for as long as the desk runs, never dropped
            raise DeskAway("the Chatwoot client is closed")
        try:
            await self._publish(event)
        except ChatwootError as exc:
            # Chatwoot away or failing (no connection, a timeout, 429, a 5xx, what a proxy
            # answers for a Chatwoot that is down): kept until it answers. These events are
            # the agents' (status changes, private notes): a note shown twice is better than
            # a handoff no agent ever sees. A 4xx (a refusal) is dropped after a few tries.
            if exc.status == 0 or exc.status == 429 or exc.status >= 500:
                raise DeskAway(str(exc)) from exc
            raise

    async def _publish(self, event: DeskEvent) -> None:
        ref = conversation_ref(event.key.chat_id)
        kind = event.kind
        if kind is EventKind.REQUESTED:
            await self._client.toggle_status(ref, "open")
            await self._client.post_message(ref, self._note(event), private=True)
        elif kind is EventKind.TAKEN and not from_chatwoot(event.agent):
            await self._client.toggle_status(ref, "open")
        elif kind is EventKind.RETURNED and not from_chatwoot(event.agent):
            await self._client.toggle_status(ref, "pending")
        elif kind is EventKind.CUSTOMER_MESSAGE and event.translation:
            await self._client.post_message(ref, translation_note(event), private=True)

    @staticmethod
    def _note(event: DeskEvent) -> str:
        if event.note is not None:
            return event.note.render(markdown=True)  # Chatwoot renders notes as Markdown
        reason = event.reason.value if event.reason is not None else "requested"
        return f"Handoff: {reason}"
