"""The `parley` command.

    parley run                      start every configured adapter
    parley chat                     chat in the terminal (also with piped stdin)
    parley db upgrade|downgrade|current [REVISION]
    parley db prune [--older-than DAYS] [--dry-run]   delete old messages (the retention policy)
    parley kb add PATH... | list | remove PATH    the knowledge base
    parley eval [--set PATH]... [--limit N]   each skill's quality (docs/evaluation.md)
    parley support site add|list, key add|revoke   the support channel's sites and keys
    parley usage [--days N] [--user PLATFORM:ID] [--json]   model tokens per user and day
    parley data forget --platform P --user ID [--yes]   forget one chat user (erasure)
    parley doctor                   check the configuration, database, cache and backend
    parley config                   print the effective settings (secrets masked)

Every failure is one line on stderr, never a traceback, and a documented exit status:

    0    done, or stopped on request (SIGTERM, Ctrl-C, the end of every input)
    1    `parley doctor` found problems
    2    arguments argparse refuses (with JSON logs, its error line as one JSON line), or
         a configuration problem: a setting, the config file, a missing extra, an
         out-of-date database schema, a database migrated by a newer Parley (the operator
         must change something)
    3    a failure at run time: an adapter could not start or failed while running (a
         revoked token, no network), a database or model server that cannot be used
    130  interrupted (Ctrl-C) before start-up finished
    141  the reader of its output went away (`parley doctor | head -1`), as for any command
         that SIGPIPE ends; nothing is printed
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import select
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bot.errors import BotError, ConfigError, SchemaOutOfDate, SchemaTooNew

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger("parley")

EXIT_PROBLEMS = 1
EXIT_CONFIG = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`
# Libraries whose INFO lines are about their own machinery (migrations, HTTP requests): shown
# only with --verbose, so they never land in the middle of a terminal chat.
QUIET_LIBRARIES = (
    "alembic",
    "httpx",
    "httpcore",
    "telegram",
    "discord",
    "uvicorn",
    "vllm",
    "asyncio",
)
# Libraries that log what they find wrong in a document they read (pypdf: "EOF marker not
# found") as warnings: Parley says in its own line why a file failed, so below ERROR these
# are shown with --verbose only.
DOCUMENT_LIBRARIES = ("pypdf",)
# Library loggers whose records, errors included, are about a failure the library then raises
# and Parley reports in its own line: PTB logs a Bot API answer that is not JSON (a proxy's
# "502 Bad Gateway" page) at ERROR with the page and a traceback before raising. Shown with
# --verbose only.
RAISING_LIBRARIES = ("telegram.request",)


def _an_id(value: str) -> str:
    """`--user`, `--chat`: an id the history can keep (bot.text.storable, imported when
    used: the `parley` command starts without the text tools)."""
    from bot.text.storable import id_argument

    return id_argument(value)


def main(argv: Sequence[str] | None = None) -> int:
    settings: Settings | None = None
    try:
        # Imported here, not at the top: a Ctrl-C while the modules load (about a second)
        # is an interruption like any other (status 130), not a traceback.
        from bot.settings import load_settings

        try:
            args = _parser().parse_args(argv)
        except _Refused as refused:
            refused.report(argv)
        settings = load_settings(args.config)
        # A terminal chat stays readable: warnings only, unless --verbose.
        chatting = args.command == "run" and "console" in settings.adapters
        quiet = chatting or args.command in ("chat", "kb", "eval")
        _setup_logging(settings, verbose=args.verbose, quiet=quiet)
        status = int(asyncio.run(args.func(settings, args)) or 0)
        sys.stdout.flush()  # here, where a reader that left is caught, not at exit
        return status
    except (ConfigError, SchemaOutOfDate, SchemaTooNew) as exc:
        _error(exc, settings)
        return EXIT_CONFIG
    except BotError as exc:
        _error(exc, settings)
        return EXIT_FAILED
    except BrokenPipeError as exc:
        if not _stdout_gone():  # another pipe or socket: a failure like any other
            _error(exc, settings)
            return EXIT_FAILED
        # Whoever read stdout took what it wanted and left: no error line. Point stdout at
        # /dev/null so that the interpreter's own flush at exit does not fail once more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except OSError as exc:  # the machine's, not a bug: a folder that cannot be made, a full disk
        _error(exc, settings)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _stdout_gone() -> bool:
    """Whether the reader of stdout has left: the pipe's write end reports an error."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), stdout not a file
        return False


def _error(exc: Exception, settings: Settings | None) -> None:
    """The one line on stderr, with the secrets redacted as in the logs: it does not pass
    through the logging handler, and an error may quote a URL or a library's message."""
    _stderr_line(f"parley: error: {exc}", settings)


def _stderr_line(line: str, settings: Settings | None) -> None:
    """`line` on stderr, its secrets redacted, as one JSON object where the log is JSON lines
    (the settings' `log_format`; where they did not load, PARLEY_LOG_FORMAT's)."""
    from bot.logformat import command_line
    from bot.logsafety import redactor

    if settings is not None:
        line = redactor(settings).redact(line)
    print(command_line(line, json_format=_log_format(settings) == "json"), file=sys.stderr)


def _log_format(settings: Settings | None) -> str | None:
    # Settings that did not load say nothing: the environment may still ask for JSON lines.
    return settings.log_format if settings is not None else os.environ.get("PARLEY_LOG_FORMAT")


