"""Logs without user text or secrets: a whole Telegram conversation at DEBUG, through the Bot
API stand-in, with a canary in the user's message (and so in the echoed reply) and the bot
token; the captured log must hold neither. Without the filter the canary is there: what
python-telegram-bot logs by itself at DEBUG (each Bot API call with its parameters and answer).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr
from sqlalchemy import text

from bot import logsafety
from bot.settings import Settings
from bot.storage.database import create_engine
from tests.doubles import ScriptedBackend
from tests.telegram_api import TOKEN
from tests.telegram_updates import feed, telegram_stack, text_update

CANARY = "canary-7f3a9c-do-not-log"
FAST: dict[str, Any] = {"stream_interval_s": 0.05}


@contextmanager
def captured_debug_log(
    *,
    safe: bool,
    log_message_text: bool = False,
    secrets: Sequence[str] = (TOKEN,),
    users: Sequence[str] = (),
) -> Iterator[tuple[io.StringIO, list[str]]]:
    """Everything logged at DEBUG while inside, as an operator's handler would write it, and
    the names of the loggers it came from; `secrets`, `users`: those the filter is given."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    names: list[str] = []

    def note(record: logging.LogRecord) -> bool:
        names.append(record.name)
        return True

    handler.addFilter(note)
    if safe:
        logsafety.install(
            secrets, users=users, log_message_text=log_message_text, handlers=[handler]
        )
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # A library imported by an earlier test may have set one of these loggers' levels (vLLM
    # sets httpx's to WARNING when it configures its logging): each logs here as it would in
    # a process of its own, the filter alone deciding what is kept.
    libraries = [logging.getLogger(name) for name in logsafety.BODY_LOGGERS]
    levels = [library.level for library in libraries]
    for library in libraries:
        library.setLevel(logging.NOTSET)
    try:
        yield buffer, names
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for library, was in zip(libraries, levels, strict=True):
            library.setLevel(was)


async def a_conversation(tmp_path: Path) -> None:
    async with telegram_stack(tmp_path, ScriptedBackend(), **FAST) as (_, adapter, api):
        await feed(adapter, text_update(1, 42, f"my password is {CANARY}"))
        await adapter.idle()
        assert api.texts(42) == [f"echo: my password is {CANARY}"]


async def test_without_the_filter_libraries_log_user_text(tmp_path: Path) -> None:
    with captured_debug_log(safe=False) as (log, _):
        await a_conversation(tmp_path)
    assert CANARY in log.getvalue()


async def test_a_debug_log_of_a_conversation_holds_no_text_and_no_token(tmp_path: Path) -> None:
    with captured_debug_log(safe=True) as (log, names):
        await a_conversation(tmp_path)
    text = log.getvalue()
    assert text, "nothing was logged: the test would prove nothing"
    assert CANARY not in text
    assert TOKEN not in text and TOKEN.split(":")[1] not in text
    assert any(n.startswith("telegram") for n in names)  # the libraries did log, and were cut


async def test_log_message_text_lets_library_records_through_without_the_token(
    tmp_path: Path,
) -> None:
    with captured_debug_log(safe=True, log_message_text=True) as (log, _):
        await a_conversation(tmp_path)
    assert CANARY in log.getvalue()
    assert TOKEN not in log.getvalue()


