"""Prompt templates: one Jinja2 file per skill in config/prompts/, each overridable by a file of
the same name in the operator's folder (`skills.prompts_dir`), without touching code.

Templates render the system message; the user's material (question, text) travels as the user
message, so a template can never be broken by what a user types. StrictUndefined: a template
that names a value the skill does not pass fails loudly at its first use, not silently.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from bot.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "config" / "prompts"


class Prompts:
    def __init__(self, override_dir: str | Path | None = None) -> None:
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
        try:
            template = self._env.get_template(f"{name}.j2")
            return template.render(**values).strip()
        except jinja2.TemplateError as exc:
            raise ConfigError(f"prompt template {name}.j2: {exc}") from exc
