"""The `[chatwoot]` settings section (PARLEY_CHATWOOT__*); docs/support-desk.md walks through
where each value comes from in Chatwoot."""

from __future__ import annotations

import re

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator

from bot.adapter_registry import AdapterSettings
from bot.settings import HeaderSecret

# Chatwoot's own secrets are 24 characters or more; a shorter one is a mistake (and an empty
# key would let anyone sign a webhook: a blank setting is no secret).
SECRET_MIN = 16
# What one segment of a URL's path holds as it is (RFC 3986 pchar, less percent-encoding).
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]+")


class ChatwootSettings(AdapterSettings):
    url: AnyHttpUrl | None = Field(
        None, description="Chatwoot's address, e.g. https://chatwoot.example.com"
    )
    api_access_token: HeaderSecret = Field(
        None,
        description="The agent bot's access token (Settings -> Bots -> the bot); sent as the "
        "api_access_token header, never logged",
    )
    account_id: int | None = Field(
        None,
        ge=1,
        description="The only Chatwoot account served: webhooks of any other account are "
        "refused (403) and nothing is recorded; also the account of conversation webhooks that "
        "name none. Unset: every account the token's webhooks come from",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="The agent bot's webhook secret (Chatwoot 4.13 and later): each webhook's "
        "X-Chatwoot-Signature (HMAC-SHA256 over 'timestamp.body') is checked with it",
    )
    account_webhook_secret: SecretStr | None = Field(
        None,
        description="The secret of the account webhook (Settings -> Integrations -> Webhooks) "
        "that sends conversation_status_changed and conversation_updated to the same URL; "
        "its deliveries are signed with it",
    )
    path_secret: SecretStr | None = Field(
        None,
        description="For Chatwoot versions that do not sign agent bot webhooks: the webhook "
        "URL is /chatwoot/webhook/<path_secret>; use a long random string of letters and digits "
        "(`openssl rand -hex 24`)",
    )
    max_age_s: int = Field(
        300,
        ge=10,
        description="A signed webhook whose timestamp is further than this from now is refused "
        "(replays)",
    )
    # Chatwoot takes messages of up to 150,000 characters and sends each twice in a webhook
    # (`content` and the conversation's last message): 100,000 Chinese characters made 601 kB,
    # refused at the 512 kB this was (a helper's review). Rails writes `<`, `>` and `&` as
    # six bytes each (\u003c): 2 x 150,000 x 6 bytes, and room.
    max_body_bytes: int = Field(
        2_000_000, ge=4096, description="Largest webhook body; larger ones get 413 unread"
    )
    agent_reply_prefix: str = Field(
        "/reply ",
        min_length=1,
        description="An agent's private note that starts with this is sent to the customer, "
        "translated into the customer's language; other notes stay private",
    )
    timeout_s: float = Field(10.0, gt=0, description="Per request to Chatwoot's API")
    retries: int = Field(
        4,
        ge=0,
        le=10,
        description="Retries of a request Chatwoot answered 429 or 5xx, or that failed on the "
        "network; a message is posted again only when Chatwoot surely did not create it (429, "
        "503, no connection), never after a timeout or another 5xx (it would show twice)",
    )
    max_connections: int = Field(10, ge=1, description="Connections to Chatwoot's API at once")

    @field_validator("webhook_secret", "account_webhook_secret", "path_secret")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # Blank (an empty variable of a shared compose file or template) is no secret: unset,
        # never the empty key anyone can sign with (`create` still wants one when the adapter
        # runs). Otherwise 16 characters at least, blanks at its ends not counted (a letter and
        # 15 spaces is one character of secret); the message says characters (pydantic's
        # min_length says "items"), never the value.
        if value is None or not value.get_secret_value().strip():
            return None
        if len(value.get_secret_value().strip()) < SECRET_MIN:
            raise ValueError(
                f"must be at least {SECRET_MIN} characters: copy Chatwoot's secret (a path "
                "secret: a long random string) or leave the setting out"
            )
        # Without those blanks (an .env file with Windows line ends ends each value in "\r"):
        # Chatwoot's secrets have none, nor can a URL's path end in one, and kept in the HMAC
        # key or the path they had every delivery refused.
        return SecretStr(value.get_secret_value().strip())

    @field_validator("path_secret")
    @classmethod
    def _one_path_segment(cls, value: SecretStr | None) -> SecretStr | None:
        # The webhook URL's last segment as Chatwoot posts to it: `openssl rand -base64` gives
        # "/" (two segments, and every delivery was a 404, lost), "?" and "#" end the path,
        # "%" is decoded. The message names the characters, never the value.
        if value is not None and not _PATH_SEGMENT.fullmatch(value.get_secret_value()):
            raise ValueError(
                "may hold only letters, digits and - . _ ~ + = ! $ & ' ( ) * , ; : @ (it is a "
                "part of the webhook URL, which / ? # % or a blank would break): "
                "`openssl rand -hex 24` makes one"
            )
        return value

    def serves_http(self) -> bool:
        return True  # Chatwoot's webhooks

    def missing(self) -> str | None:
        token = self.api_access_token
        unset = [
            name
            for name, given in (
                ("PARLEY_CHATWOOT__URL", self.url is not None),
                (
                    "PARLEY_CHATWOOT__API_ACCESS_TOKEN",
                    token is not None and bool(token.get_secret_value().strip()),
                ),
            )
            if not given
        ]
        if unset:
            return f"{' and '.join(unset)}: required when the chatwoot adapter runs"
        if self.webhook_secret is None and self.path_secret is None:
            return (
                "PARLEY_CHATWOOT__WEBHOOK_SECRET (Chatwoot 4.13+ signs webhooks) or "
                "PARLEY_CHATWOOT__PATH_SECRET: one is required to authenticate Chatwoot's webhooks"
            )
        return None
