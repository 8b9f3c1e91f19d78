"""The `[support]` settings section (PARLEY_SUPPORT__*). Sites, their origins and keys live in
SQL (`parley support site add`, docs/support.md); what is here holds for every site."""

from __future__ import annotations

from pydantic import Field, SecretStr

from bot.adapter_registry import AdapterSettings

from .webhooks import WebhookTarget


class SupportSettings(AdapterSettings):
    # Signs visitor tokens (HMAC-SHA256). Unset: a random secret is generated once and kept in
    # Parley's data folder (support-token-secret); workers behind one load balancer must share
    # it, so set it in production.
    token_secret: SecretStr | None = None
    # How long a visitor token is valid; the widget renews it (POST /v1/visitors with the old
    # token) and keeps the same visitor.
    token_ttl_s: int = Field(30 * 86400, ge=60)
    # Per visitor: at most visitor_messages messages per rate_window_s; per client address: at
    # most ip_requests requests (messages and new visitors). Shared across workers via Redis.
    visitor_messages: int = Field(20, ge=1)
    ip_requests: int = Field(120, ge=1)
    rate_window_s: float = Field(60.0, gt=0)
    # Largest request body; larger ones get 413 before they are read.
    max_body_bytes: int = Field(64_000, ge=1024)
    # Events kept per conversation for resuming a stream (Redis: MAXLEN ~, and a TTL).
    events_kept: int = Field(1000, ge=10)
    events_ttl_s: int = Field(86400, ge=60)
    # Seconds between keep-alive comments on an idle event stream.
    keepalive_s: float = Field(15.0, gt=0)
    # Largest page of GET /v1/history.
    history_max_page: int = Field(100, ge=1, le=1000)
    # Event streams open at once on one worker: per visitor (a few tabs) and per address.
    streams_per_visitor: int = Field(5, ge=1)
    streams_per_address: int = Field(100, ge=1)
    # Serve the widget's demo page at `/` (adapters/support/pages.py), for the site whose
    # public key is demo_site_key (its origins must include Parley's own address).
    demo: bool = False
    demo_site_key: str = ""
    # Signed outbound webhooks of handoff events (adapters/support/webhooks.py,
    # docs/support-desk.md). A site's own receiver, by site name; `webhook` gets the events of
    # every other conversation: sites without their own, and Telegram, Discord, ... users.
    webhooks: dict[str, WebhookTarget] = Field(
        default_factory=dict,
        description="site name -> {url, secret}: that site's handoff events",
    )
    webhook: WebhookTarget | None = Field(
        None, description="{url, secret}: handoff events of every other conversation"
    )
    webhook_attempts: int = Field(
        6, ge=1, le=20, description="tries per event (a 5xx, 429 or no answer is retried)"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="seconds one delivery may take")
    webhook_backoff_max_s: float = Field(
        60.0, gt=0, description="longest wait between two tries (exponential from 0.5 s)"
    )
