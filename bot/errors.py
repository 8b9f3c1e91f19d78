"""Parley's one error tree.

    BotError                    base; `user_message` is what a chat user may see
    ├── ConfigError             a setting is missing or invalid (stops start-up, one line)
    ├── StorageError            the database cannot be used
    │   └── SchemaOutOfDate     the database schema is behind the code: run `parley db upgrade`
    ├── BackendError            the language model failed
    │   ├── NoBackendConfigured no model is configured
    │   ├── BackendUnavailable  the server is down or refused the request
    │   ├── BackendTimeout      connect / first token / gap / total time limit passed
    │   └── ContextTooLong      the prompt does not fit the model's context
    ├── InputError              the user's message cannot be handled as sent
    │   ├── MessageTooLong
    │   └── UnknownCommand
    └── AdapterError            a platform API failed

Handlers map these to replies in one place (`bot.conversation.manager`); a traceback never
reaches a user.
"""

from __future__ import annotations


class BotError(Exception):
    user_message = "Something went wrong on my side. Please try again in a moment."

    def __init__(self, message: str = "", *, user_message: str | None = None) -> None:
        super().__init__(message or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class ConfigError(BotError):
    """A setting is missing or invalid. The message names the setting, never its value."""


class StorageError(BotError):
    pass


class SchemaOutOfDate(StorageError):
    pass


class BackendError(BotError):
    user_message = "The language model is not answering right now. Please try again shortly."


class NoBackendConfigured(BackendError):
    user_message = (
        "No language model is configured, so I can only run commands (try /help). "
        "The operator can set one with PARLEY_BACKEND__KIND=vllm or openai "
        "(see docs/backends.md)."
    )


class BackendUnavailable(BackendError):
    """`status`: the HTTP status where a server answered (None: unreachable, or in-process);
    `retry_after`: seconds the server asked to wait. Retry layers read both."""

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        retry_after: float | None = None,
        user_message: str | None = None,
    ) -> None:
        super().__init__(message, user_message=user_message)
        self.status = status
        self.retry_after = retry_after


class BackendTimeout(BackendError):
    user_message = "The language model took too long to answer. Please try again."


class ContextTooLong(BackendError):
    user_message = "This conversation is too long for the model. Send /reset to start afresh."


class InputError(BotError):
    user_message = "I could not handle that message."


class MessageTooLong(InputError):
    pass


class UnknownCommand(InputError):
    pass


class AdapterError(BotError):
    pass
