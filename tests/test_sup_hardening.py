"""The support channel's rough edges a new user met (prefix sup): text the database cannot
keep refused as one line before anything is written, a database failure never a traceback with
a new key or a prompt in it, secrets too short to sign with refused when the settings load,
`parley doctor` naming an unshared token secret, and the agent API's 409 naming the
conversation as the API does."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.support.sites import normalize_origin
from bot.cli import main
from bot.doctor import run_checks
from bot.errors import ConfigError
from bot.settings import load_settings
from bot.storage import migrate
from tests.ports import free_port
from tests.support_helpers import bearer, new_visitor, support_worker

PROMPT = "You are the helper of Shop, whose discount code is SHOP-4242."
LONG_ENOUGH = "s" * 32


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    for name in ("PARLEY_DATABASE__URL", "PARLEY_REDIS__URL", "PARLEY_SUPPORT__TOKEN_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no config/parley.toml here
    return tmp_path


@pytest.fixture
def pg(home: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`parley` on a fresh, migrated PostgreSQL database, with a site named shop."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", postgres_url)
    assert main(["db", "upgrade"]) == 0
    assert main(["support", "site", "add", "shop", "--origin", "https://shop.example"]) == 0
    yield postgres_url


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], status: int = 2) -> str:
    """The one line `parley` printed, having exited with `status`."""
    capsys.readouterr()
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert not out and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "pk_" not in err and "SHOP-4242" not in err, err
    return err.strip()


def _listed(capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["support", "site", "list"]) == 0
    return capsys.readouterr().out


def _sites(listed: str) -> set[str]:
    """The site names in `parley support site list`: the first word of each unindented line.

    (A random public key may hold any name's letters, so a name is never looked for in the
    whole listing.)
    """
    return {line.split()[0] for line in listed.splitlines() if line and not line[0].isspace()}


def _file(home: Path, content: bytes) -> str:
    path = home / "prompt.txt"
    path.write_bytes(content)
    return str(path)


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command",
    [["add", "s7", "--origin", "https://a.example"], ["update", "shop"]],
    ids=["add", "update"],
)
def test_sup_a_prompt_file_with_nul_is_refused_before_any_write(
    pg: str, home: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = _file(home, f"{PROMPT}\n\x00 and more\n".encode())
    err = _refused(["support", "site", *command, "--prompt-file", prompt], capsys)
    assert err == (
        f"parley: error: --prompt-file {prompt}: control character U+0000 at line 2, column 1 "
        "cannot be stored; only tabs and line breaks may be in it"
    )
    listed = _listed(capsys)
    assert "s7" not in _sites(listed) and "prompt: default" in listed


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("content", "says"),
    [
        (PROMPT.encode("latin-1") + b"\xe9t\xe9", f"not UTF-8 text (at byte {len(PROMPT)})"),
        (b"Be brief.\x1b[31m", "control character U+001B at line 1, column 10 cannot be"),
        ("Be \u0085brief.".encode(), "control character U+0085 at line 1, column 4 cannot be"),
    ],
    ids=["latin-1", "escape", "c1"],
)
def test_sup_a_prompt_file_that_cannot_be_kept_is_one_line_naming_the_option(
    pg: str, home: Path, content: bytes, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = _file(home, content)
    err = _refused(["support", "site", "update", "shop", "--prompt-file", prompt], capsys)
    assert err.startswith(f"parley: error: --prompt-file {prompt}: {says}"), err
    assert "prompt: default" in _listed(capsys)


@pytest.mark.postgres
def test_sup_tabs_and_line_breaks_stay_in_a_prompt(
    pg: str, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = _file(home, "\ufeffRules:\r\n\t1. Be brief.\r\n\t2. Be kind.\n".encode())
    assert main(["support", "site", "update", "shop", "--prompt-file", prompt]) == 0
    assert "prompt: own" in _listed(capsys)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["site", "update", "shop", "--collection", "a\x00b"],
         "--collection: control character U+0000 at character 2 cannot be stored"),
        (["site", "update", "shop", "--collection", "x" * 256],
         "--collection: at most 255 characters"),
        (["site", "add", "s8", "--origin", "https://a.example", "--collection", "a\x07"],
         "--collection: control character U+0007 at character 2 cannot be stored"),
        (["site", "update", "shop", "--collection", "\udcff"],  # argv bytes that are not UTF-8
         "--collection: not UTF-8 text at character 1"),
        (["site", "update", "shop\x00", "--collection", "x"],
         "site name: control character U+0000 at character 5 cannot be stored"),
        (["site", "remove", "shop\udcff"], "site name: not UTF-8 text at character 5"),
        (["key", "add", "shop\x00"], "site: control character U+0000 at character 5"),
        (["key", "revoke", "key_\x00"], "key id: control character U+0000 at character 5"),
        (["site", "add", "shop\n", "--origin", "https://a.example"], "site name 'shop\\n':"),
        (["site", "add", "s8", "--origin", "https://a\x00.example"], "not an origin"),
        (["site", "add", "s8", "--origin", "https://*.shop.example"],
         "a browser sends its page's own origin, never a pattern"),
        (["site", "add", "s8", "--origin", "https://sh!op.example"], "not an origin"),
        (["site", "add", "s8", "--origin", "https://sh%6fp.example"], "not an origin"),
        (["site", "add", "s8", "--origin", "https://a.example", "--language", "en\n"],
         "not a language tag: 'en\\n'"),
        # The length, not the letters (they were said to be wrong): a new user's trial.
        (["site", "add", "s" * 65, "--origin", "https://a.example"],
         "65 characters; at most 64"),
    ],
)  # fmt: skip
def test_sup_names_and_collections_the_database_cannot_keep_are_refused(
    pg: str, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(["support", *argv], capsys)
    assert says in err, err
    listed = _listed(capsys)
    assert "s8" not in _sites(listed) and "collection: (default)" in listed


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command", [["add", "s9", "--origin", "https://a.example"], ["update", "shop"]]
)
def test_sup_a_database_error_is_one_line_without_the_key_or_prompt(
    pg: str, home: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The database refusing a write (here a constraint its operator added) is exit status 3
    and the driver's error class: SQLAlchemy's text would show the new public key and the
    prompt, and the traceback around it eighty lines."""
    _sql(pg, "ALTER TABLE support_sites ADD CONSTRAINT no_codes "
             "CHECK (system_prompt NOT LIKE '%SHOP-4242%')")  # fmt: skip
    prompt = _file(home, PROMPT.encode())
    err = _refused(["support", "site", *command, "--prompt-file", prompt], capsys, status=3)
    assert err == "parley: error: database error: CheckViolationError"
    listed = _listed(capsys)
    assert "s9" not in _sites(listed) and "prompt: default" in listed


