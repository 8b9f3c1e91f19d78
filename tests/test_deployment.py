"""The container deployment, checked statically (no container engine runs in CI): every
PARLEY_* variable in compose.yaml and the Dockerfile is a setting that loads, the image runs
`parley run` as a non-root user with a health check, and the secrets it needs are documented.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from bot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
# What an operator puts in .env (docs/deployment.md): stand-ins of the right shape.
SECRETS = {
    "POSTGRES_PASSWORD": "pw-from-the-environment",
    "VLLM_API_KEY": "key-from-the-environment",
    "TELEGRAM_TOKEN": "123456:token-from-the-environment",
    "TELEGRAM_WEBHOOK_SECRET": "webhook-secret-from-the-environment",
    "PUBLIC_HOST": "bot.example.com",
}
# Read by bot.settings before the settings exist (where the data and the config file are).
PROCESS_VARIABLES = frozenset({"PARLEY_HOME", "PARLEY_CONFIG"})
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, ${NAME}, $NAME, ${NAME:-default}, ${NAME:?error}."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if operator and operator.endswith("?"):
            raise AssertionError(f"compose.yaml needs {name}, which the test does not set")
        return argument if operator and operator.endswith("-") else ""

    return _VARIABLE.sub(one, value)


def resolved(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolved(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolved(item, env) for key, item in node.items()}
    return node


def compose() -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(raw, dict)
    return dict(resolved(raw, SECRETS))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile():
        if instruction == "ENV":
            env |= dict(item.split("=", 1) for item in shlex.split(arguments))
    return env


def parley_services() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in compose()["services"].items():
        if service.get("image", "").startswith("parley:") or service.get("build") == ".":
            yield name, service


def setting_at(settings: BaseModel, variable: str) -> Any:
    node: Any = settings
    for part in variable.removeprefix("PARLEY_").lower().split("__"):
        assert isinstance(node, BaseModel), f"{variable}: {part} is not a section"
        assert part in type(node).model_fields, f"{variable} is not a setting"
        node = getattr(node, part)
    return node


def as_written(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize("service", [name for name, _ in parley_services()])
def test_every_parley_variable_is_a_setting_that_loads(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("PARLEY_")]:
        monkeypatch.delenv(name)
    spec = dict(parley_services())[service]
    variables = {**image_env(), **environment(spec)}
    parley = {
        k: v for k, v in variables.items() if k.startswith("PARLEY_") and k not in PROCESS_VARIABLES
    }
    assert parley, f"{service} sets no PARLEY_* variable"
    for name, value in parley.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT)  # the image's working directory holds config/ as the repo does

    settings = load_settings()

    for name, value in parley.items():
        assert as_written(setting_at(settings, name)) == value, name


def test_the_workers_are_production_shaped() -> None:
    workers = {name: s for name, s in parley_services() if "command" not in s}
    assert len(workers) == 2
    for worker in workers.values():
        env = environment(worker)
        assert env["PARLEY_DATABASE__URL"].startswith("postgresql+asyncpg://")
        assert SECRETS["POSTGRES_PASSWORD"] in env["PARLEY_DATABASE__URL"]
        assert env["PARLEY_REDIS__URL"].startswith("redis://")
        assert env["PARLEY_LOG_FORMAT"] == "json"
        assert env["PARLEY_DATABASE__AUTO_MIGRATE"] == "false"
        assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    migrate = compose()["services"]["migrate"]
    assert migrate["command"] == ["parley", "db", "upgrade"]
    profiles = {p for s in compose()["services"].values() for p in s.get("profiles", [])}
    assert profiles == {"gpu", "cpu"}


def test_the_image_runs_parley_run_as_a_non_root_user_with_a_health_check() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    cmd = [json.loads(args) for instruction, args in steps if instruction == "CMD"]
    # The same command line as the tests' `parley run` (tests/processes.py runs its module).
    assert cmd[-1] == ["parley", "run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["parley"] == "bot.cli:main"
    users = [args for instruction, args in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [i for i, _ in steps].index("USER") < [i for i, _ in steps].index("CMD")
    (health,) = [args for instruction, args in steps if instruction == "HEALTHCHECK"]
    assert health.split("CMD", 1)[1].strip() == '["python", "-m", "bot.health"]'
    installs = [
        args for instruction, args in steps if instruction == "RUN" and "pip install" in args
    ]
    assert any("[postgres,redis,telegram]" in args for args in installs)
    for instruction, args in steps:
        if instruction == "COPY":
            assert (ROOT / args.split()[0]).exists(), f"COPY {args}: not in the repository"


def test_every_secret_compose_needs_is_documented() -> None:
    needed = set(re.findall(r"\$\{(\w+):\?", yaml.safe_dump(yaml.safe_load(COMPOSE.read_text()))))
    assert needed == set(SECRETS)
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for name in needed:
        assert f"`{name}`" in guide, f"docs/deployment.md does not explain {name}"


def test_settings_has_no_section_the_compose_file_misspells() -> None:
    # A misspelt section (PARLEY_REDDIS__URL) is silently ignored by the environment source;
    # setting_at() above is what catches it. Guard that check itself.
    with pytest.raises(AssertionError, match="is not a setting"):
        setting_at(Settings(), "PARLEY_REDDIS__URL")
