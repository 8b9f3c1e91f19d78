"""A shared service (Redis) that went away: tried again after a pause instead of on every
call, and logged once when it goes down and once when it is back, however many calls fail.
"""

from __future__ import annotations

import logging
import time


class Outage:
    def __init__(self, retry_after_s: float, *, meanwhile: str, logger: logging.Logger) -> None:
        """`meanwhile` says what Parley does while the service is down (for the log)."""
        self._retry_after_s = retry_after_s
        self._meanwhile = meanwhile
        self._log = logger
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def should_try(self) -> bool:
        return time.monotonic() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + self._retry_after_s
        if self._down_since is None:
            self._down_since = now
            # The exception text names host and port at most; the URL (and password) never.
            self._log.warning(
                "Redis is unreachable (%s: %s); %s, retrying every %gs",
                type(exc).__name__,
                exc,
                self._meanwhile,
                self._retry_after_s,
            )

    def succeeded(self) -> None:
        if self._down_since is None:
            return
        self._log.info("Redis is reachable again after %.1fs", time.monotonic() - self._down_since)
        self._down_since = None