async def test_database_echo_goes_through_the_filter_not_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`database.echo = true` printed every statement with its parameters (the messages
    users sent) to stdout through SQLAlchemy's own handler, past the filter and the JSON
    format (a helper's walkthrough). The statements now go through logging: kept only with
    log_message_text, and redacted like every other record."""
    sql_logger = logging.getLogger("sqlalchemy.engine")
    level = sql_logger.level
    try:
        for log_message_text in (False, True):
            url = f"sqlite+aiosqlite:///{tmp_path}/echo.db"
            # The parameters are in the statements' lines only with log_message_text (the app
            # makes its engine so); without it the filter drops the lines anyway.
            engine = create_engine(url, echo=True, show_parameters=log_message_text)
            with captured_debug_log(safe=True, log_message_text=log_message_text) as (log, _):
                async with engine.connect() as connection:
                    await connection.execute(text("SELECT :said"), {"said": CANARY})
            await engine.dispose()
            assert CANARY not in capsys.readouterr().out
            assert (CANARY in log.getvalue()) is log_message_text
    finally:
        sql_logger.setLevel(level)


def test_secrets_are_redacted_from_messages_and_tracebacks() -> None:
    record_log = io.StringIO()
    handler = logging.StreamHandler(record_log)
    logsafety.install(["hunter2-password"], handlers=[handler])
    log = logging.getLogger("parley.test")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.error("connect to postgresql://u:%s@db failed", "hunter2-password")
        try:
            raise ValueError("bad key hunter2-password at https://api.telegram.org/bot1:AbC-d/x")
        except ValueError:
            log.exception("call failed")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    text = record_log.getvalue()
    assert "hunter2" not in text and "AbC-d" not in text
    assert "postgresql://u:***@db" in text and "ValueError: bad key ***" in text


class AdapterSection(BaseModel):
    token: SecretStr | None = None


class WithAdapters(BaseModel):
    core: Settings
    adapters: list[AdapterSection]


def test_secrets_in_settings_finds_tokens_keys_and_url_passwords() -> None:
    core = Settings(
        database={"url": "postgresql+asyncpg://parley:s3cret-pw@db/parley"},  # type: ignore[arg-type]
        backend={"kind": "openai", "base_url": "http://m", "model": "m", "api_key": "sk-abcdef"},  # type: ignore[arg-type]
    )
    settings = WithAdapters(core=core, adapters=[AdapterSection(token=SecretStr(TOKEN))])
    found = logsafety.secrets_in(settings)
    assert {TOKEN, "s3cret-pw", "sk-abcdef"} <= set(found)


def test_a_token_long_query_value_of_a_model_servers_url_is_a_secret_whatever_its_name() -> None:
    """A model server behind a gateway that takes its key in the query under a name of its
    own (`?code=`, as Azure Functions do) had the key shown in logs, `parley doctor` and
    `parley config`: only values of parameters named like secrets were redacted. A value as
    long as a token is one, whatever its name; a short one stays (`?v=2`)."""
    core = Settings(
        backend={
            "kind": "openai",
            "base_url": "http://m:1/v1?code=LONGSECRET123456789&v=2",
            "model": "m",
        },  # type: ignore[arg-type]
    )
    safety = logsafety.LogSafetyFilter(logsafety.secrets_in(core))
    line = safety.redact("model server http://m:1/v1?code=LONGSECRET123456789&v=2 refused")
    assert "LONGSECRET123456789" not in line
    assert "&v=2 refused" in line
    # Azure OpenAI's required version, 18 characters, is no secret.
    azure = "https://x.openai.azure.com/openai?api-version=2024-02-15-preview"
    core = Settings(backend={"kind": "openai", "base_url": azure, "model": "m"})  # type: ignore[arg-type]
    safety = logsafety.LogSafetyFilter(logsafety.secrets_in(core))
    assert safety.redact(f"GET {azure}") == f"GET {azure}"


def test_secrets_in_settings_finds_the_support_webhooks_secrets() -> None:
    from bot.settings import load_settings

    settings = load_settings(
        None,
        support={
            "webhook": {"url": "https://desk.example/all", "secret": "default-hook-secret"},
            "webhooks": {
                "shop": {"url": "https://desk.example/shop", "secret": "shop-secret-of-sixteen"}
            },
        },
    )
    found = set(logsafety.secrets_in(settings))
    assert {"default-hook-secret", "shop-secret-of-sixteen"} <= found


def test_a_receivers_generic_path_stays_in_other_log_lines() -> None:
    """A receiver's path is redacted where it carries a token (Zapier's, Slack's hooks: long),
    not where it is a word of every HTTP log (`/webhook`, `/api/events`): taken whole as a
    secret, it left Parley's own webhook and API lines as `***`."""
    from bot.settings import load_settings

    settings = load_settings(
        None,
        support={
            "webhook": {"url": "https://desk.example/webhook", "secret": "default-hook-secret"},
            "webhooks": {
                "shop": {
                    "url": "https://hooks.example/services/T0123/B0456/abcdefXYZ123",
                    "secret": "shop-secret-of-sixteen",
                },
                "crm": {"url": "https://crm.example/api/events", "secret": "crm-secret-sixteen"},
            },
        },
    )
    safety = logsafety.LogSafetyFilter(logsafety.secrets_in(settings))
    line = "POST /webhook 200; GET /api/events 200"
    assert safety.redact(line) == line
    assert "abcdefXYZ123" not in safety.redact(
        "POST https://hooks.example/services/T0123/B0456/abcdefXYZ123 200"
    )
