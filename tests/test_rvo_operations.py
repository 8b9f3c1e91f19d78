"""Hostile review of operating Parley: the `parley` command run as an operator runs it (a
process of its own, bad arguments and settings), secrets in what it prints, and `/metrics`
while the database does not answer."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.metrics import Metrics
from bot.settings import load_settings
from bot.storage import migrate
from bot.storage.database import create_engine
from bot.storage.sql_store import SqlStore
from tests.ports import free_port
from tests.processes import parley_env

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "S3cret-Pw"
# Prometheus' default scrape timeout: a scrape that takes longer loses every metric.
SCRAPE_TIMEOUT_S = 10.0


def _parley(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`parley ARGS` in a process of its own with only the given PARLEY_* variables, an
    SQLite file in tmp_path and no sample knowledge base."""
    clean = parley_env(tmp_path, env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=tmp_path,
        env=clean,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("parley: error: ") and done.stderr.count("\n") == 1
    return done.stderr


@pytest.mark.parametrize(
    "args",
    [("db", "upgrade", "no-such-revision"), ("db", "downgrade", "-5", "--yes")],
    ids=["unknown", "too-far-back"],
)
def test_rvo_a_revision_alembic_cannot_reach_is_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    err = _one_line(_parley(tmp_path, *args), 2)
    assert f"db {args[1]}: " in err and args[2] in err
    # and which revisions there are: Alembic's line alone named none that would do
    assert f"revisions run from {migrate.first()} to {migrate.head()}" in err
    assert "`parley db current`" in err


@pytest.mark.parametrize(
    ("adapter", "variable"),
    [
        ("discord", "PARLEY_DISCORD__TOKEN"),
        ("telegram", "PARLEY_TELEGRAM__TOKEN"),
        ("chatwoot", "PARLEY_CHATWOOT__API_ACCESS_TOKEN"),
    ],
)
def test_run_refuses_an_adapter_without_its_token_before_it_opens_anything(
    tmp_path: Path, adapter: str, variable: str
) -> None:
    """An empty token used to create and migrate the database and load the sample before
    the adapter refused it: a data folder left behind by a process that never ran."""
    env = {
        "PARLEY_ADAPTERS": f'["console", "{adapter}"]',
        "PARLEY_CHATWOOT__URL": "https://chatwoot.example",
        variable: "",
    }
    err = _one_line(_parley(tmp_path, "run", env=env), 2)
    assert variable in err and f"required when the {adapter} adapter runs" in err
    assert "PARLEY_CHATWOOT__URL" not in err  # it is set: named all the same before
    assert not (tmp_path / "parley.db").exists() and not (tmp_path / "home").exists()


def test_a_downgrade_needs_yes_and_without_it_changes_nothing(tmp_path: Path) -> None:
    """`db downgrade base` dropped every table with its data after one line. Without --yes
    it now says what it would remove and touches nothing; with it, it steps back."""
    assert _parley(tmp_path, "db", "upgrade").returncode == 0
    head = _parley(tmp_path, "db", "current").stdout
    for args, says in (
        (("db", "downgrade"), "going back one revision"),
        (("db", "downgrade", "base"), "going back to base"),
    ):
        err = _one_line(_parley(tmp_path, *args), 2)
        assert "--yes" in err and "with their data" in err and says in err
        assert 'docs/database.md, "Backups"' in err  # how to back up, for a first-timer
        assert _parley(tmp_path, "db", "current").stdout == head
    done = _parley(tmp_path, "db", "downgrade", "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout != head and "schema revision: " in done.stdout


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PARLEY_BACKEND__BASE_URL": "localhost:8000"}, "PARLEY_BACKEND__BASE_URL"),
        ({"PARLEY_BACKEND__BASE_URL": "vllm"}, "PARLEY_BACKEND__BASE_URL"),
        ({"PARLEY_BACKEND__BASE_URL": "http://vllm:port"}, "PARLEY_BACKEND__BASE_URL"),
        (
            {"PARLEY_KNOWLEDGE__EMBEDDING_BASE_URL": "embedder:8000/v1"},
            "PARLEY_KNOWLEDGE__EMBEDDING_BASE_URL",
        ),
    ],
)
def test_rvo_a_server_url_without_http_is_refused_when_settings_load(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    """Accepted, such a URL made `parley run` wait `backend.startup_wait_s` (120 s) for a
    server it can never reach, then exit 3, the status a process manager restarts on."""
    env = {
        "PARLEY_BACKEND__KIND": "openai",
        "PARLEY_BACKEND__MODEL": "m",
        "PARLEY_BACKEND__BASE_URL": "http://127.0.0.1:8000",
        "PARLEY_KNOWLEDGE__EMBEDDING_MODEL": "e",
        **env,
    }
    err = _one_line(_parley(tmp_path, "config", env=env), 2)
    assert f"{variable}: not an http(s) URL" in err


def test_rvo_a_fallback_url_without_http_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(
        '[backend]\nkind = "openai"\nmodel = "m"\nbase_url = "http://127.0.0.1:8000"\n'
        '[[backend.fallbacks]]\nmodel = "m"\nbase_url = "127.0.0.1:8001"\n'
    )
    err = _one_line(_parley(tmp_path, "--config", str(config), "config"), 2)
    assert "parley.toml [backend.fallbacks] base_url: not an http(s) URL" in err


def test_rvo_a_password_in_a_model_server_url_is_never_printed(tmp_path: Path) -> None:
    """A model server behind a proxy with basic authentication: http://user:password@host.
    The password is a secret like a SecretStr's: not in `parley doctor`, `parley config`, the
    log lines while start-up waits for the server, nor the error line it exits with."""
    env = {
        "PARLEY_BACKEND__KIND": "openai",
        "PARLEY_BACKEND__MODEL": "m",
        "PARLEY_BACKEND__BASE_URL": f"http://parley:{PASSWORD}@127.0.0.1:{free_port()}",
        "PARLEY_BACKEND__STARTUP_WAIT_S": "2",
        "PARLEY_BACKEND__TIMEOUTS__CONNECT_S": "1",
    }
    doctor = _parley(tmp_path, "doctor", env=env)
    assert doctor.returncode == 1 and "[PROBLEM] backend: cannot reach" in doctor.stdout
    config = _parley(tmp_path, "config", env=env)
    assert config.returncode == 0 and '"base_url": "http://parley:***@127.0.0.1:' in config.stdout
    run = _parley(tmp_path, "run", env=env)
    assert run.returncode == 3 and "waiting for the model server" in run.stderr
    assert "parley: error: cannot reach http://parley:***@" in run.stderr
    for done in (doctor, config, run):
        assert PASSWORD not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "variable",
    [
        "PARLEY_BACKEND__API_KEY",
        "PARLEY_KNOWLEDGE__EMBEDDING_API_KEY",
        "PARLEY_BACKEND__FALLBACKS",
        "PARLEY_CHATWOOT__API_ACCESS_TOKEN",
    ],
)
@pytest.mark.parametrize(
    ("key", "said"),
    [
        (f"sk-{PASSWORD}\nX-Injected: 1", "holds a character an HTTP header cannot carry"),
        (f"sk-{PASSWORD}\x01", "holds a character an HTTP header cannot carry"),
        ("sk-Sécret", "holds a character an HTTP header cannot carry"),
        (f"sk-{PASSWORD} ", "begins or ends with a space"),
        (f" sk-{PASSWORD}", "begins or ends with a space"),
    ],
)
def test_a_key_no_http_header_can_carry_is_refused_unquoted(
    tmp_path: Path, variable: str, key: str, said: str
) -> None:
    """A model server's key with a line break (a pasted key, a CRLF file) failed every request
    with httpx's "Illegal header value b'Bearer sk-...'": the key in the log line of every wait
    for the model server and in `parley doctor`'s PROBLEM line. One outside ASCII was a
    UnicodeEncodeError's traceback; Chatwoot's token the same, or "LocalProtocolError". A space
    at the end (a quoted value in a .env file, a pasted key) was the same "Illegal header
    value", key quoted; one at the start went as "Bearer  sk-...", refused by the server."""
    url = f"http://127.0.0.1:{free_port()}"
    value = key
    if variable == "PARLEY_BACKEND__FALLBACKS":
        value = json.dumps([{"model": "other", "base_url": url, "api_key": key}])
    env = {
        "PARLEY_BACKEND__KIND": "openai",
        "PARLEY_BACKEND__MODEL": "m",
        "PARLEY_BACKEND__BASE_URL": url,
        "PARLEY_KNOWLEDGE__EMBEDDING_BASE_URL": url,
        "PARLEY_KNOWLEDGE__EMBEDDING_MODEL": "e",
        variable: value,
    }
    if variable.startswith("PARLEY_CHATWOOT"):
        env |= {
            "PARLEY_ADAPTERS": "chatwoot",
            "PARLEY_CHATWOOT__URL": url,
            "PARLEY_CHATWOOT__WEBHOOK_SECRET": "w" * 24,
        }
    done = _parley(tmp_path, "doctor", env=env)
    err = _one_line(done, 2)
    assert said in err
    assert PASSWORD not in done.stdout + done.stderr and "Sécret" not in err


