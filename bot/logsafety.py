"""Logs without user text or secrets: one filter on the root logger's handlers.

Libraries log what they send and receive. At DEBUG, python-telegram-bot logs every Bot API
call with its parameters and its answer (user messages, replies, documents' names), and its
bot's URL with the token in it; httpx logs each request line at INFO, and a Telegram request
line carries the bot token (`.../bot123:ABC/sendMessage`); uvicorn's access log records every
webhook path. The filter, installed on the handlers (a filter on a logger would not see what
its children propagate), does two things to every record:

- From those libraries (`BODY_LOGGERS`, with their children), records below WARNING are
  dropped unless `log_message_text` is true. Their warnings and errors stay: they say that
  something failed, which an operator needs.
- In what is kept, every secret given to `install` (bot tokens, API keys, passwords; see
  `secrets_in`), any Telegram bot token in a URL and any Discord interaction or webhook
  token in one (`/interactions/<id>/<token>`, `/webhooks/<id>/<token>`) is replaced with
  `***`, exceptions and stack traces included. A secret shorter than MIN_SECRET_CHARS is
  replaced only where it stands as a password (`user:…@` in a URL, `password=…` and the like
  in a driver's error): anywhere else it could be an ordinary word, and every log line
  would lose it. Unless `log_message_text` is true, the value asyncpg quotes where it
  refuses a query argument (message text, which SQLAlchemy's `hide_parameters` does not
  reach) is replaced too.

`log_message_text = true` is for debugging on a machine whose logs are as private as the
conversations; secrets are redacted even then. Parley's own loggers never log message text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from urllib.parse import unquote, unquote_plus, urlsplit

from pydantic import AnyUrl, BaseModel, SecretStr

# Loggers that log request or response bodies, or URLs with credentials, below WARNING.
BODY_LOGGERS = (
    "telegram",
    "httpx",
    "httpcore",
    "hpack",
    "h11",
    "uvicorn.access",
    "discord.http",
    "discord.gateway",
    # Each webhook and interaction call's URL, which holds the interaction's token.
    "discord.webhook",
    "aiohttp.access",
    "aiohttp.client",
    "websockets",
    "openai",
    "urllib3",
    # SQL with its parameters (message text): SQLAlchemy's echo, aiosqlite's DEBUG lines.
    "sqlalchemy.engine",
    "aiosqlite",
    "asyncpg",
    # Its DEBUG lines trace the parser over the text being rendered.
    "markdown_it",
)
REDACTED = "***"
# A URL's user name this long, with no password, is a token in the user's place.
TOKEN_LIKE_CHARS = 16
_SECRET_PARAMETER = re.compile(r"(?i)pass|pwd|secret|token|key|sig|auth|credential")
# Query parameters of a model server's URL whose long values are no secret: Azure OpenAI's
# required `api-version=2024-02-15-preview`, starred out of every log line otherwise.
_NEVER_SECRET = re.compile(r"(?i)(api[-_]?)?version$")


def is_secret_parameter(name: str) -> bool:
    """Is a query parameter (or option) of this name a secret (`token`, `api_key`, `sig`)?"""
    return _SECRET_PARAMETER.search(unquote_plus(name)) is not None


# A bot token in a Bot API URL (api.telegram.org/bot<id>:<secret>/...), whoever logs it.
_BOT_TOKEN = re.compile(r"(?<=/bot)\d+:[\w-]+")
# A Discord interaction's or webhook's token in its URL (/interactions/<id>/<token>/callback,
# /webhooks/<id>/<token>/...): it lets whoever holds it answer as the bot for 15 minutes.
_WEBHOOK_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[\w.-]+")
# asyncpg's refusal of a value its codec cannot encode quotes the value (message text, up to
# 40 characters), and SQLAlchemy's error repeats it, past hide_parameters: "invalid input for
# query argument $1: 'my password is ...' ('str' object cannot be interpreted as an integer)".
_REFUSED_ARGUMENT = re.compile(
    r"(invalid input for query argument \$\d+(?: in element #\d+ of executemany\(\) sequence)?: )"
    r"([^\n]*)"
)
# The reason asyncpg gives last, in parentheses (one level inside them, as in "an integer is
# required (got type str)"). The value's own parentheses cannot end the line as this does.
_REFUSAL_REASON = re.compile(r" \((?:[^()\n]|\([^()\n]*\))*\)$")
# PostgreSQL's DETAIL of a violated constraint quotes the row ("Failing row contains (...)":
# NOT NULL, CHECK) or the key ("Key (note)=(...) already exists": UNIQUE, FOREIGN KEY),
# message text among them, as written: over lines, with its own parentheses. It ends where
# what asyncpg, SQLAlchemy or a traceback write after it begins, or with the text. The end of
# the text is looked for only where a run of newlines begins: tried from every newline of a
# message's run of blank lines, each try read the rest of the run (quadratic, 0.7 s for
# 16,000 newlines in one log line).
_CONSTRAINT_DETAIL = re.compile(
    r"(DETAIL:  (?:Failing row contains |Key \((?:[^()\n]|\([^()\n]*\))*\)=))"
    r".*?(?=\n(?:HINT:  |\[SQL: |\[SQL parameters |\(Background on this error )"
    r"|\n\n(?:The above exception |During handling )|(?<!\n)\n*\Z)",
    re.DOTALL,
)
# Shorter secrets would redact ordinary words: they are redacted only as passwords.
MIN_SECRET_CHARS = 6
# Where a value is a password, however short, as (before it, after it): a URL's `user:…@`,
# and `password=…`, `password: …` or `"password": "…"` (DSNs, drivers' errors, JSON).
_PASSWORD_AT = (
    (r"(?P<before>://[^\s/@:]*:)", "(?=@)"),
    (r"(?P<before>(?i:password|passwd|pwd)[\"']?\s*[=:]\s*[\"']?)", r"(?=[\s\"',;&)\]}]|$)"),
)
# Where a receiver's user name stands as one (`users_in`): a URL's `user@` or `user:…@`.
_USER_AT = (r"(?P<before>://)", r"(?=(?::[^\s/@]*)?@)")


class LogSafetyFilter(logging.Filter):
    """Drops library records that may carry message text; redacts secrets from the rest."""

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        users: Iterable[str] = (),
        log_message_text: bool = False,
    ) -> None:
        """`users`: user names redacted only where they stand in a URL (`users_in`)."""
        super().__init__()
        self.log_message_text = log_message_text
        given = {s for s in secrets if s}
        long = {s for s in given if len(s) >= MIN_SECRET_CHARS}
        self._secrets = _any_of(long)
        short = _any_of(given - long)
        self._passwords = (
            [re.compile(f"{at}(?:{short.pattern}){end}") for at, end in _PASSWORD_AT]
            if short
            else []
        )
        names = _any_of(s for s in users if s)
        self._users = (
            re.compile(f"{_USER_AT[0]}(?:{names.pattern}){_USER_AT[1]}") if names else None
        )

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            not self.log_message_text
            and record.levelno < logging.WARNING
            and _is_library(record.name)
        ):
            return False
        self._redact(record)
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: the handler reports it
            return
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Format the traceback now, so that what a handler prints is the redacted copy.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)

    def redact(self, text: str) -> str:
        text = _BOT_TOKEN.sub(REDACTED, text)
        text = _WEBHOOK_TOKEN.sub(rf"\g<1>{REDACTED}", text)
        if not self.log_message_text:
            text = _REFUSED_ARGUMENT.sub(_without_value, text)
            text = _CONSTRAINT_DETAIL.sub(rf"\g<1>{REDACTED}", text)
        if self._users:
            text = self._users.sub(rf"\g<before>{REDACTED}", text)
        if self._secrets:
            text = self._secrets.sub(REDACTED, text)
        for password in self._passwords:
            text = password.sub(rf"\g<before>{REDACTED}", text)
        return text


def _without_value(refusal: re.Match[str]) -> str:
    """asyncpg's refusal of an argument with the value left out: which argument, and why
    (the reason too, where it cannot be told from the value)."""
    reason = _REFUSAL_REASON.search(refusal[2])
    return f"{refusal[1]}{REDACTED}{reason[0] if reason else ''}"


def _any_of(secrets: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for `secrets`, longest first (a secret inside another is not half-done)."""
    literal = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    return re.compile(literal) if literal else None


