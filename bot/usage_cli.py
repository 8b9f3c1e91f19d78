"""`parley usage [--days N] [--user PLATFORM:ID] [--json]`: model tokens spent per user and
per support site and day, as the token budgets counted them (bot.budget, table token_usage).

Days are those of the budgets' time zone (`budget.timezone`), newest first; `--days 1` is
today. The limit column is the configured daily budget ("-": none).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bot.settings import Settings
from bot.storage.database import create_engine
from bot.storage.migrate import ensure_schema
from bot.storage.usage import Subject, UsageLine, UsageLog
from bot.text.storable import storable_argument

MAX_DAYS = 3660
_COLUMNS = ("day", "budget", "who", "prompt", "completion", "total", "limit", "turns", "refused")


def add_usage_parser(sub: Any) -> None:
    """Register `usage` on the `parley` command's subparsers."""
    usage = sub.add_parser("usage", help="model tokens spent per user and site and day")
    usage.add_argument("--days", type=_days, default=7, help="days back, today included (7)")
    usage.add_argument("--user", type=_user, metavar="PLATFORM:ID", help="one user only")
    usage.add_argument("--json", action="store_true", help="JSON instead of a table")
    usage.set_defaults(func=cmd_usage)


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"a whole number of days from 1 to {MAX_DAYS}")
    return days


def _user(value: str) -> Subject:
    value = storable_argument(value)
    platform, _, user_id = value.partition(":")
    if not platform or not user_id:
        raise argparse.ArgumentTypeError("PLATFORM:ID, for example telegram:12345")
    return Subject("user", value)


async def cmd_usage(settings: Settings, args: argparse.Namespace) -> int:
    db = settings.database
    url = db.url.get_secret_value()
    await ensure_schema(url, db.auto_migrate, timeout_s=db.timeout_s)
    engine = create_engine(url, echo=db.echo, pool_size=db.pool_size)
    today = datetime.now(ZoneInfo(settings.budget.timezone)).date()
    try:
        lines = await UsageLog(engine).report(today - timedelta(days=args.days - 1), args.user)
    finally:
        await engine.dispose()
    rows = [_row(line, settings) for line in lines]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no model tokens recorded in the last {args.days} day(s)")
    else:
        print(_table(rows))
    return 0


def _row(line: UsageLine, settings: Settings) -> dict[str, Any]:
    budget = settings.budget
    limit = budget.site_daily_tokens if line.subject.scope == "site" else budget.user_daily_tokens
    return {
        "day": line.day.isoformat(),
        "budget": line.subject.scope,
        "who": line.subject.name,
        "prompt": line.spent.prompt_tokens,
        "completion": line.spent.completion_tokens,
        "total": line.spent.tokens,
        "limit": limit or None,
        "turns": line.spent.turns,
        "refused": line.spent.refused,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [list(_COLUMNS)] + [
        ["-" if r[c] is None else _shown(str(r[c])) for c in _COLUMNS] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    numeric = set(range(3, len(_COLUMNS)))
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in cells
    )


def _shown(text: str) -> str:
    """A cell as the terminal should show it: a control character (an escape sequence in an
    id some adapter passed on) written out as Python would, never sent to the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
