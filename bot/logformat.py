"""`log_format = "json"`: one JSON object per line, for log collectors (Loki, Elastic,
CloudWatch) that index fields instead of parsing text.

    {"time": "2026-12-01T15:04:05.123Z", "level": "INFO", "logger": "bot.conversation.manager",
     "message": "...", "conversation": "telegram:42", "platform": "telegram", "turn": 1187}

The turn fields come from `bot.logcontext` and are present on every line logged during a
turn (absent outside one). The message is the record's message after `bot.logsafety`'s
filter ran on the same handler, so its redactions hold here too: the filter rewrites the
record (message, exception text) before any formatter sees it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.logcontext import TurnFieldsFilter

TURN_FIELDS = ("conversation", "platform", "turn")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in TURN_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # already redacted where the safety filter formatted it
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # default=str: a record whose message is fine but whose extra is not JSON still logs.
        return json_line(entry, default=str)


# JSON leaves these as they are (ensure_ascii=False), but `str.splitlines`, and so a reader
# that takes lines by it, breaks a line at each; JSON escapes the others it breaks at itself.
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_line(value: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """`value` as one JSON line, non-ASCII text as it is but for the three line breaks."""
    return json.dumps(value, ensure_ascii=False, default=default).translate(_LINE_BREAKS)


def error_line(text: str, *, json_format: bool) -> str:
    """The line a failing `parley` command ends with (`parley: error: ...`), as one JSON
    object where the log is JSON lines: among them a plain line broke whatever reads them."""
    return command_line(f"parley: error: {text}", json_format=json_format)


def command_line(text: str, *, json_format: bool, level: int = logging.ERROR) -> str:
    """A line a command writes on stderr itself (`parley health`'s, `parley kb`'s): `text` as
    it is, or where the log is JSON lines one JSON object with a log line's fields (logger
    "parley", `level`), through the same formatter."""
    if not json_format:
        return text
    record = logging.LogRecord("parley", level, "", 0, text, None, None)
    return JsonFormatter().format(record)


def _utc(created: float) -> str:
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def use_json(handlers: Sequence[logging.Handler] | None = None) -> None:
    """Format `handlers` (default: the root logger's) as JSON lines with the turn fields.
    Call it after logging is configured, like `bot.logsafety.install`."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(TurnFieldsFilter())
        handler.setFormatter(JsonFormatter())