def test_a_key_with_spaces_is_taken() -> None:
    settings = load_settings(None, backend={"api_key": "two words"})
    assert settings.backend.api_key is not None
    assert settings.backend.api_key.get_secret_value() == "two words"


def test_rvo_a_percent_encoded_password_is_redacted_decoded_too() -> None:
    from bot.logsafety import LogSafetyFilter, secrets_in
    from bot.settings import Settings

    settings = Settings(
        backend={"kind": "openai", "model": "m", "base_url": "http://u:Pa%40ss-word@h:8000"}
    )
    safety = LogSafetyFilter(secrets_in(settings))
    assert safety.redact("auth as u / Pa@ss-word failed") == "auth as u / *** failed"


@pytest.mark.parametrize(
    "variable", ["PARLEY_DATABSE__URL", "PARLEY_REDDIS__URL", "PARLEY_LOGLEVEL", "PARLEY_ADAPTER"]
)
def test_rvo_a_misspelt_variable_is_refused_naming_it(tmp_path: Path, variable: str) -> None:
    """Skipped by the environment source, PARLEY_DATABSE__URL left every worker on its own
    SQLite file, each answering from a history of its own, without a word."""
    value = "postgresql+asyncpg://parley:pw@db/parley"
    err = _one_line(_parley(tmp_path, "config", env={variable: value}), 2)
    assert f"{variable}: unknown setting" in err


