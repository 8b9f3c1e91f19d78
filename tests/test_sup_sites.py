"""`parley support site update` / `remove`: a site changed or retired without SQL by hand, with
the same one-line errors as `add`, and running workers following the change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.support.sites import Site, SiteStore
from bot.cli import main
from bot.storage.database import create_engine
from bot.storage.models import MessageRow
from bot.types import ConversationKey
from tests.doubles import ScriptedBackend
from tests.support_helpers import (
    OTHER_ORIGIN,
    Worker,
    bearer,
    last_user_text,
    new_visitor,
    support_worker,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/parley.toml here
    return tmp_path


def _out(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_sup_a_site_is_updated_and_removed_from_the_command_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    added = _out(["support", "site", "add", "shop", "--origin", "https://shop.example"], capsys)
    public_key = added.split("public key ")[1].split()[0]
    key_id = _out(["support", "key", "add", "shop"], capsys).split()[2]
    prompt = home / "prompt.txt"
    prompt.write_text("You are Shop's helper.\n", encoding="utf-8")
    update = ["support", "site", "update", "shop", "--origin", "https://WWW.shop.example/",
              "--prompt-file", str(prompt), "--language", "de", "--language", "en",
              "--collection", "shop"]  # fmt: skip
    assert "origins: https://shop.example, https://www.shop.example" in _out(update, capsys)
    listed = _out(["support", "site", "list"], capsys)
    assert f"shop  {public_key}  origins: https://shop.example, https://www.shop.example" in listed
    assert "languages: de, en; collection: shop; prompt: own" in listed
    remove = ["support", "site", "update", "shop", "--remove-origin", "https://shop.example"]
    assert "origins: https://www.shop.example;" not in _out(remove, capsys)
    assert "origins: https://www.shop.example\n" in _out(["support", "site", "list"], capsys)
    removed = _out(["support", "site", "remove", "shop"], capsys)
    assert f"removed site shop and its keys {key_id}" in removed
    assert "no sites" in _out(["support", "site", "list"], capsys)
    # The name is free again: a new site, with a new public key.
    again = _out(["support", "site", "add", "shop", "--origin", "https://shop.example"], capsys)
    assert public_key not in again


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["update", "nosuch", "--collection", "x"], "no site named 'nosuch'"),
        (["update", "shop"], "nothing to change"),
        (["update", "shop", "--origin", "shop.example"], "not an origin"),
        (["update", "shop", "--language", "x1"], "not a language tag"),
        (["update", "shop", "--remove-origin", "https://other.example"], "has no origin"),
        (["update", "shop", "--remove-origin", "https://shop.example"], "no origin left"),
        (["update", "shop", "--prompt-file", "/nonexistent/prompt.txt"], "--prompt-file"),
        (["remove", "nosuch"], "no site named 'nosuch'"),
    ],
)
def test_sup_bad_updates_are_one_line_and_status_2(
    home: Path, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _out(["support", "site", "add", "shop", "--origin", "https://shop.example"], capsys)
    assert main(["support", "site", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    listed = _out(["support", "site", "list"], capsys)
    assert "origins: https://shop.example\n" in listed  # nothing half done


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    backend = ScriptedBackend(lambda r: f"You said {last_user_text(r)}")
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    async with support_worker(url, redis_url=None, backend=backend) as w:
        yield w


@pytest.fixture
async def engine(worker: Worker) -> AsyncIterator[AsyncEngine]:
    """The operator's own connection, as `parley support` has on another machine."""
    engine = create_engine(worker.app.settings.database.url.get_secret_value())
    yield engine
    await engine.dispose()


@pytest.fixture
def operator(engine: AsyncEngine) -> SiteStore:
    return SiteStore(engine)


async def test_sup_a_worker_follows_an_update_made_elsewhere(
    worker: Worker, operator: SiteStore
) -> None:
    site = await worker.add_site("shop")
    async with worker.client(origin=OTHER_ORIGIN) as other:
        visitor = await other.post("/v1/visitors", headers={"X-Parley-Site-Key": site.public_key})
        assert visitor.status_code == 403
        await operator.update_site("shop", add_origins=[OTHER_ORIGIN], system_prompt="Be brief.")
        await worker.adapter.directory.refresh(force=True)  # what REFRESH_S brings on its own
        assert (await new_visitor(other, site))["token"]
    assert worker.adapter.system_prompt_for(ConversationKey("support", "shop:v_1")) == "Be brief."


