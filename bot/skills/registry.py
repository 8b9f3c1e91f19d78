"""The skills Parley ships, in the order /help lists them. Adding a skill: write a module with
`register(router, services)` (commands via `router.add`, intents via `router.add_intent`) and
add it to SKILLS."""

from __future__ import annotations

from collections.abc import Callable

from . import preferences, qa, summarize, translate
from .router import CommandRouter
from .services import SkillServices

Register = Callable[[CommandRouter, SkillServices], None]

SKILLS: tuple[Register, ...] = (
    qa.register,
    summarize.register,
    translate.register,
    preferences.register,
)


def register_skills(router: CommandRouter, services: SkillServices) -> None:
    for register in SKILLS:
        register(router, services)
