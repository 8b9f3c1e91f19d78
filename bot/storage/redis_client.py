"""How Parley connects to Redis: one recipe for every client it opens (the cache, the token
budgets' counters, the adapters' outbound gates, the support channel's streams).

- A blocking pool: a burst of calls waits up to POOL_WAIT_S for a connection instead of
  failing with "Too many connections".
- `socket_timeout_s` on connecting and on each reply (`RedisSettings.socket_timeout_s`), so a
  frozen Redis costs a call that long; the callers then go on without Redis for a while
  (bot.outage.Outage).
- One retry, at once, and only of a call whose connection was found broken (Redis restarted
  and dropped it): the retry takes a new connection. A call that timed out is not sent
  again: against a frozen Redis a retry only doubles the wait (the cache and the budgets
  retried timeouts too, and a turn waited two timeouts), and a script that ran may run
  twice. redis-py's defaults differ by constructor (`Redis(host=...)` retries 10 times with
  backoff, timeouts included; a client on a pool from a URL never retries).
- Idle pooled connections are checked (PING) before use after 30 s, so a restart costs no
  failed call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Seconds a call waits for a pooled connection before it counts as a failure.
POOL_WAIT_S = 10.0
HEALTH_CHECK_S = 30


def connect(url: str, *, timeout_s: float, max_connections: int, subscriber: bool = False) -> Redis:
    """A client of `url` on Parley's terms (above). `subscriber`: replies are waited for
    without end (a pub/sub connection is idle between messages); connecting is still bounded
    by `timeout_s`."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as BrokenConnection

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_S,
        socket_connect_timeout=timeout_s,
        socket_timeout=None if subscriber else timeout_s,
        health_check_interval=HEALTH_CHECK_S,
        retry=Retry(NoBackoff(), 1, supported_errors=(BrokenConnection,)),
    )
    return Redis(connection_pool=pool)


def client_for(
    settings: RedisSettings, *, max_connections: int | None = None, subscriber: bool = False
) -> Redis | None:
    """The client `settings` configure; None without a URL. `max_connections`: this
    client's own bound, where it is not the settings' (`redis.max_connections`)."""
    if settings.url is None:
        return None
    return connect(
        settings.url.get_secret_value(),
        timeout_s=settings.socket_timeout_s,
        max_connections=max_connections or settings.max_connections,
        subscriber=subscriber,
    )
