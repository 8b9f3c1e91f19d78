"""Logs without user text when a statement fails: SQLAlchemy's error quotes the statement's
parameters ("[parameters: ('my password is ...', ...)]"), message text among them, and
Parley logs a failed turn, a failed write, with its traceback. Through Parley's own engine
(`create_engine`), on SQLite and PostgreSQL, logged at DEBUG through the log-safety filter."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from bot import logsafety
from bot.storage.database import create_engine
from tests.test_logsafety import CANARY, captured_debug_log


async def _failure_logged(
    url: str,
    statement: str,
    params: dict[str, object],
    *,
    setup: str = "",
    log_message_text: bool = False,
) -> str:
    """What the log holds after `statement` fails on Parley's own engine and the failure is
    logged with its traceback, as a failed turn is (`setup` run first, outside the log)."""
    engine = create_engine(url)
    try:
        if setup:
            async with engine.begin() as conn:
                await conn.execute(sa.text(setup))
        with captured_debug_log(safe=True, log_message_text=log_message_text) as (log, _):
            try:
                async with engine.begin() as conn:
                    await conn.execute(sa.text(statement), params)
            except sa.exc.DBAPIError:
                logging.getLogger("bot.conversation.manager").exception("the turn failed")
    finally:
        await engine.dispose()
    return log.getvalue()


async def test_a_failed_statement_logs_no_parameter(database_url: str) -> None:
    text = await _failure_logged(
        database_url, "INSERT INTO nowhere (x) VALUES (:t)", {"t": f"my password is {CANARY}"}
    )
    assert "the turn failed" in text and "[SQL: " in text  # the error still says what failed
    assert CANARY not in text


async def test_a_refused_argument_logs_no_value(postgres_url: str) -> None:
    # asyncpg refuses a value its codec cannot encode with its own text, which quotes the value
    # ("invalid input for query argument $1: 'my password is ...' (...)"), and SQLAlchemy's
    # error repeats that text: hide_parameters does not reach it.
    text = await _failure_logged(
        postgres_url, "SELECT CAST(:n AS integer)", {"n": f"{CANARY} (is) my (password"}
    )
    assert CANARY not in text
    # The line still says what failed, and which argument: the class, the position, the reason.
    assert "DataError" in text and "invalid input for query argument $1: *** (" in text
    assert "cannot be interpreted as an integer" in text


async def test_a_refused_argument_logs_its_value_with_log_message_text(postgres_url: str) -> None:
    text = await _failure_logged(
        postgres_url, "SELECT CAST(:n AS integer)", {"n": CANARY}, log_message_text=True
    )
    assert CANARY in text


@pytest.mark.parametrize(
    "statement",
    [
        # A NOT NULL or CHECK violation: "DETAIL:  Failing row contains (..., 'my password ...')".
        "INSERT INTO notes (note, n) VALUES (:t, NULL)",
        # A unique one: "DETAIL:  Key (note)=(my password ...) already exists."
        "INSERT INTO notes (note, n) VALUES (:t, 1), (:t, 2)",
    ],
)
async def test_a_violated_constraint_logs_no_row(postgres_url: str, statement: str) -> None:
    # PostgreSQL's DETAIL of a violated constraint quotes the row or the key, message text
    # among them (over lines, as written), and asyncpg's error, then SQLAlchemy's, repeat it.
    text = await _failure_logged(
        postgres_url,
        statement,
        {"t": f"my password is\n{CANARY}).\n(it is)"},
        setup="CREATE TABLE notes (note text UNIQUE, n int NOT NULL)",
    )
    assert CANARY not in text and "my password" not in text
    assert "IntegrityError" in text and "[SQL: " in text  # the error still says what failed


@pytest.mark.parametrize("after", ["\n[SQL: INSERT INTO notes]", "\n\n\n", ""])
def test_a_quoted_row_of_blank_lines_is_redacted_to_its_end(after: str) -> None:
    # The end of the text is looked for only where a run of newlines begins (a run of blank
    # lines in a message read from each of its newlines was quadratic: bench/log_redaction.py):
    # the quote still ends where SQLAlchemy's text begins, or before the text's last newlines.
    safety = logsafety.LogSafetyFilter()
    for detail in ("Failing row contains ", "Key (note)="):
        line = f"DETAIL:  {detail}(my password is\n\n\n\n{CANARY}\n\n).{after}"
        assert safety.redact(line) == f"DETAIL:  {detail}{logsafety.REDACTED}{after}"
