"""Prompt templates: one Jinja2 file per skill in config/prompts/, each overridable by a file of
the same name in the operator's folder (`skills.prompts_dir`), without touching code.

Templates render the system message; the user's material (question, text) travels as the user
message, so a template can never be broken by what a user types. StrictUndefined: a template
that names a value the skill does not pass fails loudly at its first use, not silently.

Every system message starts with the operator's system prompt (`conversation.system_prompt`),
then the skill's instructions: the operator's rules hold in every skill, and every prompt of
every skill and of chat shares that prefix, which vLLM's prefix cache then computes once.
Documents and retrieved passages never go into the system message: `fenced` (bot.text.quoting)
quotes them in the user message, and each template says that what is quoted is data, not
instructions.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from bot.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "config" / "prompts"


class Prompts:
    def __init__(self, override_dir: str | Path | None = None, system_prompt: str = "") -> None:
        self._system_prompt = system_prompt.strip()
        folders = [SHIPPED_DIR]
        if override_dir is not None:
            folder = Path(override_dir).expanduser()
            if not folder.is_dir():
                raise ConfigError(f"PARLEY_SKILLS__PROMPTS_DIR: {folder} is not a folder")
            folders.insert(0, folder)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(f) for f in folders]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain text for a model, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, name: str, **values: object) -> str:
        """The system message of skill `name`: the operator's system prompt, then the
        template's instructions."""
        try:
            template = self._env.get_template(f"{name}.j2")
            instructions = template.render(**values).strip()
        except jinja2.TemplateError as exc:
            raise ConfigError(f"prompt template {name}.j2: {exc}") from exc
        if not self._system_prompt:
            return instructions
        return f"{self._system_prompt}\n\n{instructions}"
