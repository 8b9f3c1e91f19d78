"""The `[support]` settings section (PARLEY_SUPPORT__*). Sites, their origins and keys live in
SQL (`parley support site add`, docs/support.md); what is here holds for every site."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr, field_validator

from bot.adapter_registry import AdapterSettings
from bot.errors import ConfigError

from .tokens import TOKEN_SECRET_MIN
from .webhooks import WebhookTarget

if TYPE_CHECKING:
    from bot.settings import Settings

WEBHOOK_SECRET_MIN = 16


class SupportSettings(AdapterSettings):
    # Signs visitor tokens (HMAC-SHA256). Unset: a random secret is generated once and kept in
    # Parley's data folder (support-token-secret); workers behind one load balancer must share
    # it, so set it in production.
    token_secret: SecretStr | None = Field(
        None, description=f"signs visitor tokens: at least {TOKEN_SECRET_MIN} characters"
    )
    # How long a visitor token is valid; the widget renews it (POST /v1/visitors with the old
    # token) and keeps the same visitor.
    token_ttl_s: int = Field(30 * 86400, ge=60)
    # Per visitor: at most visitor_messages messages per rate_window_s; per client address: at
    # most ip_requests requests (messages, new visitors, history pages, erasures), and apart
    # from them at most ip_requests event streams opened. Shared across workers via Redis.
    visitor_messages: int = Field(20, ge=1)
    ip_requests: int = Field(120, ge=1)
    rate_window_s: float = Field(60.0, gt=0)
    # Largest request body; larger ones get 413 before they are read.
    max_body_bytes: int = Field(64_000, ge=1024)
    # Events kept per conversation for resuming a stream (Redis: MAXLEN ~, and a TTL).
    events_kept: int = Field(1000, ge=10)
    events_ttl_s: int = Field(86400, ge=60)
    # Seconds between keep-alive events on an idle event stream.
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

    def serves_http(self) -> bool:
        return True  # the API (and the demo page) is all it serves

    @field_validator("token_secret")
    @classmethod
    def _long_token_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The message says characters (pydantic's min_length says "items"), never the value.
        # Blanks at its ends are not counted: 32 spaces are no secret (as Chatwoot's settings).
        if value is not None and len(value.get_secret_value().strip()) < TOKEN_SECRET_MIN:
            raise ValueError(
                f"must be at least {TOKEN_SECRET_MIN} characters "
                "(make one with `openssl rand -base64 48`)"
            )
        return value

    @field_validator("webhook", mode="before")
    @classmethod
    def _long_webhook_secret(cls, value: Any) -> Any:
        if _short_secret(value):
            raise ValueError(f"the secret must be at least {WEBHOOK_SECRET_MIN} characters")
        return value

    @field_validator("webhooks", mode="before")
    @classmethod
    def _long_webhooks_secrets(cls, value: Any) -> Any:
        """Checked here, not left to WebhookTarget's min_length: pydantic would say "items",
        and the settings' error would name PARLEY_SUPPORT__WEBHOOKS__<SITE>__SECRET, a
        variable nobody set when the section came as one JSON value."""
        if isinstance(value, Mapping):
            for site, target in value.items():
                if _short_secret(target):
                    raise ValueError(
                        f"the secret of {str(site)[:64]!r} must be at least "
                        f"{WEBHOOK_SECRET_MIN} characters"
                    )
        return value


def _short_secret(target: Any) -> bool:
    """Whether a webhook target, as read from a setting, has a secret too short to sign with
    (what else is wrong with it WebhookTarget's own validation says); blanks at its ends are
    not counted: 16 spaces are no secret."""
    if not isinstance(target, Mapping):
        return False
    secret = target.get("secret")
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return isinstance(secret, str) and len(secret.strip()) < WEBHOOK_SECRET_MIN


async def doctor(section: SupportSettings, core: Settings) -> str:
    """`parley doctor`: whether visitor tokens are signed with a secret every worker shares,
    and whether each site `support.webhooks` names exists.

    Tokens: unset, each worker generates its own secret (adapters/support/tokens.py): one
    worker is fine, but with PostgreSQL or Redis several may serve one site, and a token made
    by one is refused by the others."""
    said = await _webhook_sites(section, core)
    if section.token_secret is not None:
        return "; ".join([*said, "visitor tokens signed with support.token_secret"])
    shared = [
        name
        for name, used in (("PostgreSQL", not core.database.is_sqlite),
                           ("Redis", core.redis.url is not None))
        if used
    ]  # fmt: skip
    if shared:
        raise ConfigError(
            f"support.token_secret is not set: with {' and '.join(shared)} several workers "
            "may serve, each would sign visitor tokens with its own secret and refuse the "
            "others'; set PARLEY_SUPPORT__TOKEN_SECRET (openssl rand -base64 48), the same on "
            "every worker"
        )
    return "; ".join([
        *said,
        "visitor tokens signed with a secret generated in the data folder: fine for one "
        "worker; set support.token_secret before running several",
    ])  # fmt: skip


async def _webhook_sites(section: SupportSettings, core: Settings) -> list[str]:
    """What `support.webhooks` reaches: a site name no site has (a typo) means that site's
    visitors who ask for a person are told nobody can be reached. Read from the database's
    sites; one that cannot be read is the database check's to report."""
    if not section.webhooks:
        return []
    from bot.storage.database import create_engine  # only when there are webhooks to check

    from .sites import SiteStore

    engine = create_engine(core.database.url.get_secret_value(), pool_size=1)
    try:
        names = {site.name for site in await SiteStore(engine).sites()}
    except Exception:  # unreachable, not migrated: `parley doctor`'s database line says so
        return ["support.webhooks: sites not checked (the database cannot be read)"]
    finally:
        await engine.dispose()
    unknown = sorted(set(section.webhooks) - names)
    if unknown:
        raise ConfigError(
            f"support.webhooks names {', '.join(repr(n[:64]) for n in unknown)}, which no "
            "site is: its visitors who ask for a person would reach nobody (parley support "
            "site list shows the sites)"
        )
    return [f"support.webhooks reach {len(section.webhooks)} site(s)"]
