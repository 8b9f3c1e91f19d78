"""`parley run`: the configured adapters, supervised, with a stop that keeps its promises.

start     each adapter connects and checks its credentials; a failure stops start-up
          with one line naming the adapter (exit 3)
run       every adapter's input runs as a task; one that fails stops the process with one
          line naming it and why (exit 3); one whose input ends (the console at end of
          input) ends alone, the others go on; when every input has ended, Parley stops
stop      SIGTERM / Ctrl-C / the end of every input: inputs stop first (the HTTP server
          answers 503, so platforms re-send to another worker), the turns in flight get
          `shutdown_grace_s` to finish, then the adapters and the app close (exit 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import threading
from asyncio import FIRST_COMPLETED
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from adapters.base import Adapter
from bot.adapter_registry import AdapterSettings, adapter_spec
from bot.app import Parley
from bot.conversation.intake import Intake
from bot.errors import AdapterError, BotError, ConfigError
from bot.handoff.types import Desk
from bot.logformat import error_line
from bot.readiness import ReadinessProbe
from bot.settings import Settings
from bot.skills.router import CommandRouter
from bot.storage.base import Cache, Store
from bot.storage.usage import UsageLog

from .http import HttpHost
from .metrics_route import metrics_host, metrics_route, serve_all

log = logging.getLogger(__name__)

EVERY_INTERFACE = frozenset({"0.0.0.0", "::"})
# After a stop signal the process ends within shutdown_grace_s and this (install_stop_signals),
# with the status of a failure at run time (bot.cli's 3) when it had to cut its clean-up.
HARD_STOP_EXTRA_S = 2.0
EXIT_STOP_HUNG = 3


@dataclass(frozen=True, slots=True)
class AdapterHost:
    """What an adapter's factory gets from the composition root."""

    intake: Intake
    settings: Settings
    http: HttpHost
    # The registered commands: the platforms' command menus are generated from it.
    router: CommandRouter
    # The history store: for adapters that read back what they missed (Discord's backfill)
    # and withdraw messages deleted before they were answered.
    store: Store
    # The cache (in process, or Redis shared by every worker): facts an adapter keeps that
    # every worker of the bot needs (Discord's channels that refuse replies).
    cache: Cache
    # The handoff desk (bot.handoff): help-desk bridges attach to it, agent APIs call it.
    desk: Desk | None = None
    # The token usage, written behind: an erasure drops the erased user's unwritten sums.
    usage: UsageLog | None = None


def host_for(app: Parley) -> AdapterHost:
    http = HttpHost(app.settings.http, ready=ReadinessProbe(app))
    return AdapterHost(
        app.intake,
        app.settings,
        http,
        app.router,
        app.store,
        app.cache,
        app.desk,
        app.budgets.usage,
    )


def build_adapters(
    host: AdapterHost, names: Sequence[str], sections: Mapping[str, AdapterSettings]
) -> list[tuple[Adapter, AdapterSettings]]:
    """Each named adapter with its settings section (`sections` override the configured)."""
    built = []
    for name in names:
        spec = adapter_spec(name)
        section = sections.get(name) or spec.section(host.settings)
        adapter: Adapter = spec.load_factory()(host, section)
        built.append((adapter, section))
    return built


async def run_adapters(
    app: Parley,
    names: Sequence[str],
    sections: Mapping[str, AdapterSettings] | None = None,
    *,
    stop: asyncio.Event | None = None,
    hard_stop_s: float | None = None,
) -> None:
    """Run the named adapters until every input ends or a stop arrives (SIGINT, SIGTERM, or
    `stop` set by an embedding program). Raises AdapterError (one line) when an adapter fails
    to start or fails while running. `hard_stop_s` (the `parley` command's: the grace and
    HARD_STOP_EXTRA_S): the process ends that long after a stop signal whatever still runs
    (install_stop_signals); an embedding program gets no such timer unless it asks."""
    host = host_for(app)
    adapters = build_adapters(host, names, sections or {})
    if stop is None:
        stop = asyncio.Event()
        signals = install_stop_signals(
            stop, hard_stop_s, json_format=app.settings.log_format == "json"
        )
        try:
            await _run(app, host, adapters, stop)
        finally:
            signals.outlive_loop()
    else:
        await _run(app, host, adapters, stop)


async def _run(
    app: Parley,
    host: AdapterHost,
    adapters: Sequence[tuple[Adapter, AdapterSettings]],
    stop: asyncio.Event,
) -> None:
    http = host.http
    async with AsyncExitStack() as stack:
        for adapter, section in adapters:
            await _enter(stack, adapter)
            app.intake.register(adapter.platform, adapter, section.access)
            app.metrics.watch_adapter(adapter)
        app.log_serving()
        await app.manager.recover()
        hosts = http_hosts(app, http)
        serving = asyncio.create_task(serve_all(hosts), name="parley-http") if hosts else None
        failure = await _supervise([adapter for adapter, _ in adapters], serving, stop)
        for server in hosts:
            server.draining = True
        await _drain(app)
        if serving is not None:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    if failure is not None:
        raise failure