def test_rvo_parleys_own_variables_that_are_not_settings_are_accepted(tmp_path: Path) -> None:
    env = {"PARLEY_CONFIG": str(ROOT / "config" / "parley.toml"), "PARLEY_TEST_REDIS_URL": "x"}
    done = _parley(tmp_path, "config", env=env)
    assert done.returncode == 0, done.stderr


def test_rvo_an_unknown_key_in_dotenv_is_named_as_written(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PARLEY_LOGLEVEL=DEBUG\n")
    err = _one_line(_parley(tmp_path, "config"), 2)
    assert err == "parley: error: invalid setting .env PARLEY_LOGLEVEL: unknown setting\n"


def test_rvo_a_settings_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """A system prompt with an accent, saved as Latin-1 by an editor: a traceback, status 1."""
    prompt = '[conversation]\nsystem_prompt = "Tu es Parley, un assistant poli. Réponds."\n'
    config = tmp_path / "parley.toml"
    config.write_bytes(prompt.encode("latin-1"))
    err = _one_line(_parley(tmp_path, "--config", str(config), "config"), 2)
    assert err.startswith(f"parley: error: config file {config}: not UTF-8 text")
    (tmp_path / ".env").write_bytes(
        "PARLEY_CONVERSATION__SYSTEM_PROMPT=Réponds\n".encode("latin-1")
    )
    err = _one_line(_parley(tmp_path, "config"), 2)
    assert err.startswith("parley: error: .env: not UTF-8 text")


def test_a_settings_file_with_a_byte_order_mark_says_so(tmp_path: Path) -> None:
    """Saved as "UTF-8 with BOM" (Windows' Notepad): the error was tomllib's "Invalid
    statement (at line 1, column 1)", about a character no editor shows."""
    config = tmp_path / "parley.toml"
    config.write_bytes(b"\xef\xbb\xbf" + b'log_level = "DEBUG"\n')
    err = _one_line(_parley(tmp_path, "--config", str(config), "config"), 2)
    assert err == (
        f"parley: error: config file {config}: it begins with a byte-order mark (saved as "
        '"UTF-8 with BOM"); save it as UTF-8 without one\n'
    )


@pytest.mark.parametrize("variable", ["PARLEY_HTTP__HOST", "PARLEY_METRICS__HOST"])
def test_rvo_an_empty_listening_host_is_refused(tmp_path: Path, variable: str) -> None:
    """An empty host listens on every interface: /metrics, meant to stay private, public
    (compose's `${METRICS_HOST}` left unset is such an empty string)."""
    err = _one_line(_parley(tmp_path, "config", env={variable: ""}), 2)
    assert f"{variable}: " in err


@pytest.mark.parametrize("value", ["", "[]"])
def test_rvo_run_without_adapters_is_a_configuration_error(tmp_path: Path, value: str) -> None:
    """PARLEY_ADAPTERS= (compose's `${ADAPTERS}` left unset): `parley run` started nothing
    and exited 0, which a process manager reads as done, or restarts forever."""
    err = _one_line(_parley(tmp_path, "run", env={"PARLEY_ADAPTERS": value}), 2)
    assert "adapters: none configured" in err and "installed: console" in err


def test_rvo_a_missing_multiprocess_directory_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """PROMETHEUS_MULTIPROC_DIR under /run (docs/operations.md) is gone after a reboot:
    every worker then died with prometheus-client's traceback, status 1; doctor saw nothing."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "gone")}
    err = _one_line(_parley(tmp_path, "run", env=env), 2)
    assert f"PROMETHEUS_MULTIPROC_DIR: {tmp_path / 'gone'} is not a directory" in err
    doctor = _parley(tmp_path, "doctor", env=env)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "[PROBLEM] metrics: PROMETHEUS_MULTIPROC_DIR: " in doctor.stdout


def _files_up_to(limit: int) -> None:
    """In the child: no file may grow past `limit` bytes (RLIMIT_FSIZE), as on a disk that
    has no more room; Python ignores SIGXFSZ, so a write past it fails with EFBIG."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")
