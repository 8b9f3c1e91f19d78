"""How Parley connects to Redis: one recipe for every client it opens (the cache, the token
budgets' counters, the adapters' outbound gates, the support channel's event log).

- A blocking pool of `max_connections`: a burst of calls waits up to POOL_WAIT_S for a
  connection instead of failing with "Too many connections". The client owns its pool
  (`Redis.from_pool`): closing the client closes its connections.
- `socket_timeout_s` bounds connecting and each reply (`RedisSettings.socket_timeout_s`): a
  call that has a connection to a Redis that hangs fails after that long, and the caller
  goes on without Redis for a while (bot.outage.Outage). A subscriber's connection waits for
  messages without end (it is idle between them).
- Retries: none, unless `retry_dropped` (the cache, whose calls are safe to send twice):
  then a call whose connection turned out broken (Redis restarted and dropped it) is sent
  once more, at once, on a new one. A call that timed out is never sent again: against a
  frozen Redis that only doubles the wait. The other clients' calls are not sent twice even
  then: a gate's take repeated finds its own slot and waits `hold_s` for it, an event log's
  append repeated shows a delta twice, a budget's reservation or settlement repeated counts
  its tokens twice, and a subscriber that resubscribed by itself would skip its catch-up. A
  dropped connection costs them one failed call, which they handle as any outage.
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


def connect(
    url: str,
    *,
    timeout_s: float,
    max_connections: int,
    retry_dropped: bool = False,
    subscriber: bool = False,
) -> Redis:
    """A client of `url` on Parley's terms (above)."""
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
        retry=Retry(NoBackoff(), 1 if retry_dropped else 0, supported_errors=(BrokenConnection,)),
    )
    return Redis.from_pool(pool)


def client_for(
    settings: RedisSettings,
    *,
    max_connections: int | None = None,
    retry_dropped: bool = False,
    subscriber: bool = False,
) -> Redis | None:
    """The client `settings` configure; None without a URL. `max_connections`: this
    client's own bound, where it is not the settings' (`redis.max_connections`)."""
    if settings.url is None:
        return None
    return connect(
        settings.url.get_secret_value(),
        timeout_s=settings.socket_timeout_s,
        max_connections=max_connections or settings.max_connections,
        retry_dropped=retry_dropped,
        subscriber=subscriber,
    )
