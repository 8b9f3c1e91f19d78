"""vLLM's prefix-cache hit rate for 20-turn conversations driven through Parley.

    .venv/bin/python -m bench.prefix_cache                   # 3 conversations x 20 turns
    .venv/bin/python -m bench.prefix_cache --conversations 1 --turns 10
    .venv/bin/python -m bench.prefix_cache --block-size 0    # the server's default (128 on CPU)
    .venv/bin/python -m bench.prefix_cache --output free     # the random model unconstrained
    .venv/bin/python -m bench.prefix_cache --server http://127.0.0.1:8000   # a running server

Starts vLLM's OpenAI-compatible server on the tiny model (tests/tinymodel.py, built into a
temporary folder) with `--block-size` (default 32: the production GPU default is 16, which the
CPU build refuses with "No common block size for 16 (CPU_ATTN: [MultipleOf(32)])"; 32 is the
smallest it takes). The block size used is read back from the server's
`vllm:cache_config_info` and printed. The conversations run one turn at a time through
`bot.app.Parley` with default settings apart from the backend (kind openai, the resilient
backend the factory builds, 48 reply tokens, temperature 0.8), a small context budget
(600 tokens, summaries of 64) so that windows roll over every few turns, and the per-user
rate limit off (each conversation is one user sending 20 messages within seconds).

By default (`--output words`) the random model samples only whole-word tokens and the end
token (`allowed_token_ids`), so that its replies tokenise back to the ids it generated, as a
trained model's replies nearly always do. `--output free` lets it sample any token: its output
is then mostly bytes that are not valid UTF-8 and stray special tokens, which the server
streams as U+FFFD or drops, so the reply's text does not tokenise back to the ids generated
(cause (b) below) and no client, however it builds its prompts, can reach the ideal (the
"achievable" column shows the ceiling). The ideal is the same in both modes.

Instrumentation, none of which changes the work the engine does:
- The backend's HTTP client gets a tapping transport (`Tap`) that counts requests per path and
  adds `"return_token_ids": true` to each chat request, so the server returns the prompt ids it
  built and the ids it generated.
- `Recording` keeps each chat turn's messages, usage and streamed text.

Per turn it prints:
    prompt      prompt tokens (the server's `prompt_token_ids`)
    ideal       THE IDEAL (issue 3): every full cache block before the new user message, i.e.
                the tokens of the messages before the new user message (the server's chat
                template, no generation prompt) rounded down to the block size. The same at
                a roll-over, although the new summary in the system message makes most of
                it unreachable there: that is what the lower whole-conversation target
                allows for. (Before this version the bench used the part shared with the
                previous prompt as the ideal of a roll-over turn, which made those turns
                score ~100% by construction.)
    achievable  (an extra figure, not the ideal) the full blocks of that ideal whose KV the
                server ever computed: the new prompt's common prefix with (previous prompt +
                ids generated for it), less the last generated token (never fed back, so its
                KV does not exist), rounded down. What any client sending text through a chat
                template can get from this model's output.
    cached      the server's `prompt_tokens_details.cached_tokens` for the turn
    %ideal      cached / ideal
    diverge     where the new prompt first differs from previous prompt + generated ids,
                as an offset into the previous reply's generated ids
    cause       why the blocks between achievable and ideal are lost:
                  (a) reply end    the reply re-tokenised matches every generated id; the
                                   prompt goes on with the template's closing tokens, which
                                   the model never generated (finish "length") or whose
                                   KV was never computed (finish "stop": the end token
                                   was the last one sampled)
                  (b) re-tokenised the reply's text is what the server streamed, but
                                   tokenising it again gives other ids than were generated
                  (c) PARLEY ...   Parley changed the prompt: an earlier message, or the reply
                                   text differs from what was streamed (a bug)
                  roll-over        the summary in the system message changed

Totals: cached / ideal for turns without a roll-over (target >= 95%) and for whole
conversations (target >= 85%), the same against `achievable`, the tokens lost per cause, and
from /metrics over the run `vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`
next to the ideal hit rate (sum of ideals / sum of prompt tokens), with the chat turns' usage
summed as a check that the per-turn figures add up to the server's counters.

Exit 1 when a target is missed (or no turn was measured), or the bench fails (one line); 0
when both are met. With `--output free` there is no verdict (exit 0 unless it fails): its
replies do not tokenise back to the ids generated (cause (b)), so the ideal is out of reach
for any client and the figures are a diagnosis, not a measure against the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from backends.base import Backend, Capabilities, Chunk, GenerationRequest, Usage
from backends.openai_compat import CONNECTION_LIMITS, OpenAICompatBackend
from backends.pool import ShardedTransport
from backends.resilience import ResilientBackend
from bench.entry import non_negative_int, positive_int, run_main
from bot.app import Parley
from bot.settings import BackendSettings, Settings
from bot.types import ChatMessage, ConversationKey, Incoming, User
from tests.doubles import CollectingSink
from tests.fixtures_vllm import SERVED_MODEL, VLLM_ENV, _server_command, stop_server
from tests.ports import free_port
from tests.tinymodel import build_tiny_model

DEFAULT_BLOCK = 32
# cached / ideal (issue 3), fixed before measuring: turns without a roll-over, whole
# conversations (lower: a roll-over's new summary makes most of its ideal unreachable).
TARGET_PLAIN = 0.95
TARGET_WHOLE = 0.85
CHAT_PATH = "/v1/chat/completions"
QUESTIONS = [
    "hello there, how is the weather today",
    "tell me about python servers and clients",
    "good, and then what happens next",
    "thanks, one more thing about the day",
    "and what about tomorrow, will it rain",
]


@dataclass
class Seen:
    """One chat request as the backend was asked for it."""

    messages: list[ChatMessage]
    usage: Usage | None = None
    max_tokens: int = 0
    temperature: float = 0.0
    text: str = ""  # the reply as streamed to Parley


class Recording:
    """The real backend, keeping each chat request (session id set) and its usage.

    With `follow=False` only the request is kept: its reply streams straight from the inner
    backend (no usage, no text), so the recording adds no work per streamed chunk."""

    def __init__(
        self, inner: Backend, system_prompt: str | None = None, *, follow: bool = True
    ) -> None:
        self.inner = inner
        self.follow = follow
        # When set, only requests that start with it are kept: the chat turns, not the
        # requests of other skills (intent detection, summaries) that share the session.
        self._system_prompt = system_prompt
        self.seen: list[Seen] = []
        self.sessions: list[str] = []  # the session id of each entry of `seen`

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    async def start(self) -> None:
        await self.inner.start()

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return await self.inner.count_tokens(texts)

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return await self.inner.count_chat_tokens(messages)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        entry = Seen(list(request.messages), None, request.max_tokens, request.temperature)
        first = request.messages[0].content if request.messages else ""
        # startswith: after a roll-over the summary follows the system prompt.
        wanted = self._system_prompt is None or first.startswith(self._system_prompt)
        if request.session_id and wanted:  # summaries have no session id
            self.seen.append(entry)
            self.sessions.append(request.session_id)
        return self._followed(entry, request) if self.follow else self.inner.stream(request)

    async def _followed(
        self, entry: Seen, request: GenerationRequest
    ) -> AsyncGenerator[Chunk, None]:
        parts: list[str] = []
        async with contextlib.aclosing(self.inner.stream(request)) as chunks:
            async for chunk in chunks:
                entry.usage = chunk.usage or entry.usage
                parts.append(chunk.text)
                entry.text = "".join(parts)
                yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Exchange:
    """One chat request on the wire and what the server answered (token ids when asked)."""

    body: dict[str, Any]
    prompt_ids: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class _TeeStream(httpx.AsyncByteStream):
    """Passes a streamed response through unchanged while parsing its server-sent events."""

    def __init__(self, inner: httpx.AsyncByteStream, exchange: Exchange) -> None:
        self._inner = inner
        self._exchange = exchange
        self._buffer = b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._inner:
            self._buffer += part
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                self._absorb(line)
            yield part

    def _absorb(self, line: bytes) -> None:
        if not line.startswith(b"data: {"):
            return
        event = json.loads(line[6:])
        ex = self._exchange
        ex.prompt_ids = event.get("prompt_token_ids") or ex.prompt_ids
        if isinstance(event.get("usage"), dict):
            ex.usage = event["usage"]
        for choice in event.get("choices") or []:
            ex.output_ids += choice.get("token_ids") or []
            ex.finish_reason = choice.get("finish_reason") or ex.finish_reason

    async def aclose(self) -> None:
        await self._inner.aclose()


class Tap(httpx.AsyncBaseTransport):
    """Parley's backend's own transport (`backends.pool.ShardedTransport`, with the limits
    the backend gives it; a client given a transport does not apply its own), counting requests per
    "METHOD /path". With `token_ids`, chat requests ask the server for token ids (plus
    `extra_body`) and each is kept as an `Exchange`."""

    def __init__(
        self,
        *,
        token_ids: bool = False,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self._inner = ShardedTransport(CONNECTION_LIMITS)
        self._token_ids = token_ids
        self._extra_body = extra_body or {}
        self.counts: Counter[str] = Counter()
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[f"{request.method} {request.url.path}"] += 1
        if not (self._token_ids and request.url.path == CHAT_PATH):
            return await self._inner.handle_async_request(request)
        body = json.loads(await request.aread())
        body.update(self._extra_body, return_token_ids=True)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
        sent = httpx.Request(
            request.method,
            request.url,
            headers=headers,
            content=json.dumps(body).encode(),
            extensions=request.extensions,
        )
        response = await self._inner.handle_async_request(sent)
        exchange = Exchange(body)
        self.exchanges.append(exchange)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_TeeStream(response.stream, exchange),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def tapped_backend(settings: BackendSettings, tap: Tap) -> Backend:
    """What `backends.factory.build_resilient_backend` builds for an openai backend without
    fallbacks, with the bench's transport under the HTTP client."""
    assert settings.kind == "openai" and not settings.fallbacks
    plain = OpenAICompatBackend(settings, transport=tap)
    return ResilientBackend(plain, settings, name=settings.model)


