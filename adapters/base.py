"""What every adapter provides to the application."""

from __future__ import annotations

from typing import Protocol

from bot.conversation.sink import ReplySink


class Adapter(ReplySink, Protocol):
    """An input channel and its reply sink. `run()` returns when the input ends; cancelling
    it stops the adapter."""

    platform: str

    async def run(self) -> None: ...
