"""`parley doctor` checks the ports `parley run` would listen on: a port another process held
failed the run at start ("cannot listen on ...: Address already in use", exit 3) while doctor
said "no problems found"."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.server
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.chatwoot.settings import ChatwootSettings
from adapters.kit.http import HttpHost
from adapters.support.settings import SupportSettings
from adapters.telegram.settings import TelegramSettings
from bot.adapter_registry import AdapterSettings
from bot.cli import main
from bot.settings import HttpSettings
from tests.ports import free_port

IN_USE = os.strerror(errno.EADDRINUSE)
Doctor = Callable[..., tuple[int, str]]


@pytest.fixture
def doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Doctor]:
    """`parley doctor` over a migrated SQLite file: (exit status, output) for the settings
    given as environment variables."""
    monkeypatch.setenv("PARLEY_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/d.db")
    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()

    def run(**env: str) -> tuple[int, str]:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = main(["doctor"])
        return code, capsys.readouterr().out

    yield run


def _held() -> socket.socket:
    """A socket of another process's kind, listening on a free port of 127.0.0.1."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken


def test_a_port_another_process_holds_is_a_problem(doctor: Doctor) -> None:
    with _held() as taken:
        port = taken.getsockname()[1]
        code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 1, out
    assert f"[PROBLEM] http: cannot listen on 127.0.0.1:{port}: {IN_USE}\n" in out
    assert out.rstrip().endswith("1 problem(s) found")


def test_a_free_port_passes_and_doctor_leaves_it_free(doctor: Doctor) -> None:
    with _held() as taken:  # a free port: taken, then let go
        port = taken.getsockname()[1]
    code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 0, out
    assert f"[ok] http: can listen on 127.0.0.1:{port}\n" in out
    with socket.socket() as plain:  # doctor holds nothing, not even a TIME_WAIT
        plain.bind(("127.0.0.1", port))


def test_a_port_whose_last_connection_is_in_time_wait_passes(doctor: Doctor) -> None:
    """A worker just stopped leaves its closed connections in TIME_WAIT for a minute; uvicorn
    (and `parley run`) bind with SO_REUSEADDR, so that is no problem, and doctor says none."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server's side closes first: it is left in TIME_WAIT
            assert client.recv(1) == b""
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))  # without SO_REUSEADDR the port is taken
    assert refused.value.errno == errno.EADDRINUSE
    code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 0, out
    assert f"[ok] http: can listen on 127.0.0.1:{port}\n" in out


def test_no_port_is_checked_where_nothing_listens_and_the_metrics_port_is(
    doctor: Doctor,
) -> None:
    """The console alone (and Telegram polling, Discord) starts no HTTP server: a taken
    http.port is nobody's problem there. A metrics port of its own is listened on."""
    with _held() as taken:
        port = taken.getsockname()[1]
        code, out = doctor(PARLEY_ADAPTERS="console", PARLEY_HTTP__PORT=str(port))
        assert code == 0, out
        assert "listen" not in out
        code, out = doctor(PARLEY_METRICS__PORT=str(port))
    assert code == 1, out
    assert f"[PROBLEM] metrics: cannot listen on 127.0.0.1:{port}: {IN_USE}\n" in out


def test_the_adapters_that_serve_http_say_so() -> None:
    """What doctor asks each configured adapter (AdapterSettings.serves_http): whether `parley
    run` starts the HTTP server for it."""
    webhook = {"webhook_public_url": "https://bot.example/tg", "webhook_secret_token": "s3cret"}
    assert TelegramSettings(mode="webhook", **webhook).serves_http()
    assert not TelegramSettings().serves_http()  # polling
    assert SupportSettings().serves_http() and ChatwootSettings().serves_http()
    assert not AdapterSettings().serves_http()  # a third party's, unless it says so


@contextlib.contextmanager
def _worker_serving(port: int) -> Iterator[None]:
    """A worker's HTTP host (the real one, as `parley run` serves it) on 127.0.0.1:port, in a
    thread of its own: doctor is run beside it."""
    loop = asyncio.new_event_loop()
    host = HttpHost(HttpSettings(port=port))
    serving = loop.create_task(host.serve())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # how the test stops it
            loop.run_until_complete(serving)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        for _ in range(500):  # until it listens
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            time.sleep(0.02)
        yield
    finally:
        loop.call_soon_threadsafe(serving.cancel)
        thread.join(30)
        loop.close()


@contextlib.contextmanager
def _another_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """Another program's HTTP server on a free port of 127.0.0.1 (yielded), in a thread."""
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with other:
        answering = threading.Thread(target=other.serve_forever)
        answering.start()
        try:
            yield int(other.server_address[1])
        finally:
            other.shutdown()
            answering.join(30)


def test_a_port_a_running_worker_serves_is_no_problem(doctor: Doctor) -> None:
    """Doctor is run beside a worker too (a deployment checked while it runs): the port is
    taken by that worker, whose /healthz answers. Anything else holding the port, an HTTP
    server too, is still the problem a second `parley run` would meet."""
    port = free_port()
    with _worker_serving(port):
        code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 0, out
    assert f"[ok] http: 127.0.0.1:{port} is served by a running worker" in out

    with _another_server(http.server.BaseHTTPRequestHandler) as port:
        code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 1, out
    assert f"[PROBLEM] http: cannot listen on 127.0.0.1:{port}: {IN_USE}\n" in out


