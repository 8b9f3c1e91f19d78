"""docs/adapters.md's complete example runs as written: its spec and adapter are taken from
the page, and the adapter answers a message through the core on Parley's HTTP host."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adapters.kit.runner import host_for
from bot.app import Parley
from bot.settings import load_settings
from tests.doubles import ScriptedBackend

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adapters.md"


def _blocks() -> dict[str, str]:
    """The page's Python blocks that start with a `# path` line, by path."""
    found = {}
    for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S):
        first = block.splitlines()[0]
        if first.startswith("# my_adapter/"):
            found[first[2:]] = block
    return found


@pytest.fixture
def example_package(tmp_path: Path) -> Iterator[None]:
    package = tmp_path / "my_adapter"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for path, code in _blocks().items():
        (tmp_path / path).write_text(code)
    sys.path.insert(0, str(tmp_path))
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("my_adapter")]:
            del sys.modules[name]


def test_the_page_has_the_spec_and_the_adapter() -> None:
    assert set(_blocks()) == {"my_adapter/spec.py", "my_adapter/adapter.py"}


async def test_the_example_adapter_answers_through_the_core(
    tmp_path: Path, example_package: None
) -> None:
    spec = importlib.import_module("my_adapter.spec").SPEC
    settings = load_settings(None, database={"url": f"sqlite+aiosqlite:///{tmp_path}/p.db"})
    async with Parley(settings, backend=ScriptedBackend()) as app:
        host = host_for(app)
        section = spec.settings(access={"blocked_users": ["mallory"]})
        adapter = spec.load_factory()(host, section)
        async with adapter:
            app.intake.register(spec.name, adapter, section.access)
            transport = httpx.ASGITransport(app=host.http.app())
            async with httpx.AsyncClient(transport=transport, base_url="http://parley") as client:
                sent = {"chat": "c1", "user": "ada", "text": "hello", "id": "m1"}
                assert (await client.post("/example/messages", json=sent)).status_code == 202
                await app.intake.idle()
                answers = await client.get("/example/answers/c1")
                assert answers.json() == ["echo: hello"]
                refused = {"chat": "c2", "user": "mallory", "text": "hi", "id": "m2"}
                assert (await client.post("/example/messages", json=refused)).status_code == 403
                await app.intake.idle()
                assert (await client.get("/healthz")).status_code == 200
