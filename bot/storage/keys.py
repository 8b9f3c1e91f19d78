"""Every cache key, built here and nowhere else. `RedisCache` puts its `key_prefix` in front
of each once (`{prefix}:{key}`); the in-process cache uses them as they are."""

from __future__ import annotations


def window(conversation_id: int) -> str:  # a context window (bot.conversation.context)
    return f"ctx:{conversation_id}"


def chat_prefs(conversation_id: int) -> str:  # auto-translate, keep messages (bot.storage.prefs)
    return f"prefs:chat:{conversation_id}"


def handoff(conversation_id: int) -> str:  # handoff state and language (bot.handoff.repo)
    return f"handoff:{conversation_id}"


def alive(owner: str) -> str:  # a worker's liveness mark (bot.conversation.delivery)
    return f"alive:{owner}"


def rate(sender: str) -> str:  # a sender's messages in the rate window
    return f"rate:{sender}"


def counted(sender: str, idempotency_key: str) -> str:  # a message counted in the window
    return f"counted:{sender}:{idempotency_key}"


def rate_told(conversation_id: int) -> str:  # rate-limit sentences said in the window
    return f"rate-told:{conversation_id}"


def told(sender: str) -> str:  # notices (refusals) said to a sender in the window
    return f"told:{sender}"


def support_ip(address: str) -> str:  # support API requests from one client address
    return f"support:ip:{address}"


def support_visitor(conversation: str) -> str:  # support API messages from one visitor
    return f"support:visitor:{conversation}"
