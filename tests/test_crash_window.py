"""A `parley run` worker SIGKILLed around the moment Telegram accepts the first piece of a
group answer (tests/crash_cluster.py), one worker running at a time so the victim is known.

In a group an answer is a message sent (`sendMessage`) and then edited as it grows. The
worker notes the message's id in SQL as soon as the Bot API returns it, so that a worker that
takes the answer over edits that message instead of sending another:

- killed after the note, the next worker finishes the answer in the same message: the group
  sees one answer, complete;
- killed between Telegram's acceptance and the note, nobody can know the message exists (a
  bot cannot list a chat's messages, and `sendMessage` has no idempotency key): the next
  worker sends the whole answer as a new message, and the first piece stays as it was, a
  half answer above the full one. The crash suite counts such a half answer apart
  (`Verdict.left_half_before_a_kill`), as it does an answer shown twice
  (docs/conversations.md, "The one gap").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.crash_cluster import (
    UNKNOWABLE_WINDOW_S,
    Balancer,
    Cluster,
    Question,
    Users,
    Verdict,
    cluster,
    read_chats,
    settled_after_a_kill,
)
from tests.slow_model import SlowModel
from tests.telegram_api import Call, FakeBotApi

GROUP = -2000
TAG = f"Q{GROUP}x1"
COMPLETE = f"w{SlowModel().words - 1}"

OnSend = Callable[[int], Awaitable[None]]


@dataclass
class ActsOnFirstPiece(FakeBotApi):
    """Calls `on_send(message_id)` on the first sendMessage that shows TAG, once the message
    is in the chat and before the Bot API answers the call."""

    on_send: OnSend | None = None
    acted: asyncio.Event = field(default_factory=asyncio.Event)

    async def _sendMessage(self, params: dict[str, Any]) -> object:  # type: ignore[override]
        result = super()._sendMessage(params)
        first = not self.acted.is_set() and TAG in str(params.get("text"))
        if first and isinstance(result, dict) and self.on_send is not None:
            await self.on_send(int(result["message_id"]))
            self.acted.set()
        return result


async def _noted(database_url: str, message_id: int) -> float:
    """Wait until a delivery in SQL notes `message_id` as a shown piece; when (monotonic)."""
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        while True:
            refs = await conn.fetch(
                "SELECT delivery_ref FROM conversations WHERE delivery_ref IS NOT NULL"
            )
            if any(message_id in json.loads(r[0]).values() for r in refs):
                return time.monotonic()
            await asyncio.sleep(0.005)
    finally:
        await conn.close()


async def _group_answer_with_a_kill(
    tmp_path: Path, postgres_url: str, on_first_piece: Callable[[Cluster], OnSend]
) -> tuple[Verdict, list[str], list[Call], list[str]]:
    """One question in a group, its worker (the only one) killed by `on_first_piece` as the
    answer's first piece is sent; then another worker started, and the group read once the
    question is answered in full (or a minute passed). Also the texts the group's messages
    were edited to after the kill."""
    api = ActsOnFirstPiece()
    model = SlowModel()
    async with cluster(tmp_path, postgres_url, model, workers=1, api=api) as (group, _):
        api.on_send = on_first_piece(group)
        balancer = Balancer(group)
        users = Users(balancer, chats=2, per_chat=1, seed=1)
        users.chat_ids = [GROUP]

        async def kill() -> None:
            process = group.workers[0].process
            assert process is not None
            async with asyncio.timeout(60):
                await api.acted.wait()
                await process.wait()  # killed by `on_first_piece` (then, or once it noted)
            assert group.killed_at, "the worker was not killed"

        verdict = await settled_after_a_kill(group, api, balancer, users, model, kill)
        assert not group.tracebacks(), group.tracebacks()[0]
        edits = api.sent("editMessageText", GROUP)
        edited = [str(c.params["text"]) for c in edits if c.at > group.killed_at[-1]]
    return verdict, api.texts(GROUP), api.sent("sendMessage", GROUP), edited


async def test_killed_before_the_first_piece_is_noted_leaves_it_half(
    tmp_path: Path, postgres_url: str
) -> None:
    """Telegram shows the first piece; its worker dies before it learns the message's id (as
    it would between the Bot API's answer and the note in SQL). The next worker cannot know
    of it: the group sees that piece and, below it, the whole answer."""

    def kill_before_answering(group: Cluster) -> OnSend:
        async def on_send(message_id: int) -> None:
            await group.killed(0)

        return on_send

    verdict, texts, sends, _ = await _group_answer_with_a_kill(
        tmp_path, postgres_url, kill_before_answering
    )
    print(f"\n{verdict.figures('killed before the note')}\n{texts}")
    assert len(texts) == 2, texts
    half, full = texts
    assert TAG in half and COMPLETE not in half  # left as the dead worker sent it
    assert TAG in full and COMPLETE in full
    assert len(sends) == 2  # the full answer is a message of its own: nothing edited the half
    # Counted apart, as the answers shown twice for the same reason; the verdict holds.
    assert verdict.left_half_before_a_kill == [TAG]
    assert verdict.sent_before_a_kill == [TAG]
    assert verdict.ok and not verdict.half_answers and not verdict.duplicated, verdict
    assert not verdict.lost and verdict.answered == 1


async def test_killed_once_the_first_piece_is_noted_is_finished_in_it(
    tmp_path: Path, postgres_url: str
) -> None:
    """The worker dies right after it noted the first piece's id in SQL: the next worker
    edits that message to the whole answer, once, and the group sees one answer, complete
    (a takeover that streamed into it could cut the half answer back to the new answer's
    first words, as the crash suite's logs showed; see tests/test_takeover_shown_once.py)."""
    noted_after: list[float] = []
    kills: list[asyncio.Task[None]] = []

    def kill_once_noted(group: Cluster) -> OnSend:
        async def on_send(message_id: int) -> None:
            answered = time.monotonic()

            async def kill_when_noted() -> None:
                noted_after.append(await _noted(group.database_url, message_id) - answered)
                await group.killed(0)

            kills.append(asyncio.create_task(kill_when_noted()))  # the call is answered now

        return on_send

    verdict, texts, sends, edited = await _group_answer_with_a_kill(
        tmp_path, postgres_url, kill_once_noted
    )
    print(f"\n{verdict.figures('killed after the note')}, noted {noted_after[0]:.3f} s after")
    assert len(texts) == 1, texts
    assert TAG in texts[0] and COMPLETE in texts[0]
    assert len(sends) == 1  # the takeover edited the first piece: no second message
    assert edited == texts, edited  # once, to the whole answer
    assert verdict.ok and not verdict.sent_before_a_kill and not verdict.left_half_before_a_kill
    assert verdict.answered == 1


def _judged(texts: list[str], sent_at: float, killed_at: float) -> Verdict:
    """`read_chats` of a group showing `texts`, whose first was sent at `sent_at`."""
    api = FakeBotApi()
    for message_id, text in enumerate(texts, start=1):
        api.messages[GROUP][message_id] = text
    api.calls.append(Call("sendMessage", {"chat_id": GROUP, "text": texts[0]}, sent_at))
    users = Users(None, chats=2, per_chat=1, seed=1)  # type: ignore[arg-type]
    users.chat_ids = [GROUP]
    users.questions[TAG] = Question(GROUP, 1, acked_at=sent_at - 1)
    return read_chats(api, users, SlowModel(), {TAG: sent_at}, killed_at=[killed_at])


def test_a_half_answer_counts_apart_only_within_the_window_and_answered_again() -> None:
    half = f"re:{TAG} hello w1"
    full = f"re:{TAG} hello " + " ".join(f"w{n}" for n in range(1, SlowModel().words))
    within = _judged([half, full], 10.0, 10.0 + UNKNOWABLE_WINDOW_S / 2)
    assert within.ok and within.left_half_before_a_kill == [TAG], within
    # Accepted well before the kill: its worker had all the time it needed to note it.
    before = _judged([half, full], 10.0, 10.0 + 2 * UNKNOWABLE_WINDOW_S)
    assert not before.ok and before.half_answers == [TAG] and before.duplicated == [TAG]
    # Within the window but never answered in full: a half answer, whatever the timing.
    alone = _judged([half], 10.0, 10.0 + UNKNOWABLE_WINDOW_S / 2)
    assert not alone.ok and alone.half_answers == [TAG] and not alone.left_half_before_a_kill


def test_only_the_one_half_copy_above_the_full_answer_counts_apart() -> None:
    """The exemption is for one message: the answer's first piece, accepted just before the
    kill and never noted, so left half above the full answer the next worker sent. A second
    half copy, or a half copy below the full answer (sent after it: a stale worker, not the
    unknowable window), is a product failure whatever the timing."""
    half = f"re:{TAG} hello w1"
    full = f"re:{TAG} hello " + " ".join(f"w{n}" for n in range(1, SlowModel().words))
    soon = 10.0 + UNKNOWABLE_WINDOW_S / 2
    twice_half = _judged([half, half, full], 10.0, soon)
    assert not twice_half.ok and twice_half.half_answers, twice_half
    below = _judged([full, half], 10.0, soon)
    assert not below.ok and below.half_answers == [TAG], below