def http_hosts(app: Parley, http: HttpHost) -> list[HttpHost]:
    """The HTTP servers to run: the adapters' when they mounted anything (with /metrics where
    `_metrics_on_http` allows), and the metrics port's own when `[metrics] port` is set and
    is not the adapters' server."""
    hosts = []
    settings = app.settings
    if http.in_use:
        if _metrics_on_http(settings):
            try:
                http.mount(metrics_route(app.metrics))
            except ConfigError as exc:  # an adapter's route came first: name the way out
                raise ConfigError(
                    f"{exc}; /metrics is Parley's metrics endpoint on this server: move the "
                    "adapter's webhook or API to another path, or set metrics.on_http = false "
                    "or metrics.port to a port of its own"
                ) from None
        hosts.append(http)
    port = _own_metrics_port(settings, http.in_use)
    own = metrics_host(settings.metrics.host, port, app.metrics, ReadinessProbe(app))
    if own is not None:
        hosts.append(own)
    return hosts


def _own_metrics_port(settings: Settings, http_in_use: bool) -> int:
    """The port of the metrics server of its own, 0 for none: `metrics.port`, unless the
    adapters' HTTP server runs (`http_in_use`) on that same address and serves it. A
    ConfigError where the two cannot both listen (see _serves_metrics_already)."""
    if http_in_use and _serves_metrics_already(settings):
        return 0
    return settings.metrics.port


def listen_addresses(settings: Settings, http_in_use: bool) -> list[tuple[str, str, int]]:
    """Where `parley run` listens, as (settings section, host, port): the adapters' HTTP
    server when one mounts anything (`http_in_use`), and the metrics port's own server."""
    found = [("http", settings.http.host, settings.http.port)] if http_in_use else []
    if port := _own_metrics_port(settings, http_in_use):
        found.append(("metrics", settings.metrics.host, port))
    return found


