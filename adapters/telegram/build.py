"""Building the PTB Application from settings, and keeping the bot token out of logs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from telegram.ext import Application, ApplicationBuilder

from .limits import FloodGate
from .settings import TelegramSettings

TelegramApp = Application[Any, Any, Any, Any, Any, Any]

# httpx logs every request URL at INFO, and the Bot API puts the token in the URL; PTB logs
# the URL at DEBUG. A logger's filter does not apply to its children, so each is covered.
_PREFIXES = ("httpx", "telegram", "adapters.telegram")


def build_application(settings: TelegramSettings, gate: FloodGate) -> TelegramApp:
    assert settings.token is not None
    builder = (
        ApplicationBuilder()
        .token(settings.token.get_secret_value())
        .base_url(settings.base_url)
        .base_file_url(file_url(settings.base_url))
        .rate_limiter(gate)
        .concurrent_updates(False)  # one by one: a chat's messages are recorded in order
        .connect_timeout(10.0)
        .read_timeout(30.0)
        .pool_timeout(30.0)  # calls wait in the FloodGate, not for a connection
        .updater(None)  # polling is the adapter's own loop (see adapter._poll)
    )
    return builder.build()


def file_url(base_url: str) -> str:
    """The file download URL for a Bot API server: .../bot -> .../file/bot."""
    head, sep, _ = base_url.rstrip("/").rpartition("/")
    return f"{head}{sep}file/bot" if sep else f"{base_url}/file/bot"


class _Redact(logging.Filter):
    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._secret in message:
            record.msg = message.replace(self._secret, "<token>")
            record.args = None
        return True


@contextlib.contextmanager
def redacting(secret: str) -> Iterator[None]:
    """While the adapter runs, the token is replaced by <token> in every library log line."""
    flt = _Redact(secret)
    names = [n for n in logging.root.manager.loggerDict if n.startswith(_PREFIXES)]
    loggers = [logging.getLogger(name) for name in {*names, *_PREFIXES}]
    for logger in loggers:
        logger.addFilter(flt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(flt)
