"""Adapters, found by name.

Each adapter publishes an `AdapterSpec` under the entry-point group `parley.adapters`
(Parley's own in pyproject.toml; a third-party package adds its own the same way):

    [project.entry-points."parley.adapters"]
    matrix = "parley_matrix.spec:SPEC"

A spec module imports no platform SDK: the spec names its settings section (a model that
lives with the adapter, read from `[NAME]` in parley.toml and `PARLEY_NAME__*`), and the
factory, imported only when the adapter runs. A missing SDK then becomes one line naming the
`pip install` that brings it, and `parley config` works without any SDK installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict

from bot.errors import ConfigError
from bot.policy import AccessRules

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "parley.adapters"
# Parley's own, also found when the package metadata is stale or absent (a source checkout).
BUILTIN = (
    "adapters.console:SPEC",
    "adapters.telegram.spec:SPEC",
    "adapters.discord.spec:SPEC",
    "adapters.support.spec:SPEC",
    "adapters.chatwoot.spec:SPEC",
)


class AdapterSettings(BaseModel):
    """The base of every adapter's settings section: unknown keys are errors (a typo must not
    silently leave a bot open), and every adapter has the core's access rules."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as bot.settings' sections

    access: AccessRules = AccessRules()

    def missing(self) -> str | None:
        """What the adapter needs to run and this section lacks, in one line; None when
        nothing. Asked by `parley run` before it opens anything, and by the adapter itself."""
        return None

    def serves_http(self) -> bool:
        """Whether the adapter mounts routes on Parley's HTTP server (`http.host`, `http.port`)
        when it runs: `parley doctor` then checks that the port can be bound. False unless the
        adapter says so (a webhook, an API)."""
        return False


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    name: str
    settings: type[AdapterSettings]
    # "package.module:function"; the function takes (AdapterHost, its settings section).
    factory: str
    summary: str = ""
    # The pip extra that brings the adapter's SDK ("" when it needs none).
    extra: str = ""
    # The SDK's top-level module: `parley run --help` names the extra only where it is
    # missing ("": it cannot tell, and always names it).
    sdk: str = ""
    # "package.module:function" for `parley doctor`: an async function taking the settings
    # section (and, when it takes a second argument, the whole Settings: a check that depends
    # on the core's database or Redis), returning one line about what it checked, raising
    # BotError for a problem.
    doctor: str = ""
    # Whether a private chat's id on the platform is its user's (Telegram's, a web chat
    # visitor's): `parley data forget` then finds it with no message of theirs left in it
    # (pruned). A Discord direct message's id is its channel's, which names nobody.
    private_chat_is_user: bool = False

    def sdk_missing(self) -> bool:
        """Whether the extra still has to be installed (found without importing the SDK)."""
        if not self.extra:
            return False
        return not self.sdk or importlib.util.find_spec(self.sdk) is None

    def section(self, settings: BaseModel) -> AdapterSettings:
        section = getattr(settings, self.name)
        assert isinstance(section, self.settings)
        return section

    def load_factory(self) -> Callable[..., Any]:
        return self._load(self.factory)

    def load_doctor(self) -> Callable[..., Any] | None:
        return self._load(self.doctor) if self.doctor else None

    def _load(self, target: str) -> Callable[..., Any]:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if not self.extra:
                raise
            raise ConfigError(
                f"the {self.name} adapter needs a package that is not installed "
                f"({exc.name}): pip install 'parley[{self.extra}]'"
            ) from None
        found: Callable[..., Any] = getattr(module, attr)
        return found


def _load(target: str) -> AdapterSpec:
    module_name, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, AdapterSpec):
        raise TypeError(f"{target} is not an AdapterSpec")
    return spec


@functools.cache
def installed_adapters() -> Mapping[str, AdapterSpec]:
    """Every adapter this installation knows, by name (Parley's own first)."""
    specs: dict[str, AdapterSpec] = {}
    targets = [*BUILTIN, *(ep.value for ep in entry_points(group=ENTRY_POINT_GROUP))]
    for target in dict.fromkeys(targets):
        try:
            spec = _load(target)
        except Exception as exc:  # a broken plugin must not stop the others
            log.warning("adapter entry point %s could not be loaded: %s", target, exc)
            continue
        specs.setdefault(spec.name, spec)
    return specs


def adapter_spec(name: str) -> AdapterSpec:
    specs = installed_adapters()
    if name not in specs:
        raise ConfigError(f"unknown adapter {name!r}; installed adapters: {', '.join(specs)}")
    return specs[name]
