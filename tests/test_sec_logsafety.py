"""Short passwords are redacted where they stand as passwords (a URL's `user:…@`, a driver's
`password=…`), and nowhere else: a 4-letter password that is also a word must not turn that
word into `***` in every log line."""

from __future__ import annotations

import io
import logging

from bot import logsafety
from bot.logsafety import LogSafetyFilter
from bot.settings import Settings

SHORT = "pw4x"  # below MIN_SECRET_CHARS
WORD = "data"  # a short password that is also an ordinary word


def test_a_short_database_password_is_redacted_from_a_driver_error_line() -> None:
    settings = Settings(database={"url": f"postgresql+asyncpg://parley:{SHORT}@db/parley"})  # type: ignore[arg-type]
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    logsafety.install(logsafety.secrets_in(settings), handlers=[handler])
    log = logging.getLogger("parley.test.sec")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.error("connect failed: %s", f"host=db user=parley password={SHORT} dbname=parley")
        # The configured URL is a secret as a whole; the same password on a replica is not.
        log.error("replica: postgresql://parley:%s@db-2/parley unreachable", SHORT)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    text = buffer.getvalue()
    assert SHORT not in text
    assert "password=*** dbname" in text and "parley:***@db-2" in text


def test_short_secrets_are_redacted_in_every_password_position() -> None:
    safety = LogSafetyFilter([SHORT, WORD])
    lines = {
        f"redis://:{SHORT}@cache:6379/0": "redis://:***@cache:6379/0",
        f"DSN 'host=db password={SHORT}'": "DSN 'host=db password=***'",
        f'{{"user": "u", "password": "{SHORT}"}}': '{"user": "u", "password": "***"}',
        f"PGPASSWORD={WORD}; retrying": "PGPASSWORD=***; retrying",
        f"Password: {WORD}": "Password: ***",
    }
    for line, redacted in lines.items():
        assert safety.redact(line) == redacted


def test_a_short_secret_elsewhere_is_left_alone() -> None:
    safety = LogSafetyFilter([WORD])
    lines = [
        "no data in the reply; metadata kept",
        "password=database-admin",  # another password that merely starts with it
        "postgresql://u:database@db/x",
        "https://data.example/v1/data",
        "redis://cache:data",  # a host and a port, not a user and a password
    ]
    for line in lines:
        assert safety.redact(line) == line
