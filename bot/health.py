"""`python -m bot.health` (and `parley health`): ask the running worker's `/healthz`, for a
container's HEALTHCHECK.

It asks the metrics port when one is set, else the HTTP port, at the host each listens on (a
wildcard host is asked on loopback), as the environment (`PARLEY_METRICS__PORT`, ...) or the
config file says. It runs every 15 s beside the worker, so it reads those four settings with
the standard library alone: loading the whole settings imports every adapter's library
(1.7 s of CPU and 135 MB a probe, where this takes a few milliseconds). The defaults are
`Settings`' own (a test keeps them the same). Prints `ok` (exit 0), or one line (exit 1) on
stderr: one JSON object, as the log's lines, where `log_format` is "json".
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Settings' defaults (bot.settings: HttpSettings, MetricsSettings).
DEFAULTS: dict[tuple[str, str], str] = {
    ("http", "host"): "127.0.0.1",
    ("http", "port"): "8080",
    ("metrics", "host"): "127.0.0.1",
    ("metrics", "port"): "0",
}
# Seconds the whole request may take: within a container check's usual 3-5 s.
TIMEOUT_S = 2.0
# On every `/healthz` answer of a Parley worker (adapters/kit/http.py): `worker_answers` tells
# a worker from another program whose own /healthz answers `ok` too, as many do.
WORKER_HEADER = "Parley-Worker"
# A server listening on every interface is asked on loopback.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def healthz_url(environ: Mapping[str, str], config: Mapping[str, Any]) -> str:
    """Where this configuration's worker answers `/healthz`."""

    # As the settings read them: names in any case (the config file's sections and a JSON
    # variable's keys too), and a section as one JSON variable (PARLEY_METRICS='{"port":
    # 9100}'), under the variables of its settings.
    variables = {key.upper(): value for key, value in environ.items()}
    tables = _folded(config)

    def setting(section: str, name: str) -> str:
        given = variables.get(f"PARLEY_{section.upper()}__{name.upper()}")
        if given is not None:
            return given
        value = _folded(_table(variables.get(f"PARLEY_{section.upper()}"))).get(name)
        if value is None:
            value = _folded(tables.get(section)).get(name)
        return str(value) if value is not None else DEFAULTS[(section, name)]

    return url_of(
        (setting("metrics", "host"), setting("metrics", "port")),
        (setting("http", "host"), setting("http", "port")),
    )


def _table(value: str | None) -> dict[str, Any]:
    """A section given as one JSON variable (what the settings take where a value starts
    with `{`); anything else sets nothing here."""
    if value is None or not value.lstrip().startswith("{"):
        return {}
    try:
        table = json.loads(value)
    except ValueError:  # `parley run` refuses it in its own line
        return {}
    return table if isinstance(table, dict) else {}


def _folded(table: object) -> dict[str, Any]:
    """A table's keys in lower case (the settings' are); anything but a table is empty."""
    if not isinstance(table, dict):
        return {}
    return {str(key).lower(): value for key, value in table.items()}


def _number(port: str) -> int | None:
    """A port as the settings read an integer: blanks around it, `_` between digits, and a
    float with nothing after the point (`9000.0`, as TOML or JSON may hold it) are taken."""
    try:
        return int(port)
    except ValueError:
        pass
    try:
        whole = float(port)
    except ValueError:
        return None
    return int(whole) if whole.is_integer() else None


def url_of(metrics: tuple[str, str], http: tuple[str, str]) -> str:
    """The `/healthz` URL of a worker with these (host, port) of the metrics and the HTTP
    server: the metrics port when one is set, else the HTTP port."""
    own = metrics[1].strip() not in ("", "0") and _number(metrics[1]) != 0
    section, (host, given) = ("metrics", metrics) if own else ("http", http)
    return healthz_at(section, host, given)


def healthz_at(section: str, host: str, given: str) -> str:
    """The `/healthz` URL of the server of `section` listening on host:given (a wildcard
    host asked on loopback); ValueError naming the setting that cannot make one."""
    host = _WILDCARD_HOSTS.get(host, host)
    port = _number(given)
    if port is None or not 0 < port < 65536:
        raise ValueError(f"{section}.port is not a port number: {given!r}")
    if not host or any(c.isspace() or c in "/?#@[]" for c in host.strip("[]")):
        raise ValueError(f"{section}.host is not a host name or address: {host!r}")
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def _config(environ: Mapping[str, str], given: str | None) -> Mapping[str, Any]:
    """The config file's tables, found as `parley` finds it (--config, PARLEY_CONFIG, else
    config/parley.toml if there)."""
    path = Path(given or environ.get("PARLEY_CONFIG") or "config/parley.toml")
    if not (given or environ.get("PARLEY_CONFIG")) and not path.exists():
        return {}
    with path.open("rb") as file:
        return tomllib.load(file)


def check(config_file: str | None = None, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    config: Mapping[str, Any] = {}
    try:
        config = _config(env, config_file)
        url = healthz_url(env, config)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _say(f"parley: the config file cannot be read: {exc}", json_format=_json(env, config))
        return 1
    except ValueError as exc:  # the settings' own words, as `parley health` says them
        _say(f"parley: {exc}", json_format=_json(env, config))
        return 2
    return ask(url, json_format=_json(env, config))


def _json(environ: Mapping[str, str], config: Mapping[str, Any]) -> bool:
    """Whether the log is JSON lines (`log_format`), as the settings read it: the
    environment's PARLEY_LOG_FORMAT (any case) over the config file's."""
    variables = {key.upper(): value for key, value in environ.items()}
    wanted = variables.get("PARLEY_LOG_FORMAT", config.get("log_format", "text"))
    return str(wanted).lower() == "json"


def _say(line: str, *, json_format: bool) -> None:
    """A failure line on stderr: plain, or where the log is JSON lines one JSON object with a
    log line's fields (bot.logformat, which loads nothing heavy)."""
    from bot.logformat import command_line

    print(command_line(line, json_format=json_format), file=sys.stderr)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is the answer of the address asked (an HTTPError with its status), not a
    question to ask elsewhere: a worker's /healthz never redirects, and another program's
    redirect to a worker elsewhere is not this address's worker."""

    def redirect_request(self, *_: Any) -> None:
        return None


def _direct(url: str) -> Any:
    """The answer to a GET of `url`, within TIMEOUT_S, straight to the worker: an
    HTTP(S)_PROXY in the container's environment is not for it, nor is a redirect followed."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    return opener.open(url, timeout=TIMEOUT_S)


def worker_answers(url: str) -> bool:
    """Whether a Parley worker answers at `url` (its `/healthz`): HTTP 200, `ok` and the
    WORKER_HEADER, within TIMEOUT_S (another program's /healthz may answer `ok` too). Says
    nothing."""
    try:
        with _direct(url) as response:
            ours = response.headers.get(WORKER_HEADER) is not None
            return bool(ours and response.status == 200 and response.read(16) == b"ok")
    except (OSError, ValueError, http.client.HTTPException):  # refused, an error status, ...
        return False


def ask(url: str, *, json_format: bool = False) -> int:
    """Ask a worker's `/healthz`: `ok` (0), or one line (1), a JSON object with
    `json_format`."""
    try:
        with _direct(url) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, timed out, ...
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        _say(f"parley: no answer from {url}: {type(why).__name__}", json_format=json_format)
        return 1
    if status != 200:
        _say(f"parley: {url} answered HTTP {status}", json_format=json_format)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    config = sys.argv[sys.argv.index("--config") + 1] if "--config" in sys.argv[:-1] else None
    sys.exit(check(config))