def _is_library(name: str) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in BODY_LOGGERS)


def secrets_in(settings: BaseModel) -> list[str]:
    """Every secret in a settings object: each `SecretStr` value, and the password of each
    URL among them (a database URL's password shows up alone in driver errors), or among
    the plain URLs (a model server's `http://user:password@host` is no SecretStr, yet its
    password is one), as written and percent-decoded; of the URL fields (`support.webhook.url`,
    `support.webhooks`' and `chatwoot.url`, receivers' URLs) the path and the whole query
    (their user names: `users_in`)."""
    found: list[str] = []
    for value in _values(settings):
        if isinstance(value, SecretStr) and (secret := value.get_secret_value()):
            found.append(secret)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, AnyUrl):  # a validated URL field (a webhook's, Chatwoot's)
            found += _receiver_secrets(str(text))
        elif isinstance(text, str):
            found += _url_secrets(text)
    return found


def _receiver_secrets(url: str) -> list[str]:
    """A receiver's URL (an outbound webhook's, Chatwoot's) is the operator's or the help
    desk's secret: besides `_url_secrets`, its path where it is as long as a token (Zapier's,
    Slack's, n8n's hooks carry theirs there), its whole query string and each value in it as
    long as a token, whatever the parameter's name (Azure Functions' `?code=`), as written
    and percent-decoded. (A shorter value alone could be an ordinary word: `?site=support`.)"""
    found = _url_secrets(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    # The path where it is as long as a token: a short one (`/webhook`, `/api/events`) is a
    # word of every HTTP log line, Parley's own included, which it would leave as `***`.
    path = parts.path if len(parts.path.strip("/")) >= TOKEN_LIKE_CHARS else ""
    more = [path, parts.query]
    values = [pair.partition("=")[2] for pair in parts.query.split("&")]
    more += [value for value in values if len(unquote_plus(value)) >= TOKEN_LIKE_CHARS]
    more = [s for secret in more for s in (secret, unquote(secret), unquote_plus(secret)) if s]
    return list(dict.fromkeys(found + more))


def users_in(settings: BaseModel) -> list[str]:
    """The user names of the receivers' URLs (`support.webhook.url`, `support.webhooks`',
    `chatwoot.url`), as written and percent-decoded: the operator's or the help desk's, to be
    redacted where they stand in a URL only. A name such as "support" or "parley" redacted
    wherever it shows took that word out of every log line."""
    found: list[str] = []
    for value in _values(settings):
        if isinstance(value, AnyUrl):
            try:
                user = urlsplit(str(value)).username or ""
            except ValueError:
                continue
            found += [s for s in (user, unquote(user)) if s]
    return list(dict.fromkeys(found))


def redactor(settings: BaseModel) -> LogSafetyFilter:
    """A filter that redacts `settings`' secrets (`redact`): for what Parley prints itself,
    outside logging (the CLI's error line, `parley doctor`, `parley config`)."""
    return LogSafetyFilter(secrets_in(settings), users=users_in(settings))


def _values(model: BaseModel) -> Iterable[object]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, dict):  # e.g. support.webhooks: site -> {url, secret}
            value = list(value.values())
        items = value if isinstance(value, list | tuple) else [value]
        for item in items:
            if isinstance(item, BaseModel):
                yield from _values(item)
            else:
                yield item


