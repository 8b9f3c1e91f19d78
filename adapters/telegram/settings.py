"""The `[telegram]` settings section (PARLEY_TELEGRAM__*). Who may talk to the bot is in
`[telegram.access]` (bot.policy.AccessRules); where the webhook listens is `[http]`; the caps
on documents are `[documents]`."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, model_validator

from bot.adapter_registry import AdapterSettings
from bot.settings import HttpUrlText


def _https(url: str) -> str:
    # Telegram's setWebhook takes HTTPS URLs only: http:// would fail at every start.
    if url and urlsplit(url).scheme != "https":
        raise ValueError("not an https URL; Telegram posts webhooks over HTTPS only")
    return url


HttpsUrlText = Annotated[HttpUrlText, AfterValidator(_https)]
# What setWebhook takes as secret_token; anything else failed at every start (400).
_SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _secret_token(secret: SecretStr) -> SecretStr:
    value = secret.get_secret_value()
    if value and not _SECRET_TOKEN.fullmatch(value):  # empty: the same as unset
        raise ValueError("Telegram takes 1 to 256 characters A-Z, a-z, 0-9, _ and - only")
    return secret


SecretToken = Annotated[SecretStr, AfterValidator(_secret_token)]


class TelegramSettings(AdapterSettings):
    # From BotFather. Never logged; `parley config` shows it masked.
    token: SecretStr | None = None
    mode: Literal["polling", "webhook"] = "polling"
    # Webhook mode: the HTTPS URL Telegram posts to (behind your load balancer); its path is
    # where Parley's HTTP server ([http]) takes the posts.
    webhook_public_url: HttpsUrlText | None = None
    # Telegram sends it back in X-Telegram-Bot-Api-Secret-Token; required in webhook mode.
    webhook_secret_token: SecretToken | None = None
    # Seconds between two visible updates of a streamed answer; Telegram allows about one
    # message per second per chat.
    stream_interval_s: float = Field(1.0, ge=0.05)
    # Private chats stream as a draft (sendMessageDraft) instead of editing a message.
    use_drafts: bool = True
    # Another Bot API server (self-hosted or a test stand-in), e.g. http://127.0.0.1:8081/bot
    base_url: HttpUrlText = Field("https://api.telegram.org/bot", min_length=1)

    @model_validator(mode="after")
    def _webhook_needs_url_and_secret(self) -> Self:
        if self.mode == "webhook" and not (self.webhook_public_url and self.webhook_secret_token):
            raise ValueError(
                "telegram.webhook_public_url and telegram.webhook_secret_token are required "
                "when mode is webhook"
            )
        return self
