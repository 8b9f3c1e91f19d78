"""`parley support ...` on the embedded database: sites and keys made, listed, revoked; bad
input is one line and exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path))
    monkeypatch.delenv("PARLEY_DATABASE__URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no config/parley.toml here
    return tmp_path


def test_sites_and_keys_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("You are Shop's helper.\n", encoding="utf-8")
    add = ["support", "site", "add", "shop", "--origin", "https://Shop.example/",
           "--prompt-file", str(prompt), "--language", "en", "--collection", "shop"]  # fmt: skip
    assert main(add) == 0
    added = capsys.readouterr().out
    public_key = added.split("public key ")[1].split()[0]
    assert public_key.startswith("pk_") and f'data-site-key="{public_key}"' in added
    assert main(["support", "key", "add", "shop"]) == 0
    made = capsys.readouterr().out
    key_id = made.split()[2]
    secret = made.splitlines()[1].strip()
    assert key_id.startswith("key_") and secret.startswith("sk_")
    assert main(["support", "site", "list"]) == 0
    listed = capsys.readouterr().out
    assert "shop" in listed and "https://shop.example" in listed and "collection: shop" in listed
    assert f"key {key_id}  live" in listed and secret not in listed
    assert main(["support", "key", "revoke", key_id]) == 0
    capsys.readouterr()
    assert main(["support", "site", "list"]) == 0
    assert f"key {key_id}  revoked" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["support", "site", "add", "Bad Name", "--origin", "https://a.example"], "site name"),
        (["support", "site", "add", "ok", "--origin", "a.example"], "not an origin"),
        (["support", "site", "add", "ok", "--origin", "https://a.example", "--language", "x1"],
         "not a language tag"),
        (["support", "key", "add", "nosuchsite"], "no site named"),
        (["support", "key", "revoke", "key_nope"], "no live key"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_a_schema_out_of_date_is_said_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley support ...` on a database not migrated (auto_migrate off): the schema check's
    own line ("run `parley db upgrade`"), not "database error: SchemaOutOfDate" (review rev5
    of adfb82d: cmd_support's StorageError catch took in ensure_schema's errors too)."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    monkeypatch.setenv("PARLEY_DATABASE__AUTO_MIGRATE", "false")
    assert main(["support", "site", "list"]) != 0
    err = capsys.readouterr().err
    assert "parley db upgrade" in err, err
