"""The desk bridge for conversations that live in Chatwoot: Parley's handoff events become
Chatwoot calls.

    handoff.requested   status -> open (Chatwoot's agents see it in their queue), then the
                        handoff note as a private note
    handoff.taken       status -> open, unless the taking came from Chatwoot itself
    handoff.returned    status -> pending, unless the giving back came from Chatwoot (an agent
                        who resolved it must not see it reopened)
    message.customer    the translation for the agent as a private note (the customer's own
                        message is already in the conversation); nothing when none was made
    message.agent       nothing: the adapter's sink posts the reply as it reaches the customer

Raising (a ChatwootError after the client's retries) leaves the event to the desk's retry;
each step is safe to repeat (a status set twice stays set).
"""

from __future__ import annotations

import logging

from bot.handoff.types import DeskEvent, EventKind

from .client import ChatwootClient, ConversationRef
from .payloads import PLATFORM

log = logging.getLogger(__name__)


def conversation_ref(chat_id: str) -> ConversationRef:
    account, _, conversation = chat_id.partition(":")
    return ConversationRef(int(account), int(conversation))


def from_chatwoot(agent: str) -> bool:
    """Whether a desk change was made in Chatwoot (the adapter names Chatwoot's agents so)."""
    return agent == PLATFORM or agent.startswith(f"{PLATFORM}:")


def translation_note(event: DeskEvent) -> str:
    source = event.language or "?"
    return f"Translation ({source}):\n{event.translation}"


class ChatwootBridge:
    platforms: frozenset[str] | None = frozenset({PLATFORM})

    def __init__(self, client: ChatwootClient) -> None:
        self._client = client

    async def publish(self, event: DeskEvent) -> None:
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
            return event.note.render()
        reason = event.reason.value if event.reason is not None else "requested"
        return f"Handoff: {reason}"
