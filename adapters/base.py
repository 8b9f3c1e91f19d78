"""What every adapter provides to the application (see docs/adapters.md).

An adapter is an async context manager: entering it connects to the platform and checks the
credentials (a failure there stops `parley run` with one line); `run()` takes input until
the input ends (it returns) or the process stops (it is cancelled, and must stop taking input
promptly); leaving it closes the platform's client, after the turns in flight were given the
shutdown grace to reach their chats through `deliver`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from bot.conversation.sink import Platform


class Adapter(Platform, Protocol):
    platform: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def run(self) -> None: ...