class _Refused(Exception):
    """argparse refused the arguments (an unknown option, a bad value): raised by
    `_Parser.error`, reported by `report` once `main` knows the arguments."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message

    def report(self, argv: Sequence[str] | None) -> NoReturn:
        """argparse's usage and error line, status 2; where the log is JSON lines, the error
        line alone as one JSON object with a log line's fields, as `_error` writes it (with
        the settings' secrets redacted), status 2 all the same."""
        settings = _settings_for_refusal(argv)
        if _log_format(settings) != "json":
            argparse.ArgumentParser.error(self.parser, self.message)  # exits, status 2
        _stderr_line(f"{self.parser.prog}: error: {self.message}", settings)
        raise SystemExit(EXIT_CONFIG)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusals `main` reports in the log's format (subcommands'
    parsers are of this class too: argparse makes them of their parent's)."""

    def error(self, message: str) -> NoReturn:
        raise _Refused(self, message)


def _settings_for_refusal(argv: Sequence[str] | None) -> Settings | None:
    """The settings as the command would have read them (the `--config` the arguments name,
    where that much of them can be read), or None where they do not load."""
    from bot.settings import load_settings

    config = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    config.add_argument("--config", type=Path)
    try:
        known, _ = config.parse_known_args(argv)
        return load_settings(known.config)
    except (argparse.ArgumentError, BotError, OSError):
        return None


def _parser() -> argparse.ArgumentParser:
    from adapters.support.cli import add_support_parser
    from bot.cli_commands import cmd_chat, cmd_config, cmd_db, cmd_doctor, cmd_health, cmd_run
    from bot.data_cli import add_data_parser
    from bot.evaluation import add_eval_parser
    from bot.knowledge.cli import add_kb_parser
    from bot.usage_cli import add_usage_parser

    parser = _Parser(prog="parley", description="Parley chat bot framework")
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (default config/parley.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "run",
        help="start every configured adapter",
        description=_adapters_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # one adapter a line
    ).set_defaults(func=cmd_run)
    chat = sub.add_parser("chat", help="chat in the terminal")
    chat.add_argument(
        "--user", type=_an_id, help="your name in the history (default: console.user)"
    )
    chat.add_argument("--chat", type=_an_id, help="conversation id (default: console.chat)")
    chat.set_defaults(func=cmd_chat)
    db = sub.add_parser("db", help="database schema migrations, and pruning old messages")
    db.add_argument("action", choices=["upgrade", "downgrade", "current", "prune"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: -1)")
    db.add_argument(
        "--yes",
        action="store_true",
        help="downgrade: yes, remove the undone revisions' tables and columns with their data",
    )
    db.add_argument(
        "--older-than",
        metavar="DAYS",
        help="prune: delete messages older than this many days "
        "(default: conversation.retention_days)",
    )
    db.add_argument(
        "--dry-run", action="store_true", help="prune: count what would go, delete nothing"
    )
    db.set_defaults(func=cmd_db)
    add_kb_parser(sub)
    add_eval_parser(sub)
    add_support_parser(sub)
    add_usage_parser(sub)
    add_data_parser(sub)
    sub.add_parser("doctor", help="check configuration and services").set_defaults(func=cmd_doctor)
    sub.add_parser("config", help="print the effective settings").set_defaults(func=cmd_config)
    sub.add_parser(
        "health", help="ask the running worker's /healthz (a container's health check)"
    ).set_defaults(func=cmd_health)
    return parser


def _adapters_help() -> str:
    from bot.adapter_registry import installed_adapters

    # `make run` installs no extra: an adapter whose SDK comes with one says so here, rather
    # than only when a start with it is refused; once it is installed, it says nothing.
    lines = [
        f"  {name}: {spec.summary}"
        + (f"; its SDK: pip install 'parley[{spec.extra}]'" if spec.sdk_missing() else "")
        for name, spec in installed_adapters().items()
    ]
    return "Installed adapters (the `adapters` setting):\n" + "\n".join(lines)


def _setup_logging(settings: Settings, *, verbose: bool, quiet: bool) -> None:
    """One handler on stderr, as logging.basicConfig would add it (and like it, nothing when
    the host program configured logging already): libraries' lines below WARNING only with
    --verbose, and the log-safety filter on everything."""
    from bot import logformat, logsafety

    root = logging.getLogger()
    if root.handlers:
        return
    level = logging.DEBUG if verbose else getattr(logging, settings.log_level)
    if quiet and not verbose:
        level = max(level, logging.WARNING)  # keep the chat readable
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if settings.log_format == "json":
        logformat.use_json([handler])
    if not verbose:
        handler.addFilter(_quiet_libraries)
    secrets = logsafety.secrets_in(settings)
    logsafety.install(
        secrets,
        users=logsafety.users_in(settings),
        log_message_text=settings.log_message_text,
        handlers=[handler],
    )
    root.addHandler(handler)
    root.setLevel(level)


def _quiet_libraries(record: logging.LogRecord) -> bool:
    if _from(record, RAISING_LIBRARIES):
        return False
    if _from(record, DOCUMENT_LIBRARIES):
        return record.levelno >= logging.ERROR
    return record.levelno >= logging.WARNING or not _from(record, QUIET_LIBRARIES)


def _from(record: logging.LogRecord, libraries: Sequence[str]) -> bool:
    return any(record.name == n or record.name.startswith(f"{n}.") for n in libraries)


if __name__ == "__main__":
    sys.exit(main())
