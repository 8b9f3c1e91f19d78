"""The `parley` command.

    parley run                      start every configured adapter
    parley chat                     chat in the terminal (also with piped stdin)
    parley db upgrade|downgrade|current [REVISION]
    parley kb add PATH... | list | remove PATH    the knowledge base
    parley doctor                   check the configuration, database, cache and backend
    parley config                   print the effective settings (secrets masked)

Operator mistakes end in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.errors import BotError
from bot.settings import Settings, load_settings

log = logging.getLogger("parley")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        _setup_logging(settings, verbose=args.verbose, quiet=args.command in ("chat", "kb"))
        return int(asyncio.run(args.func(settings, args)) or 0)
    except BotError as exc:
        print(f"parley: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    from bot.cli_commands import cmd_chat, cmd_config, cmd_db, cmd_doctor, cmd_run
    from bot.knowledge.cli import add_kb_parser

    parser = argparse.ArgumentParser(prog="parley", description="Parley chat bot framework")
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (default config/parley.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start every configured adapter").set_defaults(func=cmd_run)
    chat = sub.add_parser("chat", help="chat in the terminal")
    chat.add_argument("--user", help="your name in the history (default: console.user)")
    chat.add_argument("--chat", help="conversation id (default: console.chat)")
    chat.set_defaults(func=cmd_chat)
    db = sub.add_parser("db", help="database schema migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?", help="target revision (upgrade: head, downgrade: -1)")
    db.set_defaults(func=cmd_db)
    add_kb_parser(sub)
    sub.add_parser("doctor", help="check configuration and services").set_defaults(func=cmd_doctor)
    sub.add_parser("config", help="print the effective settings").set_defaults(func=cmd_config)
    return parser


def _setup_logging(settings: Settings, *, verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, settings.log_level)
    if quiet and not verbose:
        level = max(level, logging.WARNING)  # keep the chat readable
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


if __name__ == "__main__":
    sys.exit(main())
