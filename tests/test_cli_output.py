"""What `parley` prints for an operator who pipes it: `parley config` says where the data
is (the database URL, its password masked), and a reader that leaves early (`| head -1`)
ends the command quietly with the status a shell reports for SIGPIPE, not an error line and
the run-time failure status 3."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from bot import health
from bot.cli import main
from bot.settings import load_settings
from tests.fixtures_vllm import require
from tests.processes import ROOT, parley_env


def _config(tmp_path: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "config"],
        cwd=tmp_path,
        env=parley_env(tmp_path, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    shown: dict[str, dict[str, object]] = json.loads(done.stdout)
    return shown


def test_config_shows_the_embedded_database_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/data/parley.db"
    shown = _config(tmp_path, {"PARLEY_DATABASE__URL": url})
    assert shown["database"]["url"] == url


def test_config_shows_server_urls_with_their_passwords_masked(tmp_path: Path) -> None:
    env = {
        "PARLEY_DATABASE__URL": "postgresql+asyncpg://bob:hunter2-pw@db.example:5433/x?password=qq-pw",
        "PARLEY_REDIS__URL": "redis://:r3dis-pw@cache.example:6379/0",
        "PARLEY_TELEGRAM__TOKEN": "123456:telegram-token-value",
        # URL fields (validated URLs, not strings): their passwords were printed in clear.
        "PARLEY_SUPPORT__WEBHOOK": '{"url": "https://u:wh00k-pw@desk.example/x", '
        '"secret": "webhook-secret-123456"}',
        "PARLEY_CHATWOOT__URL": "https://u:chatw00t-pw@cw.example",
        # A token in the user's place, and one in the query (a helper's review).
        "PARLEY_SUPPORT__WEBHOOKS": '{"shop": {"url": "https://utok-secret2-abcdefgh@desk'
        '.example/shop?sig=qtok-secret1&site=shop", "secret": "shop-secret-of-sixteen"}}',
    }
    shown = _config(tmp_path, env)
    # A receiver's user name, however short, is hidden where it stands in its URL.
    assert shown["support"]["webhook"]["url"] == "https://***:***@desk.example/x"  # type: ignore[index]
    assert shown["chatwoot"]["url"] == "https://***:***@cw.example/"
    assert shown["support"]["webhooks"]["shop"]["url"] == (  # type: ignore[index]
        "https://***@desk.example/shop?***"  # a receiver's whole query is its secret
    )
    assert shown["database"]["url"] == (
        "postgresql+asyncpg://bob:**********@db.example:5433/x?password=**********"
    )
    assert shown["redis"]["url"] == "redis://:**********@cache.example:6379/0"
    assert shown["telegram"]["token"] == "**********"
    text = json.dumps(shown)
    for secret in ("hunter2-pw", "qq-pw", "r3dis-pw", "telegram-token-value", "wh00k-pw",
                   "chatw00t-pw", "webhook-secret-123456", "utok-secret2", "qtok-secret1",
                   "shop-secret-of-sixteen"):  # fmt: skip
        assert secret not in text


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "doctor"],
        cwd=tmp_path,
        env=parley_env(tmp_path, {}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert err == ""


def test_config_masks_passwords_urlsplit_would_miss(tmp_path: Path) -> None:
    """SQLAlchemy reads a password up to the last "@": "/", "#" and "?" in it are masked
    too; a secret that only contains "://" is no URL and stays masked whole; a URL no parser
    accepts is no traceback."""
    env = {
        "PARLEY_DATABASE__URL": "postgresql+asyncpg://app:s3cr/e#t?x@db.internal/parley",
        "PARLEY_SUPPORT__TOKEN_SECRET": "Tr0ub4dor://correct-horse-battery-staple-42",
    }
    shown = _config(tmp_path, env)
    assert shown["database"]["url"] == "postgresql+asyncpg://app:**********@db.internal/parley"
    assert shown["support"]["token_secret"] == "**********"
    text = json.dumps(shown)
    assert "s3cr" not in text and "Tr0ub4dor" not in text
    odd = _config(tmp_path, {"PARLEY_DATABASE__URL": "postgresql+asyncpg://u:pw9@[db/parley"})
    assert odd["database"]["url"] == "postgresql+asyncpg://u:**********@[db/parley"


def test_config_masks_the_query_values_the_log_filter_takes_for_secrets(tmp_path: Path) -> None:
    """`parley config` and the log filter agree on which query parameters are secrets: a
    `sig` or an `auth_token` in the database URL was shown as written. (Those two are now
    refused, asyncpg takes neither; its password and passfile are named like secrets.)"""
    url = "postgresql+asyncpg://app@db.internal/parley?sslmode=require&password=pw9&passfile=/p"
    shown = _config(tmp_path, {"PARLEY_DATABASE__URL": url})
    # (The URL as Parley uses it: asyncpg's name for sslmode, the parameters in order.)
    assert shown["database"]["url"] == (
        "postgresql+asyncpg://app@db.internal/parley"
        "?passfile=**********&password=**********&ssl=require"
    )


def test_a_broken_pipe_that_is_not_stdout_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a reader of stdout that left ends the command quietly: a pipe or socket of
    something else that broke is a failure, one line and status 3."""

    async def broken(settings: object, args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("bot.cli_commands.cmd_config", broken)
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    assert main(["config"]) == 3
    assert capsys.readouterr().err == "parley: error: [Errno 32] Broken pipe\n"


def test_a_missing_extra_is_a_configuration_problem_at_once(tmp_path: Path) -> None:
    """backend.kind vllm without the vllm package was waited for as a model server still
    starting (a line every 10 s for backend.startup_wait_s), then exit 3, which process
    managers restart on: for ever. It is one line and exit 2 at once, as documented."""
    missing = tmp_path / "missing"
    (missing / "vllm").mkdir(parents=True)  # an import of vllm fails, as where none is installed
    (missing / "vllm" / "__init__.py").write_text("raise ImportError('No module named vllm')\n")
    backend = {"KIND": "vllm", "MODEL": str(tmp_path), "STARTUP_WAIT_S": "3"}
    env = parley_env(tmp_path, {f"PARLEY_BACKEND__{k}": v for k, v in backend.items()})
    env["PYTHONPATH"] = f"{missing}{os.pathsep}{env['PYTHONPATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "parley: error: backend kind 'vllm' needs the vllm package (No module named vllm): "
        "pip install 'parley[vllm]'\n"  # a command to paste, like the other extras' lines
    )


