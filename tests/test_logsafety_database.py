"""Logs without user text when a statement fails: SQLAlchemy's error quotes the statement's
parameters ("[parameters: ('my password is ...', ...)]"), message text among them, and
Parley logs a failed turn, a failed write, with its traceback. Through Parley's own engine
(`create_engine`), on SQLite and PostgreSQL, logged at DEBUG through the log-safety filter."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from bot.storage.database import create_engine
from tests.test_logsafety import CANARY, captured_debug_log


async def test_a_failed_statement_logs_no_parameter(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with captured_debug_log(safe=True) as (log, _):
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        sa.text("INSERT INTO nowhere (x) VALUES (:t)"),
                        {"t": f"my password is {CANARY}"},
                    )
            except sa.exc.DBAPIError:
                logging.getLogger("bot.conversation.manager").exception("the turn failed")
    finally:
        await engine.dispose()
    text = log.getvalue()
    assert "the turn failed" in text and "[SQL: " in text  # the error still says what failed
    assert CANARY not in text
