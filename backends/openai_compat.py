"""A backend over an OpenAI-compatible HTTP server: vLLM's, `transformers serve`, or others.

`base_url` is the server root (`http://host:8000`); a trailing `/v1` is accepted and dropped,
because vLLM serves `/tokenize` and `/health` beside `/v1`, not under it.

Capabilities come from the server where it says: `max_model_len` from the model's `/v1/models`
entry (vLLM reports it), else `settings.max_model_len`, else DEFAULT_MAX_MODEL_LEN. Token
counts come from the served model's tokenizer loaded here when `settings.tokenizer` names its
folder (no request per count), else from vLLM's `/tokenize`; a server without it gets
`backends.base.estimate_tokens` and `exact_token_counts=False`. At most
`settings.max_count_requests` `/tokenize` requests are in flight per backend, however many
texts are counted at once (vLLM's `/tokenize` takes one prompt per request, so many texts are
many requests); a local tokenizer counts a whole list in one batch, off the event loop.

A server renders the chat template to text and tokenizes it, honouring special-token strings
wherever they are, so every message's content is sent neutralised
(`backends.control_tokens.neutralise`: a zero-width joiner inside each marker such as
`<|im_start|>` or `[INST]`; the tokenizer's own special tokens too when `settings.tokenizer`
is set). Token counts are of the neutralised text, which is what the server sees.

Errors (all `bot.errors.BackendError`):
    ServerUnavailable (BackendUnavailable)  unreachable, 429 or 5xx; `.status`, `.retry_after`
    ClientBusy (BackendUnavailable)  every connection of this client is in use (its limit,
                        not the server's failure: the circuit breaker does not count it)
    BackendTimeout      connect, first token, gap between chunks, or the whole reply too slow
    ContextTooLong      HTTP 400 whose message, type or code is about the context length
    BackendError        any other refusal, or a stream that cannot be parsed

An error's message says the status and the error body's `type`, `code` and `param`, never the
body's free text, only its length: servers quote the request there (vLLM's validation errors
the whole body, others the prompt), that is the user's text, and these errors are logged.

Close the stream early with `contextlib.aclosing` (or cancel the task): the HTTP response is
closed, and vLLM aborts a request whose client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from backends.base import (
    FINISH_LENGTH,
    Capabilities,
    Chunk,
    GenerationRequest,
    Usage,
    estimate_tokens,
)
from backends.control_tokens import DEFAULT_MARKERS, marker_pattern, neutralise, special_tokens
from backends.deadlines import Deadlines
from backends.inline_thinking import InlineThinking, Split, opened_by_template
from backends.pool import ShardedTransport
from bot.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ClientBusy,
    ConfigError,
    ContextTooLong,
    ReasoningTooLong,
)
from bot.settings import BackendSettings, TimeoutSettings
from bot.text.storable import REPLACEMENT
from bot.types import ChatMessage

log = logging.getLogger(__name__)

T = TypeVar("T")

# Used when neither the server nor the settings say; small enough to be safe for most models.
DEFAULT_MAX_MODEL_LEN = 4096
# Conversations streaming at once that the client is sized for: that many idle connections
# are kept for the next request. httpcore looks through every pooled connection to place each
# request, so a pool far larger than the work costs CPU per request (issue 19's profile: 4 of
# 11 CPU seconds at 64 conversations with up to 256 idle connections kept).
CONCURRENCY = 64
# Connections at most, as a multiple of CONCURRENCY: a burst above it still streams at once
# (the server batches it) instead of waiting for a connection; the pool stays bounded.
BURST_FACTOR = 4
# Below the server's own idle timeout (vLLM's uvicorn closes idle connections after 5 s,
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE): a connection reused as the server closes it fails the request
# with a read error, which costs a retry.
KEEPALIVE_EXPIRY_S = 4.0


def connection_limits(concurrency: int = CONCURRENCY) -> httpx.Limits:
    """The bounded pool of one client: `concurrency` idle connections kept for reuse, at most
    BURST_FACTOR times that open at once."""
    return httpx.Limits(
        max_connections=concurrency * BURST_FACTOR,
        max_keepalive_connections=concurrency,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )


CONNECTION_LIMITS = connection_limits()
# The end of a reply's body after [DONE] is read for at most this long, so that its
# connection can be kept.
DRAIN_S = 1.0
# Texts longer than this are tokenised by a local tokenizer in a thread, not on the loop.
INLINE_TOKENIZE_CHARS = 4000
# A /tokenize that fails or does not answer within gap_s makes the counts estimates for
# COUNT_PAUSE_S: every message is counted before it is recorded, so a server whose /tokenize
# hangs held each one for gap_s, four at a time.
COUNT_PAUSE_S = 30.0
# What of a server's answer is read. A JSON answer (/v1/models, /tokenize) over its limit is
# refused; an error body is read up to its limit (its type and code are at the start).
MAX_JSON_BYTES = 16 * 2**20
MAX_ERROR_BYTES = 64 * 2**10
# A reply's text is cut at this many characters per token asked for (max_tokens), and more
# than that in one line of the event stream is refused: a server that ignores max_tokens, or
# sends a line that never ends, filled the process's memory.
MAX_CHARS_PER_TOKEN = 32
MIN_REPLY_CHARS = 16_384
# A line of the stream may hold the whole reply's text as JSON (escaped: up to 6 times as
# long) plus the event's fields.
LINE_FACTOR = 6
LINE_SLACK = 65_536
# The delta fields a thinking model's reasoning comes in (vLLM's reasoning parsers).
REASONING_FIELDS = ("reasoning_content", "reasoning")
# The most tokens a usage count may say: ten times the largest context served (10 million
# tokens), and within the 32-bit integer columns counts are stored in.
MAX_USAGE_TOKENS = 100_000_000

# Printable ASCII but "%", which is what encodes the rest.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")

# A 400 about the context length, in the words of vLLM ("maximum context length",
# "max_model_len", "maximum model length"), llama.cpp ("exceeds the available context size",
# type exceed_context_size_error) and OpenAI (code context_length_exceeded, "exceeds the
# context window"): in the error's message, type or code.
_CONTEXT_MESSAGE = re.compile(
    r"context[ _]length|maximum context|max_model_len|maximum model length"
    r"|context size|context window|exceed_context",
    re.IGNORECASE,
)
_LINE_END = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")
# An error body's `type`, `code` or `param` is kept where it is an identifier like these.
_ERROR_FIELD = re.compile(r"[\w.-]{1,64}")


# The shortest a try of /v1/models waits for its answer at start-up, however short the wait.
MIN_MODELS_WAIT_S = 5.0


class ServerUnavailable(BackendUnavailable):
    """The HTTP server is unreachable or answered 429 / 5xx (`.status`, `.retry_after`)."""


class OpenAICompatBackend:
    """The `Backend` protocol over `/v1/chat/completions` with server-sent events."""

    # Its stream ends itself at GenerationRequest.deadline (backends.deadlines.Deadlines).
    honours_deadline = True

    def __init__(
        self,
        settings: BackendSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        concurrency: int = CONCURRENCY,
    ) -> None:
        if not settings.base_url:
            raise BackendError("backend.base_url is required for an OpenAI-compatible server")
        self._settings = settings
        self._timeouts = settings.timeouts
        self._base_url = settings.base_url.rstrip("/").removesuffix("/v1")
        limits = connection_limits(concurrency)
        if transport is None and not urllib.request.getproxies():
            # Its connections in small pools (backends.pool). With a proxy in the environment
            # (HTTP_PROXY, NO_PROXY, ...) httpx's own transport is kept: it alone applies them.
            transport = ShardedTransport(limits)
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers=_auth_headers(settings.api_key),
            timeout=_call_timeout(settings.timeouts),
            # One client for every request, its connections bounded (a transport given
            # brings its own).
            limits=limits,
            transport=transport,
        )
        self._capabilities = Capabilities(
            name="openai",
            model=settings.model,
            max_model_len=settings.max_model_len or DEFAULT_MAX_MODEL_LEN,
            exact_token_counts=False,
        )
        self._started = False
        self._tokenizer: Any = None  # settings.tokenizer's, loaded first thing at start
        self._markers = DEFAULT_MARKERS  # with the tokenizer's special tokens once loaded
        self._opened = False  # its template ends the prompt in <think>: inline_thinking
        # One per backend: a long document's thousands of pieces must not become thousands of
        # concurrent requests (they starved the event loop and the server's tokenizer).
        self._count_slots = asyncio.Semaphore(settings.max_count_requests)
        self._counts_paused_until = 0.0  # time.monotonic(): /tokenize failed, not asked now

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def start(self) -> None:
        if self._started:
            return
        if self._settings.tokenizer and self._tokenizer is None:
            # Files here, before the server is asked: a missing extra or folder is the
            # operator's to fix (ConfigError), never waited for while the server starts.
            self._tokenizer = await asyncio.to_thread(_load_tokenizer, self._settings.tokenizer)
            self._markers = marker_pattern(special_tokens(self._tokenizer))
            self._opened = opened_by_template(self._tokenizer)
        try:
            entry = await self._model_entry()
        except BackendTimeout as exc:
            # It accepts connections and answers nothing (yet): a server still loading is
            # waited for (backend.startup_wait_s), like one that refuses connections.
            raise ServerUnavailable(f"{exc}: {self._base_url} did not answer") from exc
        served_len = entry.get("max_model_len")
        max_len = (
            int(served_len)
            if isinstance(served_len, int)
            else (self._settings.max_model_len or DEFAULT_MAX_MODEL_LEN)
        )
        exact = self._tokenizer is not None or await self._counts_as_vllm()
        self._capabilities = Capabilities("openai", self._settings.model, max_len, exact)
        self._started = True
        log.info("OpenAI-compatible server ready: max_model_len=%d exact=%s", max_len, exact)

    async def _counts_as_vllm(self) -> bool:
        """Whether the server has vLLM's /tokenize. Others of that name take other bodies:
        llama.cpp's reads `content` and answers no tokens for vLLM's `prompt` (every count
        was 0), Text Generation Inference's wants `inputs` and refuses (422: Parley did not
        start). A refusal, or no tokens for a word, is a server without it (estimates)."""
        try:
            count = await self._tokenize({"prompt": "ping"})
        except BackendUnavailable:
            raise  # not up yet: start-up waits for it
        except BackendTimeout as exc:
            # It answers nothing (yet): waited for like a silent /v1/models, not a failure.
            raise ServerUnavailable(f"{exc}: {self._base_url} did not answer") from exc
        except BackendError as exc:
            log.info("%s/tokenize is not vLLM's (%s): counts are estimated", self._base_url, exc)
            return False
        return bool(count)

    async def _model_entry(self) -> Mapping[str, Any]:
        # A quarter of the start-up wait at most: a silent server is tried again within it,
        # not waited on for the whole gap.
        quarter = self._settings.startup_wait_s / 4
        limit = min(self._timeouts.gap_s, max(quarter, MIN_MODELS_WAIT_S))
        timeout = httpx.Timeout(limit, connect=self._timeouts.connect_s)
        request = self._client.build_request("GET", "/v1/models", timeout=timeout)
        models = (await self._json(request) or {}).get("data")
        entries = [m for m in models if isinstance(m, dict)] if isinstance(models, list) else []
        for entry in entries:
            if entry.get("id") == self._settings.model:
                return entry
        if not entries:
            # Servers that load models on demand (transformers serve) list none until asked.
            log.info("%s lists no models; trusting the configured name", self._base_url)
            return {}
        served = ", ".join(sorted(str(m.get("id")) for m in entries)) or "none"
        raise BackendError(
            f"model {self._settings.model!r} not served by {self._base_url}; available: {served}"
        )

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        plain = [neutralise(t, self._markers) for t in texts]
        if not plain:
            return []
        if self._tokenizer is not None:
            return await self._locally(sum(map(len, plain)), self._encoded_lengths, plain)
        counts = [0] * len(plain)
        queue = iter(enumerate(plain))

        async def worker() -> None:
            for index, text in queue:  # the workers share one iterator
                counts[index] = await self._count_remotely(text)

        workers = min(len(plain), self._settings.max_count_requests)
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # callers expect a BackendError, not a group
        return counts

    async def _count_remotely(self, text: str) -> int:
        if self._started and not self._capabilities.exact_token_counts:
            return estimate_tokens(text)  # the server has no /tokenize: do not ask it again
        count = await self._tokenize({"prompt": text, "add_special_tokens": False})
        return estimate_tokens(text) if count is None else count

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of `messages` with the server's chat template and generation prompt."""
        chat = self._neutralised(messages)
        if self._tokenizer is not None:
            size = sum(len(m.content) for m in messages)
            return await self._locally(size, self._templated_length, chat)
        if self._started and not self._capabilities.exact_token_counts:
            count = None  # the server has no (vLLM's) /tokenize: do not ask it again
        else:
            count = await self._tokenize({"messages": chat, "add_generation_prompt": True})
        if count is None:
            return sum(estimate_tokens(f"{m.role.value}: {m.content}\n") for m in messages)
        return count

    def _neutralised(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """The chat as sent: roles as they are, contents without live control markers."""
        return [
            {"role": m.role.value, "content": neutralise(m.content, self._markers)}
            for m in messages
        ]

    async def _tokenize(self, body: dict[str, Any]) -> int | None:
        """Token count from vLLM's /tokenize, or None where the server has no such endpoint.
        Once started, a /tokenize that fails or is slow is not asked for COUNT_PAUSE_S: the
        callers estimate (ResilientBackend) instead of each waiting for it in turn."""
        request = self._client.build_request(
            "POST", "/tokenize", json={"model": self._settings.model, **body}
        )
        async with self._count_slots:
            if time.monotonic() < self._counts_paused_until:
                raise ServerUnavailable("/tokenize failed a moment ago; not asked again yet")
            try:
                found = await self._json(request, missing=(404, 405))
            except (BackendTimeout, ServerUnavailable) as exc:
                if self._started:
                    self._counts_paused_until = time.monotonic() + COUNT_PAUSE_S
                    log.warning(
                        "/tokenize failed (%s); token counts are estimated for %.0f s",
                        exc, COUNT_PAUSE_S,
                    )  # fmt: skip
                raise
        if found is None:
            self._mark_estimated()
            return None
        tokens = found.get("tokens")
        if not isinstance(tokens, list):
            raise BackendError("the server's /tokenize answer has no token list")
        return len(tokens)

    async def _json(
        self, request: httpx.Request, *, missing: tuple[int, ...] = ()
    ) -> Mapping[str, Any] | None:
        """A short call's JSON answer, read up to MAX_JSON_BYTES, or the error its status
        stands for; None for a status in `missing`."""
        response = await self._send(request, stream=True)
        try:
            if response.status_code in missing:
                return None
            if response.is_error:
                error = await _read_body(response, MAX_ERROR_BYTES, cut=True)
                raise _error_for(response.status_code, _parsed(error), response.headers)
            body = _parsed(await _read_body(response, MAX_JSON_BYTES))
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{request.url.path}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{request.url.path}: the answer broke: {exc!r}") from exc
        except httpx.DecodingError as exc:
            raise BackendError(f"{request.url.path}: the answer could not be decoded") from exc
        finally:
            await response.aclose()
        if not isinstance(body, dict):
            raise BackendError(f"{request.url.path}: the server did not answer with JSON")
        return body

    @staticmethod
    async def _locally(size: int, count: Callable[[Any], T], arg: Any) -> T:
        """`count(arg)` on the loop for short texts (tens of microseconds), in a thread for
        long ones (a pasted document takes milliseconds)."""
        if size <= INLINE_TOKENIZE_CHARS:
            return count(arg)
        return await asyncio.to_thread(count, arg)

    def _encoded_lengths(self, texts: list[str]) -> list[int]:
        # One batch call: the fast tokenizer encodes the list in Rust, not text by text.
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _templated_length(self, chat: list[dict[str, str]]) -> int:
        # The template the server applies to a chat request, then its tokens without special
        # tokens added on top (the template writes them): what vLLM's /tokenize counts too.
        text = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def _mark_estimated(self) -> None:
        if self._capabilities.exact_token_counts:
            caps = self._capabilities
            self._capabilities = Capabilities(caps.name, caps.model, caps.max_model_len, False)

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return await self._client.send(request, stream=stream)
        except httpx.PoolTimeout as exc:  # before TimeoutException, of which it is one
            raise ClientBusy(f"{request.url.path}: no free connection in this client") from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{request.url.path}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach {self._base_url}: {exc!r}") from exc

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        clock = Deadlines(self._timeouts, request.deadline)
        http_request = self._client.build_request(
            "POST",
            "/v1/chat/completions",
            json=self._chat_body(request),
            headers=_session_headers(request.session_id),
            # Reads are bounded by Deadlines (first token, gap, total), not by httpx.
            timeout=httpx.Timeout(self._timeouts.connect_s, read=None),
        )
        response = await clock.wait(self._send(http_request, stream=True))
        try:
            if response.is_error:
                # A body that never ends is a timeout; a long one is read up to its limit.
                body = await clock.wait(_read_body(response, MAX_ERROR_BYTES, cut=True))
                raise _error_for(response.status_code, _parsed(body), response.headers)
            kind = response.headers.get("content-type", "text/event-stream")
            if not kind.lower().startswith("text/event-stream"):
                # An HTML page from a proxy, say: its "data:" lines are not the model's.
                raise BackendError(f"the server answered {kind[:64]!r}, not an event stream")
            cap = max(MIN_REPLY_CHARS, request.max_tokens * MAX_CHARS_PER_TOKEN)
            reply = _read_reply(response, clock, cap, self._opened)
            async with contextlib.aclosing(reply) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            await response.aclose()

    def _chat_body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._settings.model,
            "messages": self._neutralised(request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.session_id:
            body["user"] = request.session_id
        if request.json_schema is not None:
            # vLLM: run the server with --structured-outputs-config '{"backend": "xgrammar",
            # "disable_any_whitespace": true}' so a weak model cannot pad JSON with blanks.
            body["response_format"] = _response_format(request.json_schema)
        return body

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass
class _Reply:
    """What the stream has said so far, besides the text deltas."""

    finish_reason: str | None = None
    usage: Usage | None = None
    done: bool = False
    held: str = ""  # a high surrogate that ended the last delta: the first half of a character
    thinking: bool = False  # the last event's delta was reasoning, not content
    reasoning_chars: int = 0  # characters of reasoning in the last event's delta

    def absorb(self, event: Mapping[str, Any]) -> str:
        """Take one chunk object; return its text delta."""
        if isinstance(event.get("usage"), dict):
            self.usage = _usage(event["usage"])
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        delta = choice.get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        # vLLM's reasoning parsers send a thinking model's reasoning as "reasoning_content"
        # (newer versions "reasoning"): not shown, but the model is answering.
        thoughts = [delta.get(key) for key in REASONING_FIELDS] if isinstance(delta, dict) else []
        # The longest, not the sum: vLLM releases between the two names send both, the same
        # text in each.
        self.reasoning_chars = max((len(t) for t in thoughts if isinstance(t, str)), default=0)
        self.thinking = self.reasoning_chars > 0
        return self._whole(content) if isinstance(content, str) else ""

    def _whole(self, text: str) -> str:
        """`text`, after the half character the last delta ended with, in whole characters.
        A server may cut a character outside the Basic Multilingual Plane between two events
        (its JSON's "\\ud83d" in one, "\\ude00" in the next): the halves are joined here, and
        a half with no partner becomes U+FFFD. A lone surrogate reached the adapters, which
        cannot encode it (a platform counts UTF-16 or sends UTF-8), and failed the turn."""
        text, self.held = self.held + text, ""
        if not _SURROGATE.search(text):
            return text
        if "\ud800" <= text[-1] <= "\udbff":
            text, self.held = text[:-1], text[-1]
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


async def _read_reply(
    response: httpx.Response, clock: Deadlines, max_chars: int, opened: bool = False
) -> AsyncGenerator[Chunk, None]:
    """Text chunks from the event stream, then one chunk with usage and finish reason. Past
    `max_chars` of text the reply is cut there and ends as one that ran into its max_tokens
    (a server that ignores max_tokens would otherwise stream until total_s). A thinking
    model's reasoning counts to `max_chars` too (its tokens count to max_tokens): reasoning
    past it with no text yet is a `ReasoningTooLong`. Reasoning written inline, in a
    `<think>` that begins the content (a server without a reasoning parser), is reasoning
    too (`backends.inline_thinking`), as is all up to a `</think>` where the template wrote
    the `<think>` (`opened`: known from a local tokenizer only)."""
    reply = _Reply()
    inline = InlineThinking(opened=opened)  # reasoning in the content: a server without parser
    left = max_chars
    thought = False  # a reasoning delta was passed on (as a chunk without text)
    shown = False  # text was passed on
    lines = _lines(response.aiter_text(), max_chars * LINE_FACTOR + LINE_SLACK)
    async with contextlib.aclosing(_sse_data(lines)) as events:
        while (data := await _next_event(events, clock, reply)) is not None:
            if data.strip() == "[DONE]":
                reply.done = True
                await _drain(events)
                break
            content = reply.absorb(_decode(data))
            if opened and reply.thinking:  # the server parses reasoning: content is answer
                inline, opened = InlineThinking(), False
            split = inline.feed(content) if content else Split()
            # A delta with reasoning both as `reasoning_content` and inline (llama.cpp's
            # `deepseek-legacy` format) has the same reasoning twice: it counts once, the
            # larger. Not the larger of the running totals: reasoning sent one way and then
            # more of it the other (a second `<think>` after a parser's reasoning) is two, and
            # counted so went past `max_chars` to up to twice it.
            text, reasoning = split.answer, max(reply.reasoning_chars, split.reasoning)
            # Reasoning is the model at work: the gap limit counts from it, not first_token_s.
            clock.chunk_arrived(bool(content or reply.thinking))
            left -= reasoning
            if left < 0:
                # Reasoning past what max_tokens allows: a server that ignores max_tokens, and
                # a model that reasons on, held the turn until total_s. Before any text, given
                # up and not retried (it would reason again); after some, cut as below.
                if not shown:
                    raise ReasoningTooLong(
                        f"the model reasoned past {max_chars} characters without answering"
                    )
                log.warning("the server sent more than %d characters; the reply is cut", max_chars)
                yield Chunk(finish_reason=FINISH_LENGTH)
                return
            if len(text) > left:
                if left:
                    yield Chunk(text=text[:left])
                log.warning("the server sent more than %d characters; the reply is cut", max_chars)
                yield Chunk(finish_reason=FINISH_LENGTH)
                return
            left -= len(text)
            if inline.undecided > left:
                # Blanks held as what may lead to a "<think>" are text too: a model writing
                # only newlines, on a server that ignores max_tokens, held the turn until
                # total_s (and then all of them came as the answer).
                if rest := inline.flush().answer[:left]:
                    yield Chunk(text=rest)
                log.warning("the server sent more than %d characters; the reply is cut", max_chars)
                yield Chunk(finish_reason=FINISH_LENGTH)
                return
            if text:
                shown = True
                yield Chunk(text=text)
            elif (reasoning or inline.thinking) and not thought:
                thought = True
                yield Chunk()  # once: the retry layer's first-token limit is met by it
            if reply.finish_reason is not None and reply.usage is not None:
                await _drain(events)  # all of the reply is in; at most [DONE] is left
                break
    # Some servers omit [DONE]; a finish reason still proves the reply is complete.
    if not reply.done and reply.finish_reason is None:
        raise ServerUnavailable("the server closed the stream before the reply was complete")
    # The reply ended on half a character: U+FFFD in its place, reasoning where it was in
    # reasoning (it was shown as the answer of a reply cut inside its <think>).
    last = inline.feed(REPLACEMENT).answer if reply.held else ""
    # A reply the model ended itself with no </think> after a template's <think>: the
    # server's reasoning parser took the reasoning out and sent none (InlineThinking.flush).
    ended = inline.flush(finished=reply.finish_reason == "stop")
    if rest := last + ended.answer:  # and a beginning held as a possible "<think>"
        yield Chunk(text=rest)
    yield Chunk(usage=reply.usage, finish_reason=reply.finish_reason)


async def _drain(events: AsyncIterator[str]) -> None:
    """Read the end of the body after [DONE], so the connection goes back to the pool instead
    of being closed with unread data (one new TCP connection per reply otherwise). A server
    that holds the stream open past DRAIN_S just loses its connection."""
    with contextlib.suppress(httpx.HTTPError, TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            async for _ in events:
                pass


async def _next_event(events: AsyncIterator[str], clock: Deadlines, reply: _Reply) -> str | None:
    """The next event's data; None at the end of the stream, or where only its end is missing
    after the finish reason (the server held the stream open, or dropped it, after the reply)."""
    try:
        return await clock.wait(anext(events, None))
    except httpx.TransportError as exc:
        if reply.finish_reason is not None:
            return None
        raise ServerUnavailable(f"the reply stream broke: {exc!r}") from exc
    except httpx.DecodingError as exc:  # a body its Content-Encoding does not decode
        raise BackendError(f"the reply stream could not be decoded: {exc!r}") from exc
    except BackendTimeout:
        # After the finish reason only the usage and the end are missing. Not cut sooner:
        # some servers send a finish reason early and go on (Open WebUI, open-webui#16377).
        if reply.finish_reason is not None:
            return None
        raise


async def _lines(texts: AsyncIterator[str], limit: int) -> AsyncGenerator[str, None]:
    """The lines of a decoded body (ended by CRLF, LF or CR, as server-sent events are), none
    longer than `limit` characters: a longer one is refused before it is all held."""
    pending = ""
    async for text in texts:
        pending += text
        # A CR at the very end may be the first half of a CRLF: kept for the next piece.
        held = "\r" if pending.endswith("\r") else ""
        *complete, pending = _LINE_END.split(pending[: len(pending) - len(held)])
        pending += held
        for line in complete:
            if len(line) > limit:
                raise BackendError(f"the server sent a line over {limit} characters")
            yield line
        if len(pending) > limit:
            raise BackendError(f"the server sent a line over {limit} characters")
    if pending:
        yield pending.removesuffix("\r")


async def _sse_data(lines: AsyncIterator[str]) -> AsyncGenerator[str, None]:
    """The data of each server-sent event; comments (keep-alives) and other fields dropped."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:  # a last event without its blank line: take it rather than lose it
        yield "\n".join(data)


def _decode(data: str) -> Mapping[str, Any]:
    try:
        event = json.loads(data)
    except json.JSONDecodeError:
        # Its size, not its text: that is the model's, which quotes the user's, and is logged.
        raise BackendError(f"malformed event from the server ({len(data)} characters)") from None
    if not isinstance(event, dict):
        raise BackendError(f"unexpected event from the server ({len(data)} characters)")
    if "error" in event:
        # vLLM reports errors that happen after the 200 header as an event, with the status
        # it would have answered in its "code" (500: the generation failed; 503: retry).
        raise _error_for(_event_status(event["error"]), event, {})
    return event


def _event_status(error: object) -> int:
    """The HTTP status an error event stands for; 400 where it names none."""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code <= 599 else 400


def _response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's structured-output request; vLLM turns it into its guided decoding."""
    name = str(schema.get("title") or "reply")
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": dict(schema), "strict": True},
    }


def _usage(raw: Mapping[str, Any]) -> Usage | None:
    """The usage object's counts; None where they are not numbers, or not counts any request
    can have (negative, or over MAX_USAGE_TOKENS): the reply stands, its tokens counted here.
    Taken as they came, a negative count failed the metrics' counters and a huge one the
    database, after the answer was shown, and spent the user's daily budget."""
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    try:
        usage = Usage(
            prompt_tokens=int(raw.get("prompt_tokens") or 0),
            completion_tokens=int(raw.get("completion_tokens") or 0),
            cached_tokens=int(cached) if isinstance(cached, int) else None,
        )
    except (TypeError, ValueError, OverflowError):
        log.warning("the server's usage counts are not numbers; ignored")
        return None
    counts = (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens or 0)
    if not all(0 <= count <= MAX_USAGE_TOKENS for count in counts):
        log.warning("the server's usage counts are out of range (%s); ignored", counts)
        return None
    return usage


def _error_for(status: int, body: object, headers: Mapping[str, str]) -> BackendError:
    """The error for an error body; its free text is read here and not passed on."""
    answered = f"the server answered {status} ({_error_summary(body)})"
    if status == 429 or status >= 500:
        retry_after = _retry_after(headers.get("retry-after"))
        return ServerUnavailable(answered, status=status, retry_after=retry_after)
    if status == 400 and _CONTEXT_MESSAGE.search(_error_words(body)):
        return ContextTooLong(f"{answered}: the prompt is longer than the model's context")
    if status in (401, 403):
        return BackendError(f"{answered}: check backend.api_key (PARLEY_BACKEND__API_KEY)")
    return BackendError(answered)


def _error_text(body: object) -> str:
    """The human part of an error body: OpenAI's {"error": {"message"}} or whatever is there."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])
    return str(error)


def _error_words(body: object) -> str:
    """The error's message, type and code: what says what the error is about."""
    error = body.get("error", body) if isinstance(body, dict) else body
    fields = error if isinstance(error, dict) else {}
    return " ".join([_error_text(body), str(fields.get("type", "")), str(fields.get("code", ""))])


def _error_summary(body: object) -> str:
    """What of an error body may be logged: its identifiers, and its text's length only."""
    error = body.get("error", body) if isinstance(body, dict) else body
    fields = error if isinstance(error, dict) else {}
    said = [
        f"{name}={value}"
        for name in ("type", "code", "param")
        if (value := fields.get(name)) is not None and _ERROR_FIELD.fullmatch(str(value))
    ]
    text = _error_text(body)
    said.append(f"message withheld, {len(text)} characters" if text else "no message")
    return ", ".join(said)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _read_body(response: httpx.Response, limit: int, *, cut: bool = False) -> bytes:
    """The body up to `limit` bytes: cut there (`cut`), else refused when it is longer."""
    data = bytearray()
    try:
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) > limit:
                if cut:
                    return bytes(data[:limit])
                path = response.request.url.path
                raise BackendError(f"{path}: the server's answer is over {limit} bytes")
    except httpx.DecodingError:
        if not cut:
            raise
    return bytes(data)


def _parsed(body: bytes) -> object:
    """The body as JSON, or as text where it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def _auth_headers(api_key: SecretStr | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}


def _session_headers(session_id: str | None) -> dict[str, str]:
    # Routers in front of vLLM keep a session on the replica holding its prefix cache. A header
    # value is printable ASCII: anything else in an id travels percent-encoded, still unique.
    return {"X-Session-ID": quote(session_id, safe=_HEADER_SAFE)} if session_id else {}


def _call_timeout(timeouts: TimeoutSettings) -> httpx.Timeout:
    """For the short calls (models, tokenize); streams get their own limits."""
    return httpx.Timeout(timeouts.gap_s, connect=timeouts.connect_s)


def _load_tokenizer(folder: str) -> Any:
    """The tokenizer in `folder` (files only: nothing is downloaded); ConfigError if it
    cannot be loaded, naming the setting: a missing extra or a wrong folder is for the
    operator to change (exit status 2), not a failure a restart would mend."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ConfigError(
            "backend.tokenizer needs the transformers package (pip install 'parley[tokenizer]')"
        ) from exc
    if not Path(folder).expanduser().is_dir():
        # Given a name that is not a folder, transformers speaks of hub repository ids.
        raise ConfigError(f"backend.tokenizer: no folder {folder!r} (PARLEY_BACKEND__TOKENIZER)")
    try:
        return AutoTokenizer.from_pretrained(Path(folder).expanduser(), local_files_only=True)
    except (OSError, ValueError) as exc:
        log.debug("the tokenizer in %s could not be loaded", folder, exc_info=exc)
        raise ConfigError(
            f"backend.tokenizer: no tokenizer could be loaded from {folder!r}: it needs the "
            "served model's tokenizer files (tokenizer.json, tokenizer_config.json)"
        ) from exc