@contextlib.contextmanager
def vllm_server(
    model_dir: Path, log_path: Path, extra_args: Sequence[str] = (), cpus: str | None = None
) -> Iterator[str]:
    """The server on `model_dir`; on the CPUs listed in `cpus` ("0", "0-3") if given, its
    engine's OpenMP threads bound to them too."""
    os.environ.update({k: os.environ.get(k, v) for k, v in VLLM_ENV.items()})
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": cpus} if cpus else None
    pinned = ["taskset", "-c", cpus] if cpus else []
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*pinned, *_server_command(model_dir, port), *extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError("vLLM server exited:\n" + "\n".join(tail))
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise RuntimeError("vLLM server not healthy after 200 s")
        yield base_url
    finally:
        stop_server(process)


async def metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(m[2]) for m in pattern.finditer(text))


async def server_block_size(http: httpx.AsyncClient) -> int:
    """The KV-cache block size the engine runs with, from `vllm:cache_config_info`."""
    text = (await http.get("/metrics")).text
    found = re.search(r'^vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', text, re.MULTILINE)
    if found is None:
        raise RuntimeError("the server's /metrics has no vllm:cache_config_info block_size")
    return int(found[1])


async def token_ids(
    http: httpx.AsyncClient, messages: Sequence[ChatMessage], gen: bool
) -> list[int]:
    body = {
        "model": SERVED_MODEL,
        "messages": [m.as_openai() for m in messages],
        "add_generation_prompt": gen,
    }
    tokens = (await http.post("/tokenize", json=body)).json()["tokens"]
    return [int(t) for t in tokens]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class TurnFigures:
    prompt: int
    cached: int
    ideal: int
    achievable: int
    rollover: bool
    diverge: int | None  # offset into the previous reply's generated ids; None: first turn
    cause: str


