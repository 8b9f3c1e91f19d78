"""Parley's one error tree.

    BotError                    base; `user_message` is what a chat user may see
    ├── ConfigError             a setting is missing or invalid (stops start-up, one line)
    ├── StorageError            the database cannot be used
    │   ├── SchemaOutOfDate     the database schema is behind the code: run `parley db upgrade`
    │   └── SchemaTooNew        a newer Parley migrated the database: run that version
    ├── BackendError            the language model failed
    │   ├── NoBackendConfigured no model is configured
    │   ├── BackendUnavailable  the server is down or refused the request
    │   │   └── ClientBusy      every connection of Parley's own client is in use
    │   ├── BackendTimeout      connect / first token / gap / total time limit passed
    │   │   └── ReasoningTooLong  reasoned past max_tokens' worth without answering
    │   └── ContextTooLong      the prompt does not fit the model's context
    ├── InputError              the user's message cannot be handled as sent
    └── AdapterError            a platform API failed
        ├── PlatformAway        the platform did not answer
        └── MessageGone         the message being edited was deleted in the chat

Handlers map these to replies in one place (`bot.conversation.manager`), in the user's
language (`bot.phrases` translates the sentences below); a traceback never reaches a user.
"""

from __future__ import annotations

from bot import phrases


class BotError(Exception):
    user_message = phrases.GENERIC

    def __init__(self, message: str = "", *, user_message: str | None = None) -> None:
        super().__init__(message or self.user_message)
        if user_message is not None:
            self.user_message = user_message


class ConfigError(BotError):
    """A setting is missing or invalid. The message names the setting, never its value."""


class StorageError(BotError):
    # What the driver's code said, in words naming the database where the raiser had its URL
    # (bot.storage.database.known_failure): for whoever catches it without the URL.
    known: str = ""


class SchemaOutOfDate(StorageError):
    pass


class SchemaTooNew(StorageError):
    """No restart or migration of this code helps: the operator must run the newer Parley."""


class BackendError(BotError):
    user_message = phrases.UNAVAILABLE


class NoBackendConfigured(BackendError):
    user_message = phrases.NO_MODEL


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


class ClientBusy(BackendUnavailable):
    """No connection of Parley's own client to the server came free in time (its pool is
    bounded): a limit of this process, which says nothing about the server's health."""


class BackendTimeout(BackendError):
    user_message = phrases.TIMEOUT


class ReasoningTooLong(BackendTimeout):
    """A thinking model reasoned past what its max_tokens allows without answering: not
    retried, since a second try would reason as long again."""


class ContextTooLong(BackendError):
    user_message = phrases.CONTEXT_TOO_LONG


class InputError(BotError):
    user_message = phrases.UNHANDLED_INPUT


class AdapterError(BotError):
    pass


class PlatformAway(AdapterError):
    """The platform did not answer: no connection, a timeout, or a server error after the
    client's own retries. What was asked of it may not have happened, and it may answer again
    soon: an answer it cuts short is not recorded as shown, its turn waits for the platform
    (the manager's OutputAway) and is finished in place once it is back. Any other
    AdapterError is a refusal (a blocked chat, a message the platform will not take)."""


class MessageGone(AdapterError):
    """The message an answer is shown in was deleted in the chat while it was shown (a
    moderator: Telegram's "message to edit not found", Discord's Unknown Message). A refusal:
    the answer is shown no more, and it is recorded as a deleted message is (its stub), its
    question answered."""
