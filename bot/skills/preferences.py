"""/lang, /autotranslate and /keep: the preferences the skills read, stored in SQL
(bot.storage.prefs) per user (language) and per chat (auto-translate, keep messages)."""

from __future__ import annotations

from bot.text import language_name, normalize_language

from .router import Command, CommandRouter, TurnContext
from .services import SkillServices

UNKNOWN_USER = "I cannot tell who sent that message, so I cannot store a preference for you."
_OFF = {"off", "none", "stop", "no", "false", "0"}
_ON = {"on", "yes", "true", "1"}
_DELETE = {"delete", "forget", "purge"}


def register(router: CommandRouter, services: SkillServices) -> None:
    skill = PreferencesSkill(services)
    router.add(Command("lang", "your language for summaries and translations: /lang de",
                       skill.lang))  # fmt: skip
    router.add(Command("autotranslate", "translate every message in this chat: "
                       "/autotranslate LANG|off", skill.autotranslate))  # fmt: skip
    router.add(Command("keep", "keep this group's messages for /summarize missed: "
                       "/keep on|off|delete", skill.keep))  # fmt: skip


class PreferencesSkill:
    def __init__(self, services: SkillServices) -> None:
        self._s = services

    async def lang(self, ctx: TurnContext) -> str:
        prefs = await self._s.turn(ctx)
        if prefs.user_ref is None:
            return UNKNOWN_USER
        if not ctx.args:
            if prefs.language is None:
                return (
                    "You have no language set; I use your text's language, else "
                    f"{language_name(self._s.settings.default_language)}. Set one: /lang de"
                )
            return f"Your language is {language_name(prefs.language)} ({prefs.language})."
        if ctx.args.lower() in _OFF:
            await self._s.prefs.set_language(prefs.user_ref, None)
            return "Language preference cleared."
        try:
            code = normalize_language(ctx.args)
        except ValueError as exc:
            return str(exc)
        await self._s.prefs.set_language(prefs.user_ref, code)
        return f"Your language is now {language_name(code)} ({code})."

    async def autotranslate(self, ctx: TurnContext) -> str:
        target, _ = await self._s.prefs.chat(ctx.conversation_id)
        if not ctx.args:
            if target is None:
                return "Auto-translate is off in this chat. Turn it on: /autotranslate de"
            return f"Auto-translate is on: messages are translated into {language_name(target)}."
        if ctx.args.lower() in _OFF:
            await self._s.prefs.set_auto_translate(ctx.conversation_id, None)
            return "Auto-translate is off in this chat."
        try:
            code = normalize_language(ctx.args)
        except ValueError as exc:
            return str(exc)
        await self._s.prefs.set_auto_translate(ctx.conversation_id, code)
        note = "" if self._s.backend is not None else " (it needs a language model to work)"
        return f"Auto-translate is on: I will translate messages into {language_name(code)}{note}."

    async def keep(self, ctx: TurnContext) -> str:
        word = ctx.args.lower()
        if word in _DELETE:
            await self._s.prefs.set_keep_messages(ctx.conversation_id, False)
            deleted = await self._s.prefs.delete_kept(ctx.conversation_id)
            return (
                f"Deleted {deleted} kept message{'s' if deleted != 1 else ''}, and this chat's "
                "messages are no longer kept. (Messages sent to me stay in my history.)"
            )
        if word not in _ON | _OFF:
            _, kept = await self._s.prefs.chat(ctx.conversation_id)
            state = "on" if kept else "off"
            return (
                f"Keeping messages for summaries is {state} in this chat. "
                "Usage: /keep on|off|delete"
            )
        keep = word in _ON
        await self._s.prefs.set_keep_messages(ctx.conversation_id, keep)
        if keep:
            return "This chat's messages are now kept for summaries: try /summarize missed."
        return "This chat's messages are no longer kept. Those kept so far stay until /keep delete."
