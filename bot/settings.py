"""Settings: one object, built once at start and passed down.

Sources, strongest first: environment variables `PARLEY_*` (nested with `__`, e.g.
`PARLEY_BACKEND__KIND=vllm`), a `.env` file, `config/parley.toml` (or the file named by
`PARLEY_CONFIG`), then the defaults written here. `config/parley.toml` lists every setting.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bot.errors import ConfigError

DEFAULT_CONFIG_FILE = Path("config/parley.toml")


class DatabaseSettings(BaseModel):
    # A SecretStr because a PostgreSQL URL usually carries a password.
    url: SecretStr = SecretStr("sqlite+aiosqlite:///var/parley.db")
    echo: bool = False
    pool_size: int = Field(10, ge=1, le=200)
    # None: migrate SQLite on start, refuse to start on an out-of-date server database.
    auto_migrate: bool | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_secret_value().startswith("sqlite")


class RedisSettings(BaseModel):
    url: SecretStr | None = None
    key_prefix: str = "parley"
    socket_timeout_s: float = Field(1.0, gt=0)
    # After a failed call the cache is bypassed (SQL only) for this long before Redis is tried.
    retry_after_failure_s: float = Field(5.0, ge=0)
    # Connections per worker; more concurrent calls wait for one (up to 10 s).
    max_connections: int = Field(50, ge=2)


class TimeoutSettings(BaseModel):
    connect_s: float = Field(5.0, gt=0)
    first_token_s: float = Field(60.0, gt=0)
    gap_s: float = Field(30.0, gt=0)
    total_s: float = Field(300.0, gt=0)


class RetrySettings(BaseModel):
    # Tries per backend, the first included; retries happen only before any text was shown.
    attempts: int = Field(3, ge=1, le=10)
    base_delay_s: float = Field(0.2, ge=0)
    max_delay_s: float = Field(5.0, ge=0)
    # A server's Retry-After is honoured up to this many seconds.
    max_retry_after_s: float = Field(10.0, ge=0)
    # Retries may add at most this share of recent requests (a retry budget).
    budget_ratio: float = Field(0.2, ge=0, le=1)
    # Retries allowed before any request has earned budget (and the most saved up).
    budget_min_retries: int = Field(3, ge=0)


class BreakerSettings(BaseModel):
    # Opens after this many failures in a row ...
    failure_threshold: int = Field(5, ge=1)
    # ... or when this share of the last `window` requests failed (once `min_requests` were seen).
    failure_ratio: float = Field(0.5, gt=0, le=1)
    window: int = Field(20, ge=1)
    min_requests: int = Field(10, ge=1)
    # Seconds an open breaker waits before one probe request is let through.
    open_s: float = Field(30.0, gt=0)


class FallbackSettings(BaseModel):
    """Another backend tried when the ones before it fail; the rest comes from [backend]."""

    kind: Literal["vllm", "openai"] = "openai"
    model: str
    base_url: str | None = None
    api_key: SecretStr | None = None
    max_model_len: int | None = Field(None, ge=64)
    # Shown to users in the fallback notice; default: the model name.
    label: str = ""

    @model_validator(mode="after")
    def _openai_needs_url(self) -> Self:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("backend.fallbacks: base_url is required when kind is openai")
        return self


class BackendSettings(BaseModel):
    kind: Literal["none", "vllm", "openai"] = "none"
    # vllm: a local model directory; openai: the model name the server knows.
    model: str = ""
    base_url: str | None = None
    api_key: SecretStr | None = None
    max_model_len: int | None = Field(None, ge=64)
    # openai: a local folder with the served model's tokenizer files (e.g. the model folder
    # the server loads). Token counts are then computed here instead of with one /tokenize
    # request per message; needs the `transformers` package. Empty: ask the server.
    tokenizer: str = ""
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    dtype: str = "auto"
    timeouts: TimeoutSettings = TimeoutSettings()
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    fallbacks: list[FallbackSettings] = []

    @model_validator(mode="after")
    def _needs_what_kind_needs(self) -> Self:
        if self.kind == "vllm" and not self.model:
            raise ValueError("backend.model must name a local model directory when kind is vllm")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("backend.base_url and backend.model are required when kind is openai")
        return self


class ConversationSettings(BaseModel):
    system_prompt: str = (
        "You are Parley, a concise and helpful assistant. Answer in the user's language."
    )
    # Tokens of history (summary + turns) kept in the prompt; capped by the model's context.
    context_tokens: int = Field(3072, ge=64)
    # Tokens the folded summary of older turns may take.
    summary_tokens: int = Field(256, ge=16)
    burst: Literal["merge", "queue"] = "merge"
    lock_ttl_s: float = Field(30.0, gt=0)
    lock_wait_s: float = Field(300.0, gt=0)
    max_message_chars: int = Field(8000, ge=1)
    history_limit: int = Field(20, ge=1, le=500)
    # Per user, across workers (Redis) or in this process: at most rate_limit_messages
    # messages per rate_limit_window_s; more are recorded, answered with one sentence asking
    # the user to slow down, and not sent to the model. 0 turns the limit off.
    rate_limit_messages: int = Field(20, ge=0)
    rate_limit_window_s: float = Field(60.0, gt=0)


class KnowledgeSettings(BaseModel):
    # Loaded into an empty knowledge base at start; relative paths are tried from the working
    # directory, then from Parley's own folder.
    sample_dir: str = "docs"
    load_sample: bool = True
    # Bigger files are reported and skipped by `parley kb add`.
    max_file_mb: int = Field(50, ge=1)


class SkillsSettings(BaseModel):
    # A folder of Jinja2 templates (qa.j2, summarize.j2, ...) that replace the shipped ones in
    # config/prompts/ by name; the shipped ones stay in use for any file it lacks.
    prompts_dir: str | None = None
    # Terms never translated (product names, jargon), matched as whole words.
    glossary: list[str] = []
    # The language of summaries and translations for a user who has not set one with /lang
    # and whose text's language cannot be detected (ISO 639-1).
    default_language: str = "en"
    # /ask: passages retrieved, and the lowest search score that counts as relevant.
    qa_passages: int = Field(3, ge=1, le=20)
    qa_min_score: float = Field(0.0, ge=0)
    # Token budgets of one summary ("short" and "long") and sentences of one without a model.
    summary_short_tokens: int = Field(160, ge=16)
    summary_long_tokens: int = Field(400, ge=16)
    extractive_sentences: int = Field(5, ge=1, le=50)
    # "What did I miss": at most this many hours back, and at most this many messages.
    missed_hours: float = Field(24.0, gt=0)
    missed_max_messages: int = Field(500, ge=1)
    # Longest text /summarize and /translate take after the command (or in a document).
    max_paste_chars: int = Field(400_000, ge=1)
    # Plain messages no pattern matched are classified by the model (structured output) when
    # the backend supports it; false: such messages always go to chat.
    model_intents: bool = True


class ConsoleSettings(BaseModel):
    user: str = "local"
    chat: str = "console"


class TelegramSettings(BaseModel):
    # From BotFather. Never logged; `parley config` shows it masked.
    token: SecretStr | None = None
    mode: Literal["polling", "webhook"] = "polling"
    # Webhook mode: the HTTPS URL Telegram posts to (behind your load balancer) and where
    # Parley's own HTTP server listens for it.
    webhook_public_url: str | None = None
    webhook_listen_host: str = "127.0.0.1"
    webhook_listen_port: int = Field(8443, ge=1, le=65535)
    # Telegram sends it back in X-Telegram-Bot-Api-Secret-Token; required in webhook mode.
    webhook_secret_token: SecretStr | None = None
    # Empty: everyone may talk to the bot. Admins are always allowed.
    allowed_user_ids: list[int] = []
    allowed_chat_ids: list[int] = []
    admin_ids: list[int] = []
    # Seconds between two visible updates of a streamed answer; Telegram allows about one
    # message per second per chat.
    stream_interval_s: float = Field(1.0, ge=0.05)
    # Private chats stream as a draft (sendMessageDraft) instead of editing a message.
    use_drafts: bool = True
    # Documents larger than this are refused with a short sentence.
    max_document_bytes: int = Field(2_000_000, ge=1, le=20_000_000)
    # Another Bot API server (self-hosted or a test stand-in), e.g. http://127.0.0.1:8081/bot
    base_url: str = "https://api.telegram.org/bot"

    @model_validator(mode="after")
    def _webhook_needs_url_and_secret(self) -> Self:
        if self.mode == "webhook" and not (self.webhook_public_url and self.webhook_secret_token):
            raise ValueError(
                "telegram.webhook_public_url and telegram.webhook_secret_token are required "
                "when mode is webhook"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    adapters: list[Literal["console", "telegram"]] = ["console"]
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    backend: BackendSettings = BackendSettings()
    conversation: ConversationSettings = ConversationSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    skills: SkillsSettings = SkillsSettings()
    console: ConsoleSettings = ConsoleSettings()
    telegram: TelegramSettings = TelegramSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values (see load_settings); the environment beats it.
        return env_settings, dotenv_settings, init_settings, file_secret_settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None


def _describe(exc: ValidationError) -> str:
    """One line naming each bad setting and what is wrong, never the value itself."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        name = "PARLEY_" + "__".join(loc).upper() if loc else "settings"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{name}: {msg}")
    return "invalid setting " + "; ".join(parts)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the Settings from every source, or raise ConfigError with a one-line reason."""
    if config_file is None:
        env_path = os.environ.get("PARLEY_CONFIG")
        config_file = Path(env_path) if env_path else DEFAULT_CONFIG_FILE
        if not env_path and not config_file.exists():
            config_file = None
    values = _read_toml(config_file) if config_file is not None else {}
    values.pop("config", None)
    _merge(values, overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
