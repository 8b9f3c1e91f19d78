"""Every Redis key, built here and nowhere else (tests/test_key_builder.py).

The cache's keys come first: `RedisCache` puts the deployment's `key_prefix` in front of each
(`cached`); the in-process cache uses them as they are. Then the keys that live only in Redis,
each under `key_prefix`: the platforms' shared rate windows, the support API's event log and
the shared token budgets. Their spelling is what earlier versions wrote to a running Redis:
changing one loses that data (tests/test_key_builder.py pins each).
"""

from __future__ import annotations

from datetime import date


def window(conversation_id: int) -> str:  # a context window (bot.conversation.context)
    return f"ctx:{conversation_id}"


def chat_prefs(conversation_id: int) -> str:  # auto-translate, keep messages (bot.storage.prefs)
    return f"prefs:chat:{conversation_id}"


def handoff(conversation_id: int) -> str:  # handoff state and language (bot.handoff.repo)
    return f"handoff:{conversation_id}"


def alive(owner: str) -> str:  # a worker's liveness mark (bot.conversation.delivery)
    return f"alive:{owner}"


def deleted(idempotency_key: str) -> str:  # a message deleted in the chat (its deletion event)
    return f"deleted:{idempotency_key}"


def edited(idempotency_key: str) -> str:  # a message edited in the chat: its new text
    return f"edited:{idempotency_key}"


def stop(conversation_id: int, sender: str | None) -> str:  # a /stop for a turn elsewhere
    return f"stop:{conversation_id}:{sender if sender is not None else '*'}"


def rate(sender: str) -> str:  # a sender's messages in the rate window
    return f"rate:{sender}"


def counted(sender: str, idempotency_key: str) -> str:  # a message counted in the window
    return f"counted:{sender}:{idempotency_key}"


def rate_told(conversation_id: int) -> str:  # rate-limit sentences said in the window
    return f"rate-told:{conversation_id}"


def told(sender: str) -> str:  # notices (refusals) said to a sender in the window
    return f"told:{sender}"


def refused(platform: str, update: str) -> str:  # a platform update the database refused
    return f"refused:{platform}:{update}"


def delivered(platform: str, update: str) -> str:  # deliveries of a platform update seen
    return f"delivered:{platform}:{update}"


def discord_unreplied(bot: int, channel_id: int) -> str:  # a channel that refused a reply
    return f"discord:unreplied:{bot}:{channel_id}"


def discord_told(interaction_id: str) -> str:  # a command refused to its sender alone
    return f"discord:told:{interaction_id}"


def discord_token(interaction_id: str) -> str:  # a deferred command's token (a secret)
    return f"discord:token:{interaction_id}"


def discord_deferred(interaction_id: str) -> str:  # a command deferred (an interaction's id)
    return f"discord:deferred:{interaction_id}"


def discord_taken(interaction_id: str) -> str:  # its response answered through the token
    return f"discord:taken:{interaction_id}"


def support_ip(address: str) -> str:  # support API requests from one client address
    return f"support:ip:{address}"


def support_ip_streams(address: str) -> str:  # support event streams opened from one address
    return f"support:ip-streams:{address}"


def support_visitor(conversation: str) -> str:  # support API messages from one visitor
    return f"support:visitor:{conversation}"


# --- keys that live in Redis only, under the deployment's `key_prefix` ----------------------


def cached(key_prefix: str, key: str) -> str:  # a cache entry in Redis (RedisCache)
    return f"{key_prefix}:{key}"


def platform_gate(key_prefix: str, platform: str, bot: str | int) -> str:
    """What one bot's shared rate windows are kept under (adapters.kit.gate.RedisGate): a
    platform's limits are per bot, so every worker of that bot shares them."""
    return f"{key_prefix}:{platform}:{bot}"


def gate_window(gate: str, kind: str, name: str) -> str:  # one rate window of a `platform_gate`
    return f"{gate}:gate:{kind}:{name}"


def gate_tomb(gate: str, slot_id: str) -> str:  # a slot given back before it was taken
    return f"{gate}:gate:gone:{slot_id}"


def support_events(key_prefix: str, conversation: str) -> str:  # a visitor's event stream
    return f"{key_prefix}:support:events:{conversation}"


def support_answered(key_prefix: str, conversation: str) -> str:  # its answers' delivery keys
    return f"{key_prefix}:support:answered:{conversation}"


def support_wake(key_prefix: str) -> str:  # the channel that wakes every worker's streams
    return f"{key_prefix}:support:wake"


def budget(key_prefix: str, day: date, scope: str, subject: str, part: str) -> str:
    """One of a budget subject's two keys for `day` (bot.budget_counters): the day in braces
    is the Redis Cluster hash tag, so that one script's keys share a slot."""
    return f"{key_prefix}:budget:{{{day.isoformat()}}}:{scope}:{subject}:{part}"
