"""/lang, /autotranslate and /keep: the preferences the skills read, stored in SQL
(bot.storage.prefs) per user (language) and per chat (auto-translate, keep messages).

Replies are said in the user's language (ctx.say), looked up after the change: the answer
to `/lang de` is already in German."""

from __future__ import annotations

from bot.phrases import N_, said_back
from bot.text import LanguageName, normalize_language

from .router import Command, CommandRouter, TurnContext
from .services import SkillServices

UNKNOWN_USER = N_("I cannot tell who sent that message, so I cannot store a preference for you.")
# The most of an unknown language's name said back.
SHOWN_NAME_CHARS = 40
UNKNOWN_LANGUAGE = N_(
    'Unknown language "{name}". Give a language code or name, for example: {examples}.'
)
DELETED = N_(
    "Deleted {count} kept messages, and this chat's messages are no longer kept. "
    "(Messages sent to me stay in my history.)"
)
DELETED_ONE = N_(
    "Deleted 1 kept message, and this chat's messages are no longer kept. "
    "(Messages sent to me stay in my history.)"
)
# What a user may type after /lang (bot.text.normalize_language accepts all of these).
LANGUAGE_EXAMPLES = "de, German, Deutsch, fr, French, zh-CN, 中文, pt-BR, Japanese, 日本語"
_OFF = {"off", "none", "stop", "no", "false", "0"}
_ON = {"on", "yes", "true", "1"}
# What switches a language off: "no" is Norwegian's code there (/lang no, /autotranslate no).
_NO_LANGUAGE = _OFF - {"no"}
_DELETE = {"delete", "forget", "purge"}


def register(router: CommandRouter, services: SkillServices) -> None:
    skill = PreferencesSkill(services)
    router.add(Command("lang", N_("your language for summaries and translations: /lang de"),
                       skill.lang))  # fmt: skip
    # Both change what the whole chat gets: in a group, for its admins (see Command.admin_only).
    router.add(Command("autotranslate", N_("translate the messages sent to me in this "
                       "chat: /autotranslate LANG|off"), skill.autotranslate,
                       admin_only=True))  # fmt: skip
    router.add(Command("keep", N_("keep this group's messages for /summarize missed: "
                       "/keep on|off|delete"), skill.keep, admin_only=True))  # fmt: skip


def language_code(typed: str) -> str | None:
    """The code of the language a user typed, or None when it names none."""
    try:
        return normalize_language(typed)
    except ValueError:  # its message is English only: users get UNKNOWN_LANGUAGE in theirs
        return None


class PreferencesSkill:
    def __init__(self, services: SkillServices) -> None:
        self._s = services

    async def lang(self, ctx: TurnContext) -> str:
        prefs = await self._s.turn(ctx)
        if prefs.user_ref is None:
            return await ctx.say(UNKNOWN_USER)
        if not ctx.args:
            if prefs.language is None:
                default = LanguageName(self._s.settings.default_language)
                return await ctx.say(
                    N_(
                        "You have no language set; I use your text's language, "
                        "else {name}. Set one: /lang de"
                    ),
                    name=default,
                )
            return await ctx.say(
                N_("Your language is {name} ({code})."),
                name=LanguageName(prefs.language),
                code=prefs.language,
            )
        if ctx.args.lower() in _NO_LANGUAGE:
            await self._s.prefs.set_language(prefs.user_ref, None)
            return await ctx.say(N_("Language preference cleared."))
        code = language_code(ctx.args)
        if code is None:
            return await _unknown_language(ctx)
        await self._s.prefs.set_language(prefs.user_ref, code)
        return await ctx.say(
            N_("Your language is now {name} ({code})."), name=LanguageName(code), code=code
        )

    async def autotranslate(self, ctx: TurnContext) -> str:
        target, _ = await self._s.prefs.chat(ctx.conversation_id)
        if not ctx.args:
            if target is None:
                return await ctx.say(
                    N_("Auto-translate is off in this chat. Turn it on: /autotranslate de")
                )
            return await ctx.say(
                N_("Auto-translate is on: messages are translated into {name}."),
                name=LanguageName(target),
            )
        if ctx.args.lower() in _NO_LANGUAGE:
            await self._s.prefs.set_auto_translate(ctx.conversation_id, None)
            return await ctx.say(N_("Auto-translate is off in this chat."))
        code = language_code(ctx.args)
        if code is None:
            return await _unknown_language(ctx)
        await self._s.prefs.set_auto_translate(ctx.conversation_id, code)
        if self._s.backend is None:
            return await ctx.say(
                N_(
                    "Auto-translate is on: I will translate messages into {name} "
                    "(it needs a language model to work)."
                ),
                name=LanguageName(code),
            )
        return await ctx.say(
            N_("Auto-translate is on: I will translate messages into {name}."),
            name=LanguageName(code),
        )

    async def keep(self, ctx: TurnContext) -> str:
        word = ctx.args.lower()
        if word in _DELETE:
            await self._s.prefs.set_keep_messages(ctx.conversation_id, False)
            deleted = await ctx.store.delete_observed(ctx.conversation_id)
            # The questions that asked for summaries of them may be in a cached window.
            await ctx.context.invalidate(ctx.conversation_id)
            if deleted == 1:  # English's singular; the catalogues word both without plurals
                return await ctx.say(DELETED_ONE)
            return await ctx.say(DELETED, count=deleted)
        if word not in _ON | _OFF:
            _, kept = await self._s.prefs.chat(ctx.conversation_id)
            if kept:
                return await ctx.say(
                    N_(
                        "Keeping messages for summaries is on in this chat. "
                        "Usage: /keep on|off|delete"
                    )
                )
            return await ctx.say(
                N_("Keeping messages for summaries is off in this chat. Usage: /keep on|off|delete")
            )
        keep = word in _ON
        await self._s.prefs.set_keep_messages(ctx.conversation_id, keep)
        if keep:
            return await ctx.say(
                N_("This chat's messages are now kept for summaries: try /summarize missed.")
            )
        return await ctx.say(
            N_(
                "This chat's messages are no longer kept. "
                "Those kept so far stay until /keep delete."
            )
        )


async def _unknown_language(ctx: TurnContext) -> str:
    return await unknown_language(ctx, ctx.args)


async def unknown_language(ctx: TurnContext, typed: str) -> str:
    """UNKNOWN_LANGUAGE, naming what was typed on one line and at most SHOWN_NAME_CHARS of it:
    a paste of thousands of characters is not said back whole (a helper's review)."""
    name = said_back(typed, SHOWN_NAME_CHARS)
    return await ctx.say(UNKNOWN_LANGUAGE, name=name, examples=LANGUAGE_EXAMPLES)