def test_health_asks_healthz_where_the_settings_say_the_worker_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The image's HEALTHCHECK asked 127.0.0.1 whatever metrics.host said: a worker on a
    private address was unhealthy for ever (a helper's walkthrough). `parley health` asks
    the host and port the settings name."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == "/healthz"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PARLEY_METRICS__HOST", "127.0.0.2")
    monkeypatch.setenv("PARLEY_METRICS__PORT", str(server.server_address[1]))
    try:
        assert main(["health"]) == 0
        assert capsys.readouterr().out == "ok\n"
    finally:
        server.shutdown()
        server.server_close()
    assert main(["health"]) == 1  # nothing listens there now: one line
    err = capsys.readouterr().err
    assert err.startswith("parley: no answer from http://127.0.0.2:") and err.count("\n") == 1


def test_health_reads_the_settings_in_dot_env_as_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker whose ports were set in `.env` was reported down by `parley health` while it
    answered: the command loaded the settings, then asked where the environment and the
    config file alone said (an operator's review; docs/deployment.md: a `PARLEY_*` line in
    `.env` is a setting like any other)."""

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"PARLEY_METRICS__PORT={server.server_address[1]}\n")
    try:
        assert main(["health"]) == 0
        assert capsys.readouterr().out == "ok\n"
    finally:
        server.shutdown()
        server.server_close()


def test_with_json_logs_the_last_line_of_a_failure_is_json_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every line on stderr was a JSON object but the last, `parley: error: ...`, plain text,
    which a log collector reading JSON lines dropped or choked on (a helper's walkthrough)."""
    for name, value in parley_env(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PARLEY_LOG_FORMAT", "json")
    monkeypatch.setenv("PARLEY_ADAPTERS", "[]")
    assert main(["run"]) == 2
    last = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert (last["level"], last["logger"]) == ("ERROR", "parley")
    assert last["message"].startswith("parley: error: adapters: none configured")
    # Settings that do not load at all: the environment still asks for JSON.
    monkeypatch.setenv("PARLEY_BACKEND__MAX_TOKENS", "0")
    assert main(["doctor"]) == 2
    last = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert last["message"].startswith("parley: error: invalid setting PARLEY_BACKEND__MAX_TOKENS")


def test_the_health_checks_defaults_are_the_settings_own_and_it_reads_both_sources(
    tmp_path: Path,
) -> None:
    """The container's check reads four settings without loading the rest (which imports
    every adapter's library: 1.7 s and 135 MB a probe, every 15 s; a helper's review)."""
    settings = load_settings(None)
    assert {
        ("http", "host"): settings.http.host,
        ("http", "port"): str(settings.http.port),
        ("metrics", "host"): settings.metrics.host,
        ("metrics", "port"): str(settings.metrics.port),
    } == health.DEFAULTS
    assert health.healthz_url({}, {}) == "http://127.0.0.1:8080/healthz"
    config = {"http": {"host": "0.0.0.0", "port": 9000}, "metrics": {"port": 9100}}
    assert health.healthz_url({}, config) == "http://127.0.0.1:9100/healthz"
    env = {"PARLEY_METRICS__PORT": "0", "PARLEY_HTTP__HOST": "::"}
    assert health.healthz_url(env, config) == "http://[::1]:9000/healthz"


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("PARLEY_HTTP__PORT", "abc", "http.port is not a port number: 'abc'"),
        ("PARLEY_METRICS__PORT", "1.5", "metrics.port is not a port number: '1.5'"),
        ("PARLEY_HTTP__HOST", "a b", "http.host is not a host name or address: 'a b'"),
    ],
)
def test_the_health_check_says_a_bad_setting_in_one_line(
    name: str, value: str, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bot.health` (the image's HEALTHCHECK) printed http.client's traceback."""
    assert health.check(None, {name: value}) == 2
    assert capsys.readouterr().err == f"parley: {said}\n"


def test_a_heap_frozen_at_start_up_leaks_nothing_at_exit() -> None:
    """`gc.freeze()` kept start-up's objects from ever being freed: with torch loaded (a local
    tokenizer, the in-process engine) nanobind printed about 30 "leaked" lines at each exit
    of `parley chat` and `parley run` (an operator's review)."""
    require("torch", "transformers")
    script = (
        "from transformers import AutoTokenizer\nimport torch\n"
        "from bot.cli_commands import settle_heap\nsettle_heap()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaked" not in done.stderr and "nanobind" not in done.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"PARLEY_METRICS": '{"port": 9100}'},
        {"PARLEY_HTTP": '{"host": "0.0.0.0", "port": 9000}'},
        {"parley_http__port": "9000", "Parley_Metrics__Host": "127.0.0.3"},
        {"PARLEY_HTTP": '{"port": 9000}', "PARLEY_HTTP__PORT": "9001"},
        # The settings take these too; the check asked 8080, or refused with exit status 2.
        {"PARLEY_METRICS": '{"PORT": 9100}'},
        {"PARLEY_HTTP__PORT": " 9000 "},
        {"PARLEY_HTTP__PORT": "9000.0", "PARLEY_METRICS__PORT": " 0"},
    ],
)
def test_the_health_check_reads_a_variable_in_every_form_the_settings_take(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m bot.health` (the image's HEALTHCHECK) read PARLEY_SECTION__NAME in upper
    case only: a section set as one JSON variable (docs/configuration.md) or a name in lower
    case, which the worker and `parley health` take, left the check asking port 8080, and a
    worker that answered was unhealthy for ever."""
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(None)
    worker = health.url_of(
        (settings.metrics.host, str(settings.metrics.port)),
        (settings.http.host, str(settings.http.port)),
    )
    assert health.healthz_url(os.environ, {}) == worker != "http://127.0.0.1:8080/healthz"


@pytest.mark.parametrize(
    "text", ["[HTTP]\nport = 9000\n", "[Metrics]\nport = 9100\n", "[http]\nport = 9000.0\n"]
)
def test_the_health_check_reads_the_config_file_as_the_settings_do(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A section named in capitals (`[HTTP]`), or a port written as a float, is taken by the
    worker; the image's HEALTHCHECK asked port 8080 (or refused it), and a worker that
    answered was unhealthy for ever (an operator's trial)."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith("PARLEY_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "parley.toml"
    path.write_text(text)
    settings = load_settings(path)
    worker = health.url_of(
        (settings.metrics.host, str(settings.metrics.port)),
        (settings.http.host, str(settings.http.port)),
    )
    config = tomllib.loads(text)
    assert health.healthz_url({}, config) == worker != "http://127.0.0.1:8080/healthz"


def test_run_help_names_the_extra_each_sdk_adapter_needs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` installs Parley without extras, and `parley run --help` lists every adapter
    it knows: the ones that need an SDK say which extra brings it, before a start refuses."""
    for sdk in ("telegram", "discord"):  # not installed: an import of it fails
        monkeypatch.setitem(sys.modules, sdk, None)
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert "pip install 'parley[telegram]'" in lines["telegram"]
    assert "pip install 'parley[discord]'" in lines["discord"]
    assert "pip install" not in lines["console"]


def test_run_help_offers_no_pip_install_for_an_sdk_that_is_installed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the extras installed (as here), `parley run --help` told the operator to
    `pip install 'parley[telegram]'` all the same, as if the adapter could not start."""
    pytest.importorskip("telegram")
    pytest.importorskip("discord")
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    lines = {line.split(":")[0].strip(): line for line in capsys.readouterr().out.splitlines()}
    assert lines["telegram"].startswith("  telegram: Telegram bot")
    assert "pip install" not in lines["telegram"]
    assert "pip install" not in lines["discord"]