def _sql(url: str, sql: str) -> None:
    """Run `sql` on the database at `url`, as its operator would with psql."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a", False),
        ("q" * 31, False),
        ("", False),
        ("q" * 32, True),
        (" " * 32, False),  # blanks at its ends are not counted
        (" " * 8 + "q" * 31 + " " * 8, False),
    ],
)
def test_sup_a_token_secret_shorter_than_32_characters_is_refused(
    home: Path,
    value: str,
    ok: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PARLEY_SUPPORT__TOKEN_SECRET", value)
    if ok:
        assert main(["config"]) == 0
        return
    err = _refused(["config"], capsys)
    assert err == (
        "parley: error: invalid setting PARLEY_SUPPORT__TOKEN_SECRET: must be at least 32 "
        "characters (make one with `openssl rand -base64 48`)"
    )


def test_sup_a_token_secret_in_the_config_file_is_checked_too(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = home / "parley.toml"
    config.write_text('[support]\ntoken_secret = "short-but-secret"\n', encoding="utf-8")
    err = _refused(["--config", str(config), "config"], capsys)
    assert "parley.toml [support] token_secret: must be at least 32 characters" in err
    assert "short-but-secret" not in err


def test_sup_the_test_suites_token_secrets_pass_the_rule() -> None:
    from tests.support_helpers import SECRET

    load_settings(None, support={"token_secret": SECRET})


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PARLEY_SUPPORT__WEBHOOK", '{"url": "https://x.example/h", "secret": "hunter2"}',
         "PARLEY_SUPPORT__WEBHOOK: the secret must be at least 16 characters"),
        ("PARLEY_SUPPORT__WEBHOOKS",
         '{"shop": {"url": "https://x.example/h", "secret": "hunter2"}}',
         "PARLEY_SUPPORT__WEBHOOKS: the secret of 'shop' must be at least 16 characters"),
        ("PARLEY_SUPPORT__WEBHOOK",
         '{"url": "https://x.example/h", "secret": "hunter2' + " " * 16 + '"}',
         "PARLEY_SUPPORT__WEBHOOK: the secret must be at least 16 characters"),
        ("PARLEY_SUPPORT__WEBHOOKS",
         '{"shop": {"url": "https://x.example/h", "secret": "' + " " * 16 + 'hunter2"}}',
         "PARLEY_SUPPORT__WEBHOOKS: the secret of 'shop' must be at least 16 characters"),
    ],
    ids=["webhook", "webhooks", "webhook-blanks", "webhooks-blanks"],
)  # fmt: skip
def test_sup_a_short_webhook_secret_is_named_in_characters(
    home: Path,
    variable: str,
    value: str,
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, value)
    err = _refused(["config"], capsys)
    assert err == f"parley: error: invalid setting {says}"
    assert "hunter2" not in err and "items" not in err


async def _doctor(**overrides: object) -> tuple[str, list[str]]:
    # A free port: doctor checks that the support API's could be listened on (8080 may be
    # taken on the machine running the tests).
    settings = load_settings(None, adapters=["support"], http={"port": free_port()}, **overrides)
    out = io.StringIO()
    problems = await run_checks(settings, out=out)
    (line,) = [x for x in out.getvalue().splitlines() if "adapter support" in x]
    return line, problems


@pytest.mark.postgres
async def test_sup_doctor_calls_an_unshared_token_secret_a_problem_on_postgresql(
    home: Path, postgres_url: str
) -> None:
    line, problems = await _doctor(database={"url": postgres_url})
    assert line.startswith("[PROBLEM] adapter support: support.token_secret is not set: with "
                           "PostgreSQL several workers may serve"), line  # fmt: skip
    assert "PARLEY_SUPPORT__TOKEN_SECRET" in line and line.removeprefix("[PROBLEM] ") in problems
    line, _ = await _doctor(database={"url": postgres_url}, support={"token_secret": LONG_ENOUGH})
    assert line == "[ok] adapter support: visitor tokens signed with support.token_secret"
    assert LONG_ENOUGH not in line


@pytest.mark.redis
async def test_sup_doctor_calls_an_unshared_token_secret_a_problem_with_redis(
    home: Path, redis_url: str
) -> None:
    line, problems = await _doctor(
        database={"url": f"sqlite+aiosqlite:///{home}/p.db"}, redis={"url": redis_url}
    )
    assert line.startswith("[PROBLEM] adapter support: support.token_secret is not set: with "
                           "Redis several workers"), line  # fmt: skip
    assert problems


async def test_sup_doctor_notes_the_generated_secret_of_a_single_worker(home: Path) -> None:
    line, problems = await _doctor(database={"url": f"sqlite+aiosqlite:///{home}/p.db"})
    assert line.startswith("[ok] adapter support: visitor tokens signed with a secret generated")
    assert "set support.token_secret before running several" in line and not problems


@pytest.mark.postgres
async def test_sup_doctor_names_a_webhook_site_no_site_is(pg: str) -> None:
    """A misspelt site in support.webhooks passed: that site's visitors asking for a person
    were then told nobody could be reached."""
    hook = {"url": "https://desk.example/parley", "secret": "s" * 24}
    given = {"token_secret": LONG_ENOUGH}
    line, problems = await _doctor(
        database={"url": pg}, support={**given, "webhooks": {"shpo": hook}}
    )
    assert line.startswith("[PROBLEM] adapter support: support.webhooks names 'shpo', which no "
                           "site is"), line  # fmt: skip
    assert problems
    line, problems = await _doctor(
        database={"url": pg}, support={**given, "webhooks": {"shop": hook}}
    )
    assert line == ("[ok] adapter support: support.webhooks reach 1 site(s); visitor tokens "
                    "signed with support.token_secret"), line  # fmt: skip
    assert not problems


async def test_sup_the_agent_apis_conflict_names_the_conversation_as_the_api_does(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parley.db"
    async with support_worker(url, redis_url=None) as worker:
        site = await worker.add_site("shop")
        _, secret = await worker.adapter.sites.add_key("shop")
        await worker.adapter.directory.refresh(force=True)
        async with worker.client() as client:
            visitor = await new_visitor(client, site)
            who = visitor["visitor_id"]
            wrote = await client.post(
                "/v1/messages", headers=bearer(visitor["token"]), json={"text": "hello"}
            )
            assert wrote.status_code == 202, wrote.text
            reply = await client.post(
                "/v1/handoff/messages",
                headers=bearer(secret),
                json={"visitor_id": who, "agent": "Dana", "text": "Hi"},
            )
            status = await client.get(
                "/v1/handoff", headers=bearer(secret), params={"visitor_id": who}
            )
    assert reply.status_code == 409, reply.text
    error = reply.json()["error"]
    assert error["code"] == "conflict"
    assert status.json()["conversation_id"] == f"shop:{who}"
    assert f"conversation shop:{who} " in error["message"], error
    assert "support:" not in error["message"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("https://Shop.example:443/", "https://shop.example"),
        ("http://shop.example:80", "http://shop.example"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_sup_an_origin_is_kept_as_a_browser_sends_it(given: str, stored: str) -> None:
    """A browser's Origin has no default port and an international name in its ASCII form:
    an origin written otherwise was stored as written and never matched."""
    assert normalize_origin(given) == stored


@pytest.mark.parametrize(
    "origin", ["https://a@b.example", "https://shop.example:99999", "https://", "https://:443"]
)
def test_sup_an_origin_no_browser_can_send_is_refused(origin: str) -> None:
    with pytest.raises(ConfigError, match=r"^not an origin \(scheme://host\[:port\]\): "):
        normalize_origin(origin)


def test_sup_origins_stored_by_an_earlier_parley_are_read_as_browsers_send_them() -> None:
    from types import SimpleNamespace

    from adapters.support import sites

    row = SimpleNamespace(
        id=1, name="shop", public_key="pk_x", languages="[]", system_prompt="", collection="",
        origins='["https://shop.example:443", "https://shop.example", "https://a@b.example"]',
    )  # fmt: skip
    assert sites._site(row).origins == ("https://shop.example", "https://a@b.example")


@pytest.mark.postgres
async def test_a_worker_on_a_shared_database_without_a_token_secret_says_so(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`parley doctor` flagged it, `parley run` said nothing: a second worker on another
    machine then refused every visitor token of the first (a helper's walkthrough)."""
    await migrate.upgrade(postgres_url)
    with caplog.at_level(logging.WARNING, logger="adapters.support.adapter"):
        async with support_worker(postgres_url, redis_url=None, token_secret=None):
            pass
    said = [r.getMessage() for r in caplog.records if r.name == "adapters.support.adapter"]
    assert any(line.startswith("support.token_secret is not set") for line in said), said


@pytest.mark.postgres
def test_sup_a_language_named_twice_is_kept_once(
    pg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each --language once, in the order given (300 times `en` listed `en` 300 times)."""
    languages = ["--language", "en", "--language", "de", "--language", "en"]
    origin = ["--origin", "https://l.example"]
    assert main(["support", "site", "add", "langs", *origin, *languages]) == 0
    assert main(["support", "site", "update", "shop", *languages, "--language", "de"]) == 0
    listed = _listed(capsys)
    assert listed.count("languages: en, de;") == 2, listed