def _metrics_on_http(settings: Settings) -> bool:
    """Whether the adapters' HTTP server serves /metrics. Its port is often public (webhooks,
    the support API) and the metrics name backends, models and skills: unless
    `metrics.on_http` says, only while it listens on loopback and no port of its own is set."""
    m = settings.metrics
    if _serves_metrics_already(settings):
        if m.on_http is False:
            raise ConfigError(
                f"metrics.on_http is false but metrics.port {m.port} is http.port: set "
                "metrics.port to 0 or to a port of its own"
            )
        return True
    if m.on_http is not None:
        return m.on_http
    return m.port == 0 and _is_loopback(settings.http.host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to any interface
        return False


def _listening_address(host: str) -> str:
    """`localhost` is where a server on it listens, 127.0.0.1: `metrics.host = "localhost"`
    beside `http.host = "127.0.0.1"` on one port was taken for two servers, the second of
    which could not listen, exit 3, restarted for ever (a helper's walkthrough)."""
    return "127.0.0.1" if host.lower() == "localhost" else host


def _serves_metrics_already(settings: Settings) -> bool:
    """The metrics port is the HTTP server's port: on the same host that server is the
    metrics server too. With every interface on one side, one of the two could not listen,
    and merging them would expose the metrics where they were meant to stay private."""
    h, m = settings.http, settings.metrics
    if m.port != h.port:
        return False
    if _listening_address(m.host) == _listening_address(h.host):
        return True
    if {m.host, h.host} & EVERY_INTERFACE:
        raise ConfigError(
            f"metrics.port: {m.port} is also http.port, on another host ({m.host}, {h.host}); "
            "set metrics.port to 0 (the HTTP server serves /metrics) or to a port of its own"
        )
    return False  # two addresses of this machine: two servers


async def _enter(stack: AsyncExitStack, adapter: Adapter) -> None:
    try:
        await stack.enter_async_context(adapter)
    except BotError as exc:
        raise AdapterError(f"the {adapter.platform} adapter could not start: {exc}") from None
    except Exception as exc:
        raise AdapterError(
            f"the {adapter.platform} adapter could not start: {_reason(exc)}"
        ) from None


async def _supervise(
    adapters: list[Adapter], serving: asyncio.Task[None] | None, stop: asyncio.Event
) -> AdapterError | None:
    """Wait for a stop, the end of every input, or the first failure (returned)."""
    inputs = {
        asyncio.create_task(a.run(), name=f"parley-adapter-{a.platform}"): a.platform
        for a in adapters
    }
    watched: dict[asyncio.Task[Any], str] = dict(inputs)
    if serving is not None:
        watched[serving] = "http"
    stopping = asyncio.create_task(stop.wait())
    try:
        while any(not task.done() for task in inputs):
            running: list[asyncio.Task[Any]] = [t for t in watched if not t.done()]
            done, _ = await asyncio.wait([*running, stopping], return_when=FIRST_COMPLETED)
            for task in done:
                if task is stopping:
                    log.info("stopping: no new input; turns in flight get the shutdown grace")
                    return None
                failure = _failure(watched[task], task)
                if failure is not None:
                    return failure
                if task is serving:  # the server stopped without an error: still a failure
                    return AdapterError("the HTTP server stopped unexpectedly")
                log.info("%s: input ended", watched[task])
        return None
    finally:
        stopping.cancel()
        for task in inputs:
            task.cancel()
        await asyncio.gather(stopping, *inputs, return_exceptions=True)


def _failure(name: str, task: asyncio.Task[Any]) -> AdapterError | None:
    if task.cancelled():
        return AdapterError(f"the {name} adapter stopped unexpectedly")
    exc = task.exception()
    if exc is None:
        return None
    if name == "http" and isinstance(exc, AdapterError):
        return exc
    log.debug("adapter %s failed", name, exc_info=exc)
    return AdapterError(f"the {name} adapter failed: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BotError):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _drain(app: Parley) -> None:
    grace = app.settings.shutdown_grace_s
    loop = asyncio.get_running_loop()
    started = loop.time()
    finished = await app.manager.drain(grace)
    left = max(0.0, grace - (loop.time() - started))
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(left):
            await app.intake.aclose()
            # Handoff events of the last turns reach their bridges while the adapters that
            # carry them (Chatwoot, the agent API's webhooks) are still open.
            await app.desk.idle()
    log.info(
        "stopped in %.1f s (%s)",
        loop.time() - started,
        "every turn finished" if finished else "unfinished turns stay pending in SQL",
    )


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def install_stop_signals(
    stop: asyncio.Event, hard_stop_s: float | None = None, *, json_format: bool = False
) -> StopSignals:
    """SIGINT and SIGTERM set `stop`. `hard_stop_s`: the process ends that long after the
    first signal whatever still runs then (exit 3, one line): a database that takes
    connections and never answers held a stop for minutes, where a process manager kills at
    10 s anyway. Nothing is lost: what was cut stays pending in SQL."""
    signals = StopSignals(stop, hard_stop_s, json_format)
    loop = asyncio.get_running_loop()
    # SIGHUP: the terminal closed (parley chat, parley run in a shell): a stop like the others,
    # not a death that leaves the answer being shown held for delivery_grace_s.
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, signals.on_signal)
    return signals


class StopSignals:
    """The process's stop signals while `parley run` runs, and after its loop has ended."""

    def __init__(self, stop: asyncio.Event, hard_stop_s: float | None, json_format: bool) -> None:
        self._stop = stop
        self._hard_stop_s = hard_stop_s
        self._json_format = json_format
        self._armed = False

    def on_signal(self) -> None:
        self._arm()
        self._stop.set()

    def _arm(self) -> None:
        if self._armed or self._hard_stop_s is None:
            return
        self._armed = True
        timer = threading.Timer(
            self._hard_stop_s, _hard_stop, (self._hard_stop_s, self._json_format)
        )
        timer.daemon = True  # a stop that finishes in time ends the process first
        timer.start()

    def outlive_loop(self) -> None:
        """After a stop signal, once the run is over, further stop signals are ignored: the
        hard-stop timer that signal started bounds what is left. Closing the loop
        (asyncio.run) gives the signals back to their defaults, and so does the
        interpreter's exit for a handler of its own, while the process still ends (the app's
        pools, an in-process engine, about half a second of the interpreter's own clean-up):
        a second Ctrl-C or SIGTERM a tenth of a second after the first, with the stop done,
        killed the process by that signal (status 130 or 143, not 0). An ignored signal stays
        ignored through the exit.
        A run that ended without a signal (the end of every input) leaves them to their
        defaults, no timer running: armed here, it ended the program that called the run
        (`parley chat` in a test) ten seconds later whatever it did then. So does a run
        without a hard stop (an embedding program's): ignored, the signals no longer ended
        the program at all once its adapters were done."""
        if not self._armed:
            return
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)


def _hard_stop(after_s: float, json_format: bool) -> None:
    # From the timer's thread, with the event loop perhaps stuck: no logging (its lock may
    # be held), one write, then the exit itself (os._exit: no interpreter clean-up to hang).
    text = (
        f"the stop did not finish within {after_s:g} s (a database or service that does not "
        "answer): exiting; unanswered messages stay pending in SQL"
    )
    line = error_line(text, json_format=json_format) + "\n"
    with contextlib.suppress(OSError):
        os.write(2, line.encode())
    os._exit(EXIT_STOP_HUNG)