def _url_secrets(url: str) -> list[str]:
    """What a URL carries that is a secret, as written and percent-decoded: its password;
    with none, a user name as long as a token (`https://<token>@host`); the value of each
    query parameter named like one (`?token=`, `api_key=`, `sig=`), and of any other as long
    as a token (a model server behind a gateway that takes its key as `?code=`, Azure
    Functions' name: it was shown in logs, `parley doctor` and `parley config`)."""
    if "://" not in url:
        return []
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return []
    found = [password] if password else []
    if not password and user and len(user) >= TOKEN_LIKE_CHARS:
        found.append(user)
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        long = len(unquote_plus(value)) >= TOKEN_LIKE_CHARS and not _NEVER_SECRET.match(name)
        if value and (is_secret_parameter(name) or long):
            found += [value, unquote_plus(value)]
    return list(dict.fromkeys(s for secret in found for s in (secret, unquote(secret)) if s))


def install(
    secrets: Iterable[str] = (),
    *,
    users: Iterable[str] = (),
    log_message_text: bool = False,
    handlers: Sequence[logging.Handler] | None = None,
) -> LogSafetyFilter:
    """Put one `LogSafetyFilter` on `handlers` (default: the root logger's, so call this
    after logging is configured) and return it (`handler.removeFilter` takes it off)."""
    safety = LogSafetyFilter(secrets, users=users, log_message_text=log_message_text)
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(safety)
    return safety