def test_a_multiprocess_directory_without_room_is_one_line_not_sigbus(tmp_path: Path) -> None:
    """prometheus-client writes its files through memory maps: in a PROMETHEUS_MULTIPROC_DIR
    on a full tmpfs every worker died of SIGBUS (status 135) at start, without a line, and
    doctor found no problem. The disk's refusal is made real here with a file size limit."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = parley_env(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(folder)})
    for args, status in ((("doctor",), 1), (("run",), 2)):
        done = subprocess.run(
            [sys.executable, "-m", "bot.cli", *args],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=functools.partial(_files_up_to, 512 * 1024),
        )
        assert done.returncode == status, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        said = f"PROMETHEUS_MULTIPROC_DIR: {folder} has no room for the metrics' files"
        if status == 2:
            assert done.stderr.startswith(f"parley: error: {said}"), done.stderr
            assert done.stderr.count("\n") == 1, done.stderr
        else:
            assert f"[PROBLEM] metrics: {said}" in done.stdout, done.stdout
    assert sorted(p.name for p in folder.iterdir()) == []  # the probe is not left behind


# Ctrl-C arriving while `parley` imports its modules (the first second of every command):
# a finder that raises KeyboardInterrupt when the module is imported, in the process's
# sitecustomize.py, as Python raises it wherever the signal lands.
_INTERRUPT_ON_IMPORT = """
import sys

class _Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, _Interrupt())
"""


@pytest.mark.parametrize("module", ["bot.settings", "bot.cli_commands"])
def test_rvo_ctrl_c_while_parley_loads_is_status_130_without_traceback(
    tmp_path: Path, module: str
) -> None:
    (tmp_path / "sitecustomize.py").write_text(_INTERRUPT_ON_IMPORT.format(module=module))
    done = _parley(tmp_path, "run", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert (done.returncode, done.stderr) == (130, "")


@asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers: a database behind a network
    partition that drops packets, as a client sees it."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.transport.abort()
        await server.wait_closed()


async def test_rvo_a_scrape_answers_while_the_database_does_not() -> None:
    pytest.importorskip("asyncpg")
    async with _silent_server() as port:
        engine = create_engine(f"postgresql+asyncpg://parley:pw@127.0.0.1:{port}/parley")
        store = SqlStore(engine)
        metrics = Metrics()
        metrics.watch_store(store, store.pools)
        metrics.pending.set(7)
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT_S):
                await metrics.refresh()
        finally:
            await store.aclose()
    body, _ = metrics.exposition()
    # Answered in time; the queue is unknown (NaN), never its last reading (7): a dashboard
    # must not show an old figure, or an empty queue, through a database outage.
    assert b"parley_pending_messages NaN" in body