class _AnotherServicesHealth(http.server.BaseHTTPRequestHandler):
    """Another program's server with a /healthz of its own that answers `ok`, as many do."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_: object) -> None:
        pass


def test_another_programs_healthz_answering_ok_is_no_worker(doctor: Doctor) -> None:
    """A port held by another program whose own /healthz answers `ok` (a common liveness
    answer) was taken for a running worker: doctor said `[ok] ... is served by a running
    worker`, and `parley run` then failed at start on that port."""
    with _another_server(_AnotherServicesHealth) as port:
        code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 1, out
    assert f"[PROBLEM] http: cannot listen on 127.0.0.1:{port}: {IN_USE}\n" in out
    assert "running worker" not in out


def test_an_ipv6_host_can_be_listened_on(doctor: Doctor) -> None:
    """http.host "::" (every interface, IPv6 and IPv4) or "::1": the socket was made for IPv4
    alone, so `parley run` failed at start ("cannot listen on :::8080: Unknown error -9") and
    so did doctor. It is an IPv6 socket for a host with a ":", as uvicorn makes it."""
    for host in ("::1", "::"):
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as probe:
            port = probe.getsockname()[1]  # a free port, let go
        code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__HOST=host,
                           PARLEY_HTTP__PORT=str(port))  # fmt: skip
        assert code == 0, out
        assert f"[ok] http: can listen on {host}:{port}\n" in out


async def test_a_worker_on_the_ipv6_wildcard_serves_ipv4_and_ipv6() -> None:
    """`parley run` with http.host "::" serves (it failed at start), on IPv6 and IPv4 alike
    where the system takes both on one socket, as uvicorn's own binding does."""
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as probe:
        port = probe.getsockname()[1]
    serving = asyncio.create_task(HttpHost(HttpSettings(host="::", port=port)).serve())
    try:
        clients = ["::1", "127.0.0.1"] if socket.has_dualstack_ipv6() else ["::1"]
        for client in clients:
            for _ in range(500):  # until it listens
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection(client, port)
                    break
                await asyncio.sleep(0.02)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


def _resolver_says(host: str) -> str:
    with pytest.raises(socket.gaierror) as unresolved:
        socket.getaddrinfo(host, 8080)
    return str(unresolved.value.strerror)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("no-such-host.invalid", None),  # names nothing: the resolver's words
        ("a..b", "not a host name or address"),  # an empty label, which no name has
    ],
)
def test_a_host_that_names_no_address_says_why(doctor: Doctor, host: str, why: str | None) -> None:
    """An http.host that resolves to nothing (a typo) was `cannot listen on HOST:PORT:
    Unknown error -2`, in doctor as at `parley run`'s start: the resolver's error number read
    as an errno. It is the resolver's own words now, or, for a name no resolver is asked (the
    IDNA codec refuses it), that it is none."""
    why = why or _resolver_says(host)
    code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__HOST=host)
    assert code == 1, out
    assert f"[PROBLEM] http: cannot listen on {host}:8080: {why}\n" in out
    assert "Unknown error" not in out


def _redirecting_to(port: int) -> type[http.server.BaseHTTPRequestHandler]:
    """Another program's server whose every path redirects to 127.0.0.1:port, the same path."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    return Redirect


def test_a_port_whose_server_redirects_to_a_worker_is_no_worker(doctor: Doctor) -> None:
    """Doctor followed a redirect from /healthz: another program holding the port and
    redirecting (as a proxy or a login page does) to a running worker elsewhere was taken
    for that worker, `[ok] ... is served by a running worker`, and `parley run` then failed
    at start on that port. The worker is asked straight, without following redirects."""
    worker_port = free_port()
    with _worker_serving(worker_port), _another_server(_redirecting_to(worker_port)) as port:
        code, out = doctor(PARLEY_ADAPTERS="support", PARLEY_HTTP__PORT=str(port))
    assert code == 1, out
    assert f"[PROBLEM] http: cannot listen on 127.0.0.1:{port}: {IN_USE}\n" in out
    assert "running worker" not in out


def test_parley_health_does_not_follow_a_redirect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parley health` (the image's HEALTHCHECK) asks the worker the settings name: a
    redirect from that address to another worker's /healthz was followed and its `ok` taken
    for this worker's. It is the answer of the address asked: HTTP 302, one line, exit 1."""
    monkeypatch.setenv("PARLEY_HOME", str(tmp_path / "home"))
    worker_port = free_port()
    with _worker_serving(worker_port), _another_server(_redirecting_to(worker_port)) as port:
        monkeypatch.setenv("PARLEY_METRICS__PORT", str(worker_port))
        assert main(["health"]) == 0  # the worker itself answers
        assert capsys.readouterr().out == "ok\n"
        monkeypatch.setenv("PARLEY_METRICS__PORT", str(port))
        assert main(["health"]) == 1
    err = capsys.readouterr().err
    assert err == f"parley: http://127.0.0.1:{port}/healthz answered HTTP 302\n", err
