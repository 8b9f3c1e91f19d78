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
# A user's or chat's id (a group's is negative), as [telegram.access] takes them.
_TELEGRAM_ID = re.compile(r"-?[0-9]+")
# A bot token as BotFather gives it: the bot's id, a colon, then (today) 35 characters of
# A-Z a-z 0-9 _ - ("110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw", core.telegram.org/bots/api).
# The length is not checked: Telegram does not promise it.
_BOT_TOKEN = re.compile(r"[0-9]+:[A-Za-z0-9_-]+")


def _bot_token(token: SecretStr | None) -> SecretStr | None:
    if token is None or not token.get_secret_value():  # empty: the same as unset
        return None
    if not _BOT_TOKEN.fullmatch(token.get_secret_value()):  # the token itself is never quoted
        raise ValueError(
            "not a bot token: BotFather's look like 123456789:AAH... (the bot's id, a colon, "
            "then letters, digits, _ and -)"
        )
    return token


BotToken = Annotated[SecretStr | None, AfterValidator(_bot_token)]


class TelegramSettings(AdapterSettings):
    # From BotFather. Never logged; `parley config` shows it masked.
    token: BotToken = None
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
    # Link previews under the bot's messages. Off: Telegram's servers fetch a previewed link
    # the moment the message arrives, so a link that a prompt injection had the model write
    # (a secret in its query) would reach its owner with no one clicking (docs/security.md).
    link_previews: bool = False
    # Another Bot API server (self-hosted or a test stand-in), e.g. http://127.0.0.1:8081/bot
    base_url: HttpUrlText = Field("https://api.telegram.org/bot", min_length=1)

    def missing(self) -> str | None:
        if self.token is None:
            return "PARLEY_TELEGRAM__TOKEN: required when the telegram adapter runs"
        return None

    def serves_http(self) -> bool:
        return self.mode == "webhook"  # polling opens no port

    @model_validator(mode="after")
    def _webhook_needs_url_and_secret(self) -> Self:
        if self.mode == "webhook" and not (self.webhook_public_url and self.webhook_secret_token):
            raise ValueError(
                "telegram.webhook_public_url and telegram.webhook_secret_token are required "
                "when mode is webhook"
            )
        return self

    @model_validator(mode="after")
    def _ids_are_numbers(self) -> Self:
        # Telegram knows users and chats by number (a group's is negative); an @username or a
        # typo would match no one, and an allow list of only that would lock everyone out.
        rules = self.access
        for name in ("allowed_users", "blocked_users", "allowed_chats", "blocked_chats", "admins"):
            wrong = [i for i in getattr(rules, name) if not _TELEGRAM_ID.fullmatch(i)]
            if wrong:
                raise ValueError(
                    f"telegram.access.{name}: {', '.join(map(repr, wrong))} is not a Telegram "
                    "id (a number, as @userinfobot shows it; @usernames are not taken)"
                )
        return self
