"""The bodies of the `parley` subcommands (argument parsing lives in bot.cli)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any

from adapters.base import Adapter
from adapters.console import ConsoleAdapter
from bot.app import Parley
from bot.cli import install_stop_signals
from bot.errors import ConfigError
from bot.knowledge import load_sample_if_empty
from bot.settings import ConsoleSettings, Settings
from bot.storage import migrate


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    return await _serve(
        settings,
        settings.console,
        console="console" in settings.adapters,
        telegram="telegram" in settings.adapters,
    )


async def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    chosen = {"user": args.user, "chat": args.chat}
    console = settings.console.model_copy(update={k: v for k, v in chosen.items() if v})
    return await _serve(settings, console, console=True)


async def _serve(
    settings: Settings, console_settings: ConsoleSettings, *, console: bool, telegram: bool = False
) -> int:
    async with Parley(settings) as app:
        if settings.database.is_sqlite:  # the embedded default answers questions about itself
            await load_sample_if_empty(app.kb, settings.knowledge)
        adapters: list[Adapter] = []
        if console:
            adapters.append(
                ConsoleAdapter(app.manager, console_settings, stdin=sys.stdin, stdout=sys.stdout)
            )
        if telegram:
            adapters.append(_telegram(app, settings))
        for adapter in adapters:
            app.manager.attach(adapter.platform, adapter)
        await app.manager.recover()
        await _run_until_stopped([adapter.run() for adapter in adapters])
    return 0


def _telegram(app: Parley, settings: Settings) -> Adapter:
    # Imported here: python-telegram-bot is an optional extra.
    try:
        from adapters.telegram import TelegramAdapter
    except ImportError as exc:
        raise ConfigError(
            f"the telegram adapter needs python-telegram-bot ({exc.name} is missing): "
            "pip install 'parley[telegram]'"
        ) from None
    return TelegramAdapter(app.manager, settings.telegram)


async def _run_until_stopped(runs: list[Coroutine[Any, Any, None]]) -> None:
    """Run the adapters until their input ends or SIGINT/SIGTERM arrives."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    tasks = [asyncio.create_task(run) for run in runs]
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, stopper]:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)


async def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.database.url.get_secret_value()
    if args.action == "upgrade":
        await migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        await migrate.downgrade(url, args.revision or "-1")
    print(f"schema revision: {await migrate.current(url) or 'none'} (code: {migrate.head()})")
    return 0


async def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from bot.doctor import run_checks

    problems = await run_checks(settings, out=sys.stdout)
    return 1 if problems else 0


async def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    # model_dump(mode="json") renders SecretStr as "**********".
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0
