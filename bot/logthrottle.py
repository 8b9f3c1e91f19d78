"""Log lines that anyone on the internet can cause: each reason at most once per interval.

A webhook or API that refuses a request (a wrong secret, a bad signature, a delivery to the
wrong URL, a client that left mid-body) says why in the log, and an operator setting up a
webhook needs that line at once. The refusal costs nothing; the line does: a client sending
thousands a second fills the disk, runs up a log shipper's bill and buries real warnings.
`ThrottledLog` lets the first line of each reason through, then at most one every `every_s`,
which says how many were left out since:

    webhook: request without the right secret from 203.0.113.9 (and 1,234 more like it in
    the last 60 s)

Its keys are the reasons it was built with, a fixed set, never a peer's address or anything
a request holds: a flood cannot grow it (a reason it was not built with is a ValueError, a
bug). No background task: the count of lines left out is told by the next line let through,
so a flood that stops leaves its count untold until the reason comes up again. The clock is
monotonic (a wall-clock step neither silences a reason nor lets a flood through); a test
gives its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

EVERY_S = 60.0


@dataclass(slots=True)
class _Reason:
    logged_at: float | None = None  # when a line of it was last let through
    left_out: int = 0


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        reasons: Iterable[str],
        *,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._reasons = {reason: _Reason() for reason in reasons}

    @property
    def reasons(self) -> frozenset[str]:
        """What it keeps a count for: the reasons it was built with, and never more."""
        return frozenset(self._reasons)

    def warning(self, reason: str, msg: str, *args: object) -> None:
        self._log(logging.WARNING, reason, msg, args)

    def info(self, reason: str, msg: str, *args: object) -> None:
        self._log(logging.INFO, reason, msg, args)

    def filter(self, record: logging.LogRecord) -> bool:
        """As a filter on a library's logger (`logger.addFilter(it)`), for lines of its that
        any client can cause: a record whose message, before its arguments, is one of the
        reasons is let through as warning() lets its own; any other record passes as it is."""
        if not isinstance(record.msg, str) or record.msg not in self._reasons:
            return True
        told = self._let_through(record.msg)
        if told is None:
            return False
        record.msg += told
        return True

    def _log(self, level: int, reason: str, msg: str, args: tuple[object, ...]) -> None:
        if reason not in self._reasons:
            raise ValueError(f"{reason!r} is not one of this log's reasons")
        if not self.logger.isEnabledFor(level):
            return
        told = self._let_through(reason)
        if told is not None:
            # stacklevel 3: the record names the line that called warning() or info().
            self.logger.log(level, msg + told, *args, stacklevel=3)

    def _let_through(self, reason: str) -> str | None:
        """None: within the interval, counted. Otherwise what the line ends with: nothing, or
        how many were left out since the last (no "%" in it: the message's own stand)."""
        state = self._reasons[reason]
        now = self.clock()
        if state.logged_at is not None and now - state.logged_at < self.every_s:
            state.left_out += 1
            return None
        told = ""
        if state.left_out and state.logged_at is not None:
            told = (
                f" (and {state.left_out:,} more like it in the last {now - state.logged_at:.0f} s)"
            )
        state.logged_at, state.left_out = now, 0
        return told
