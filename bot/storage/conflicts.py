"""INSERT ... ON CONFLICT statements that SQLAlchemy compiles once.

The dialects' `insert().on_conflict_do_nothing()` and `on_conflict_do_update()` have no cache
key in SQLAlchemy 2.0 (their Insert sets `inherit_cache = False`): a statement built with them,
even once at start-up with its values as parameters, is compiled again at every execution,
about half a millisecond of CPU on a turn. Text with typed bind parameters is cached like any
other statement (tests/test_statement_budget.py checks that a turn compiles nothing), and the
same SQL runs on SQLite (3.24 and later) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import sqlalchemy as sa


def insert_on_conflict(
    entity: Any,
    columns: Sequence[str],
    conflict: Sequence[str],
    *,
    update: str = "",
    returning: Sequence[str] = (),
) -> sa.TextClause | sa.TextualSelect:
    """INSERT INTO entity's table (columns) VALUES (:column, ...) ON CONFLICT (conflict), then DO
    NOTHING, or DO UPDATE SET `update` (SQL over the table's and `excluded`'s columns), then
    RETURNING `returning` when given. Each parameter has its column's type; executed with a
    list of rows, it runs once per row (the driver's executemany).

    Names and `update` are written into the SQL as given: the code's own constants (column
    names that need no quoting), never input; values only ever go as parameters."""
    table = cast(sa.Table, entity.__table__)
    action = f"DO UPDATE SET {update}" if update else "DO NOTHING"
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT ({', '.join(conflict)}) {action}"
    )
    if returning:
        sql += f" RETURNING {', '.join(returning)}"
    stmt = sa.text(sql).bindparams(*(sa.bindparam(c, type_=table.c[c].type) for c in columns))
    return stmt.columns(*(table.c[c] for c in returning)) if returning else stmt