async def test_sup_the_refresh_loop_brings_a_new_prompt_within_its_period(
    worker: Worker, operator: SiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core reads a site's prompt and collection from the directory without I/O; the
    adapter's loop must reload them every period, even when a request reloaded the directory
    a moment before (its own 10 s age check then skipped the loop's reload: up to 20 s)."""
    await worker.add_site("shop")
    store = worker.adapter.sites
    read = store.sites
    loads = 0
    loaded = asyncio.Condition()

    async def counted() -> list[Site]:
        nonlocal loads
        sites = await read()
        async with loaded:
            loads += 1
            loaded.notify_all()
        return sites

    monkeypatch.setattr(store, "sites", counted)
    monkeypatch.setattr("adapters.support.adapter.REFRESH_S", 0.01)
    key = ConversationKey("support", "shop:v_1")
    await operator.update_site("shop", system_prompt="Be brief.", collection="shop")
    refreshing = asyncio.create_task(worker.adapter.run())
    try:
        async with asyncio.timeout(5), loaded:  # far above the patched period: not blocked
            await loaded.wait_for(lambda: loads >= 2)  # the first reload has finished
    finally:
        refreshing.cancel()
        await asyncio.gather(refreshing, return_exceptions=True)
    assert worker.adapter.collection_for(key) == "shop"
    assert worker.adapter.system_prompt_for(key) == "Be brief."


async def test_sup_a_removed_site_stops_working_and_its_history_stays(
    worker: Worker, operator: SiteStore, engine: AsyncEngine
) -> None:
    site = await worker.add_site("shop")
    key_id, secret = await operator.add_key("shop")
    await worker.adapter.directory.refresh(force=True)
    async with worker.client() as client:
        visitor = await new_visitor(client, site)
        sent = await client.post(
            "/v1/messages", json={"text": "hello"}, headers=bearer(visitor["token"])
        )
        assert sent.status_code == 202
        await worker.adapter.idle()
        assert await operator.remove_site("shop") == [key_id]
        await worker.adapter.directory.refresh(force=True)  # what REFRESH_S brings on its own
        refused = [
            await client.post("/v1/visitors", headers={"X-Parley-Site-Key": site.public_key}),
            await client.get("/v1/history", headers=bearer(visitor["token"])),
            await client.get(
                "/v1/history", params={"visitor_id": visitor["visitor_id"]}, headers=bearer(secret)
            ),
        ]
    assert [r.status_code for r in refused] == [401, 401, 401]
    assert [r.json()["error"]["code"] for r in refused] == ["unauthorized"] * 3
    assert await operator.keys() == []
    async with engine.connect() as conn:
        texts = (await conn.scalars(sa.select(MessageRow.content))).all()
    assert "hello" in texts and any("You said hello" in t for t in texts)


async def test_sup_a_removed_sites_tokens_do_not_work_on_the_site_that_gets_its_id(
    worker: Worker, operator: SiteStore
) -> None:
    """SQLite gives a removed site's id to the next site added: a visitor token of the old
    site names it by its key too, so it is not the new site's."""
    old = await worker.add_site("shop")
    async with worker.client() as client:
        visitor = await new_visitor(client, old)
        await operator.remove_site("shop")
        new = await worker.add_site("outlet")
        assert new.id == old.id  # the id was given again
        await worker.adapter.directory.refresh(force=True)
        fresh = await new_visitor(client, new)
        used = await client.get("/v1/history", headers=bearer(visitor["token"]))
        renewed = await client.post(
            "/v1/visitors",
            json={"visitor_token": visitor["token"]},
            headers={"X-Parley-Site-Key": new.public_key},
        )
        own = await client.get("/v1/history", headers=bearer(fresh["token"]))
    assert used.status_code == 401
    assert renewed.status_code == 403
    assert own.status_code == 200  # the new site's own visitors are served