def _cause(seen: Seen, before: Seen, before_ex: Exchange, shared: int, rollover: bool) -> str:
    prompt_len = len(before_ex.prompt_ids)
    if shared < prompt_len:
        return "roll-over (summary)" if rollover else "(c) PARLEY changed an earlier message"
    reply = seen.messages[-2].content if len(seen.messages) >= 2 else None
    if reply != before.text:
        return "(c) PARLEY changed the reply text"
    if shared == prompt_len + len(before_ex.output_ids):
        return f"(a) reply end ({before_ex.finish_reason})"
    return "(b) re-tokenised"


async def figures(
    http: httpx.AsyncClient, seen: list[Seen], exchanges: list[Exchange], block: int
) -> list[TurnFigures]:
    """Per chat turn: what the server cached against the ideal (see the module docstring)."""
    out: list[TurnFigures] = []
    for i, (entry, ex) in enumerate(zip(seen, exchanges, strict=True)):
        ids = ex.prompt_ids
        before_user = len(await token_ids(http, entry.messages[:-1], gen=False))
        assert before_user < len(ids), "the prompt should go on after the earlier messages"
        cached = int((ex.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        if not i:  # first turn: blocks shared with other conversations (the system prompt)
            ideal = before_user // block * block
            out.append(TurnFigures(len(ids), cached, ideal, ideal, False, None, ""))
            continue
        before, before_ex = seen[i - 1], exchanges[i - 1]
        rollover = entry.messages[: len(before.messages)] != before.messages
        computed = before_ex.prompt_ids + before_ex.output_ids
        shared = common_prefix(computed, ids)
        ideal = before_user // block * block  # the ideal, roll-over or not
        reachable = min(shared, len(computed) - 1, before_user)
        achievable = min(ideal, reachable // block * block)
        diverge = shared - len(before_ex.prompt_ids)
        cause = _cause(entry, before, before_ex, shared, rollover)
        out.append(TurnFigures(len(ids), cached, ideal, achievable, rollover, diverge, cause))
    return out


def settings_for(base_url: str, folder: Path) -> Settings:
    return Settings(
        database={"url": f"sqlite+aiosqlite:///{folder}/parley.db"},  # type: ignore[arg-type]
        backend={  # type: ignore[arg-type]
            "kind": "openai",
            "base_url": base_url,
            "model": SERVED_MODEL,
            "max_tokens": 48,
            "temperature": 0.8,
        },
        # rate_limit_messages 0: one user sends all turns of a conversation within seconds,
        # which the default per-user limit (20 a minute) would answer with "too quickly".
        conversation={  # type: ignore[arg-type]
            "context_tokens": 600,
            "summary_tokens": 64,
            "rate_limit_messages": 0,
        },
    )


async def converse(app: Parley, name: str, turns: int) -> None:
    key = ConversationKey("bench", name)
    user = User("bench", f"user-{name}", "Ada")
    for turn in range(turns):
        text = f"{QUESTIONS[turn % len(QUESTIONS)]} (turn {turn + 1})"
        await app.manager.handle(Incoming(key, user, text, f"{name}-{turn}"))


def report(name: str, rows: list[TurnFigures]) -> None:
    print(f"\nconversation {name}")
    print(" turn  prompt  ideal  achiev  cached  %ideal  roll  diverge  cause")
    for n, row in enumerate(rows, 1):
        share = f"{100 * row.cached / row.ideal:6.1f}" if row.ideal else "     -"
        flag = "yes" if row.rollover else ""
        diverge = "" if row.diverge is None else str(row.diverge)
        print(
            f" {n:4d}  {row.prompt:6d}  {row.ideal:5d}  {row.achievable:6d}  {row.cached:6d}"
            f"  {share}  {flag:4}  {diverge:>7}  {row.cause}"
        )


def share(rows: Sequence[TurnFigures], of: str = "ideal") -> float | None:
    """Cached tokens over the `of` figure (each turn's cached capped at it); None: nothing."""
    total = sum(getattr(r, of) for r in rows)
    hit = sum(min(r.cached, getattr(r, of)) for r in rows)
    return hit / total if total else None


def ratio(rows: Sequence[TurnFigures], of: str = "ideal") -> str:
    value = share(rows, of)
    return f"{100 * value:5.1f}%" if value is not None else "  n/a"


def verdict(rows: Sequence[TurnFigures], output: str) -> bool:
    """Print each target beside its figure; True when every target is met."""
    if output == "free":
        print("no verdict with --output free: the ideal is out of reach (cause (b))")
        return True
    plain = [r for r in rows if not r.rollover]
    ok = True
    for label, part, target in (
        ("turns without roll-over", plain, TARGET_PLAIN),
        ("whole conversations", rows, TARGET_WHOLE),
    ):
        value = share(part)
        met = value is not None and value >= target
        ok = ok and met
        print(f"target {label}: cached/ideal >= {target:.0%}: {'ok' if met else 'MISSED'}")
    return ok


def lost_by_cause(rows: Sequence[TurnFigures]) -> dict[str, int]:
    lost: Counter[str] = Counter()
    for row in rows:
        if row.ideal > row.achievable:
            lost[row.cause] += row.ideal - row.achievable
        if row.achievable > row.cached:
            lost["achievable but not cached"] += row.achievable - row.cached
    return dict(lost)


@contextlib.contextmanager
def serving(
    server: str | None, model_dir: Path, extra_args: Sequence[str], cpus: str | None = None
) -> Iterator[str]:
    """`server` when given (a running vLLM server on the tiny model), else a new one."""
    if server:
        yield server.rstrip("/")
        return
    log_path = model_dir.parent / "server.log"
    with vllm_server(model_dir, log_path, extra_args, cpus) as base_url:
        yield base_url


def word_token_ids(model_dir: Path) -> list[int]:
    """Ids of the tokens that are one lowercase word after a space, and the end token.

    Text made of them tokenises back to exactly these ids, as a trained model's output nearly
    always does; the random model's free output does not (see `--output`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab: dict[str, int] = tokenizer.get_vocab()
    words = [i for t, i in vocab.items() if re.fullmatch("\u0120[a-z]+", t)]
    return sorted([*words, vocab["<|end|>"]])


async def run(
    conversations: int, turns: int, block_arg: int, server: str | None, output: str
) -> bool:
    folder = Path(tempfile.mkdtemp(prefix="parley-prefix-"))
    model_dir = build_tiny_model(folder / "model")
    extra = ["--block-size", str(block_arg)] if block_arg else []
    extra_body = {"allowed_token_ids": word_token_ids(model_dir)} if output == "words" else {}
    chosen = f"--block-size {block_arg}" if block_arg else "the server's default"
    if server:
        chosen = f"the running server {server}, --block-size ignored"
    with serving(server, model_dir, extra) as base_url:
        settings = settings_for(base_url, folder)
        tap = Tap(token_ids=True, extra_body=extra_body)
        system_prompt = settings.conversation.system_prompt
        recording = Recording(tapped_backend(settings.backend, tap), system_prompt)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            block = await server_block_size(http)
            hits0 = await metric(http, "vllm:prefix_cache_hits_total")
            queries0 = await metric(http, "vllm:prefix_cache_queries_total")
            all_rows: list[TurnFigures] = []
            started = time.perf_counter()
            async with Parley(settings, backend=recording) as app:  # type: ignore[arg-type]
                app.manager.attach("bench", CollectingSink())
                for c in range(conversations):
                    recording.seen.clear()
                    first = len(tap.exchanges)
                    await converse(app, f"conv-{c}", turns)
                    chat = [
                        ex
                        for ex in tap.exchanges[first:]
                        if ex.body.get("user")
                        and ex.body["messages"][0]["content"].startswith(system_prompt)
                    ]
                    if len(chat) != turns:
                        print(f"WARNING: conv-{c}: {len(chat)} chat requests for {turns} turns")
                    rows = await figures(http, list(recording.seen), chat, block)
                    report(f"conv-{c}", rows)
                    all_rows += rows
            elapsed = time.perf_counter() - started
            await asyncio.sleep(2)  # the server's counters trail the last reply by a step
            hits = await metric(http, "vllm:prefix_cache_hits_total") - hits0
            queries = await metric(http, "vllm:prefix_cache_queries_total") - queries0
    print(
        f"\nmodel output: {output}"
        + (" (--output words: whole-word tokens only)" if extra_body else "")
    )
    print_totals(all_rows, tap, block, chosen, conversations, turns, elapsed, hits, queries)
    return verdict(all_rows, output)


def _cached(ex: Exchange) -> int:
    return int((ex.usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


def print_totals(
    rows: list[TurnFigures],
    tap: Tap,
    block: int,
    chosen: str,
    conversations: int,
    turns: int,
    elapsed: float,
    hits: float,
    queries: float,
) -> None:
    plain = [r for r in rows if not r.rollover]
    rolled = [r for r in rows if r.rollover]
    print(
        f"\nblock size {block} tokens ({chosen}); {conversations} conversations x {turns} turns"
        f" ({len(rolled)} roll-overs) in {elapsed:.0f} s"
    )
    print("ideal = every full cache block before the new user message (issue 3)")
    print("                                    cached/ideal  target  cached/achievable")
    for label, part, target in (
        ("turns without roll-over", plain, f">= {TARGET_PLAIN:.0%}"),
        ("whole conversations", rows, f">= {TARGET_WHOLE:.0%}"),
        ("roll-over turns only", rolled, ""),
    ):
        print(
            f"{label:23} ({len(part):3d} turns)  {ratio(part):>10}  {target:>6}"
            f"  {ratio(part, 'achievable'):>12}"
        )
    prompt = max(1, sum(r.prompt for r in rows))
    ideal, achievable, cached = (sum(getattr(r, a) for r in rows) for a in
                                 ("ideal", "achievable", "cached"))  # fmt: skip
    print(
        f"chat turns: {prompt} prompt tokens; ideal {ideal} ({100 * ideal / prompt:.1f}%), "
        f"achievable {achievable} ({100 * achievable / prompt:.1f}%), "
        f"cached {cached} ({100 * cached / prompt:.1f}%)"
    )
    print("tokens of the ideal not cached, by cause:", lost_by_cause(rows) or "none")
    # The server's counters cover every request; the summaries' share comes from their usage.
    others = [ex for ex in tap.exchanges if not ex.body.get("user")]
    other_hits = sum(_cached(ex) for ex in others)
    other_queries = sum(int(ex.usage.get("prompt_tokens") or 0) for ex in others)
    chat_hits, chat_queries = hits - other_hits, queries - other_queries
    print(
        f"/metrics: vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total over the run"
        f" = {hits:.0f} / {queries:.0f} = {100 * hits / max(1, queries):.1f}%"
    )
    print(
        f"  chat turns (less the {len(others)} summary requests): {chat_hits:.0f} / "
        f"{chat_queries:.0f} = {100 * chat_hits / max(1, chat_queries):.1f}%   "
        f"ideal: {100 * ideal / prompt:.1f}%   achievable: {100 * achievable / prompt:.1f}%"
    )
    usage_hits = sum(_cached(ex) for ex in tap.exchanges)
    usage_queries = sum(int(ex.usage.get("prompt_tokens") or 0) for ex in tap.exchanges)
    print(
        f"  check, the {len(tap.exchanges)} replies' usage summed: cached {usage_hits} of "
        f"{usage_queries} prompt tokens"
    )
    print("requests the server got from Parley:", dict(sorted(tap.counts.items())))


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=positive_int, default=3)
    parser.add_argument("--turns", type=positive_int, default=20)
    parser.add_argument(
        "--block-size",
        type=non_negative_int,
        default=DEFAULT_BLOCK,
        help=f"vLLM --block-size (default {DEFAULT_BLOCK}; 0: the server's default, 128 on "
        "CPU; the CPU build takes multiples of 32 only)",
    )
    parser.add_argument(
        "--server", help="base URL of a running vLLM server on the tiny model (SERVED_MODEL)"
    )
    parser.add_argument(
        "--output",
        choices=["free", "words"],
        default="words",
        help="words (default): only whole-word tokens and the end token (allowed_token_ids), "
        "so the replies re-tokenise to the ids generated, as a trained model's do; free: the "
        "random model samples any token",
    )
    args = parser.parse_args()
    return asyncio.run(
        run(args.conversations, args.turns, args.block_size, args.server, args.output)
    )


if __name__ == "__main__":
    run_main("bench.prefix_cache", main)
