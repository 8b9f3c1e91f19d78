"""The core's own commands: /help, /start, /reset, /stop, /history."""

from __future__ import annotations

from bot.phrases import N_, said_back
from bot.text.quoting import speaker
from bot.types import Role

from .router import Command, CommandRouter, TurnContext
from .summarize import BOT_LABEL

EXCERPT_CHARS = 300


def register_core_commands(router: CommandRouter) -> None:
    async def help_(ctx: TurnContext) -> str:
        return await router.help_text(ctx.say)

    router.add(Command("help", N_("what I can do"), help_))
    router.add(Command("start", N_("what I can do"), help_, hidden=True))
    # In a group it sets aside everyone's conversation: its admins' (as /keep is).
    router.add(Command("reset", N_("start a fresh conversation (history is kept)"), _reset,
                       group_admin_only=True))  # fmt: skip
    router.add(Command("stop", N_("stop the reply I am writing"), _stop))
    router.add(Command("history", N_("show the latest messages: /history [count]"), _history))


async def _reset(ctx: TurnContext) -> str:
    await ctx.store.reset_context(ctx.conversation_id)
    await ctx.context.invalidate(ctx.conversation_id)
    return await ctx.say(
        N_("Fresh start: I have set the earlier conversation aside (it stays in the history).")
    )


async def _stop(ctx: TurnContext) -> str:
    # The manager already stopped the streaming reply when /stop arrived (see submit()).
    return await ctx.say(N_("Stopped. Send a new message whenever you like."))


async def _history(ctx: TurnContext) -> str:
    limit = ctx.settings.history_limit
    if ctx.args:
        # ASCII digits only ("²" and "①" are digits to isdigit(), not to int()), and few of
        # them (int() refuses over 4,300 digits).
        count = ctx.args.isascii() and ctx.args.isdigit() and len(ctx.args) <= 6
        if not count or int(ctx.args) < 1:
            return await ctx.say(N_("Usage: /history [count], for example /history 10"))
        limit = min(int(ctx.args), ctx.settings.history_limit)
    # +1: the /history command itself is the newest message and is left out.
    rows = [m for m in await ctx.store.history(ctx.conversation_id, limit + 1)][:-1][-limit:]
    if not rows:
        return await ctx.say(N_("There is no history yet."))
    you = await ctx.say(N_("You"))
    lines = []
    for row in rows:
        if row.role is Role.ASSISTANT and not row.content:
            continue  # messages over the rate limit, answered without a word
        # A member's label is one the bot's cannot be (as in /summarize's transcript): a
        # member named "Parley", or "[Parley](https://...)", wrote lines read as the bot's.
        name = said_back(row.user_display_name or "", EXCERPT_CHARS)
        who = BOT_LABEL if row.role is Role.ASSISTANT else (speaker(name) if name else you)
        text = said_back(row.content, EXCERPT_CHARS)
        lines.append(f"{row.created_at:%Y-%m-%d %H:%M} {who}: {text}")
    return "\n".join(lines)
