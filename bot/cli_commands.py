"""The bodies of the `parley` subcommands (argument parsing lives in bot.cli)."""

from __future__ import annotations

import argparse
import json
import sys

from adapters.console import ConsoleSettings
from adapters.kit.runner import run_adapters
from bot.adapter_registry import adapter_spec
from bot.app import Parley
from bot.knowledge import load_sample_if_empty
from bot.settings import Settings
from bot.storage import migrate


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    async with Parley(settings) as app:
        await _load_sample(app)
        await run_adapters(app, settings.adapters)
    return 0


async def cmd_chat(settings: Settings, args: argparse.Namespace) -> int:
    configured = adapter_spec("console").section(settings)
    chosen = {"user": args.user, "chat": args.chat}
    console = configured.model_copy(update={k: v for k, v in chosen.items() if v})
    assert isinstance(console, ConsoleSettings)
    async with Parley(settings) as app:
        await _load_sample(app)
        await run_adapters(app, ["console"], {"console": console})
    return 0


async def _load_sample(app: Parley) -> None:
    if app.settings.database.is_sqlite:  # the embedded default answers questions about itself
        await load_sample_if_empty(app.kb, app.settings.knowledge)


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
