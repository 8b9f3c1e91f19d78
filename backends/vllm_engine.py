"""In-process vLLM: an `AsyncLLM` engine driven from this event loop.

vLLM is imported inside `start()`, so this module imports (and the rest of Parley runs) where
vLLM is not installed. The engine runs its model in worker processes; a script that builds
this backend needs an `if __name__ == "__main__":` guard.

Prompts are rendered with the model's own chat template and sent as token ids, so the length
checked here, the length counted by `count_chat_tokens` and the length the engine sees are the
same number. Only the template's own text can yield control tokens: message contents are
encoded as plain text (`backends.control_tokens.ChatEncoder`), so a user who types
`<|im_end|>` sends those characters, not the token that ends a turn.

Replies get the same time limits as over HTTP (`backend.timeouts`: first token, gap, total),
and `GenerationRequest.json_schema` turns on vLLM's structured outputs (guided decoding).

Errors (all `bot.errors.BackendError`):
    BackendTimeout      a time limit passed (the request is aborted in the engine)
    ContextTooLong      the rendered prompt leaves no room in max_model_len
    BackendUnavailable  the engine could not start, or its core process died
    BackendError        the engine rejected or failed the request
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends import vllm_watchdog
from backends.base import Capabilities, Chunk, GenerationRequest, Usage
from backends.control_tokens import ChatEncoder
from backends.deadlines import bounded
from backends.inline_thinking import InlineThinking
from bot.errors import BackendError, BackendUnavailable, ConfigError, ContextTooLong
from bot.settings import BackendSettings
from bot.types import ChatMessage

log = logging.getLogger(__name__)

_CONTEXT_MESSAGE = re.compile(r"maximum (model|context) length", re.IGNORECASE)
# Prompts and texts longer than this are tokenised in a thread, not on the event loop (a pasted
# document takes milliseconds, enough to delay every other conversation).
INLINE_TOKENIZE_CHARS = 4000


class VllmEngineBackend:
    """The `Backend` protocol over an in-process `vllm.v1.engine.async_llm.AsyncLLM`."""

    # Its stream ends itself at GenerationRequest.deadline (backends.deadlines.Deadlines).
    honours_deadline = True

    def __init__(self, settings: BackendSettings) -> None:
        self._settings = settings
        self._engine: Any = None
        self._encoder: ChatEncoder | None = None
        self._start_lock = asyncio.Lock()
        self._capabilities = Capabilities(
            name="vllm",
            model=settings.model,
            max_model_len=settings.max_model_len or 0,
            exact_token_counts=True,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def engine(self) -> Any:
        """The running `AsyncLLM` (for metrics and tests); None before start()."""
        return self._engine

    async def start(self) -> None:
        async with self._start_lock:
            if self._engine is not None:
                return
            _require_local_folder(self._settings.model)
            # Both steps block for seconds. They run apart because vLLM's import keeps its
            # caller's frame alive: a frame that also held the engine would pin it after aclose.
            engine_class, args_class = await asyncio.to_thread(_import_vllm)
            # After the import: a missing package is the first thing to say.
            await asyncio.to_thread(_check_local_model, self._settings.model)
            args = args_class(model=self._settings.model, **self._engine_options())
            # The engine's processes end with this one, also when it is killed outright.
            vllm_watchdog.arm()
            engine = await asyncio.to_thread(_build_engine, engine_class, args)
            self._engine = engine
            self._encoder = ChatEncoder(engine.get_tokenizer())
            self._capabilities = Capabilities(
                name="vllm",
                model=self._settings.model,
                max_model_len=int(engine.model_config.max_model_len),
                exact_token_counts=True,
            )
            log.info("vLLM engine ready: max_model_len=%d", self._capabilities.max_model_len)

    def with_settings(self, settings: BackendSettings) -> VllmEngineBackend:
        """Another backend over this running engine, with other limits and sampling defaults
        (one engine per process; the model settings of `settings` are ignored)."""
        twin = VllmEngineBackend(settings)
        twin._engine, twin._encoder = self._engine, self._encoder
        twin._capabilities = self._capabilities
        return twin

    def _engine_options(self) -> dict[str, Any]:
        settings = self._settings
        options: dict[str, Any] = {
            "gpu_memory_utilization": settings.gpu_memory_utilization,
            "enforce_eager": settings.enforce_eager,
            "dtype": settings.dtype,
            "tensor_parallel_size": settings.tensor_parallel_size,
            "disable_log_stats": True,
            # Compact JSON under structured outputs: vLLM 0.32 reads this per engine, not per
            # request, and a weak model otherwise spends a whole reply on blanks.
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        }
        if settings.max_model_len is not None:
            options["max_model_len"] = settings.max_model_len
        return options

    def _require_started(self) -> Any:
        if self._engine is None:
            raise BackendError("the vLLM backend is not started; call start() first")
        return self._engine

    def _require_encoder(self) -> ChatEncoder:
        self._require_started()
        assert self._encoder is not None  # set with the engine
        return self._encoder

    async def prompt_token_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The token ids `stream` sends for `messages`: the chat template and generation
        prompt, where only the template can write control tokens (contents are plain text)."""
        encoder = self._require_encoder()
        chat = [m.as_openai() for m in messages]
        if sum(len(m.content) for m in messages) <= INLINE_TOKENIZE_CHARS:
            return encoder.chat_ids(chat)
        return await asyncio.to_thread(encoder.chat_ids, chat)

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as plain text (special-token strings count as the characters
        they are, as in a prompt), in one batch."""
        encoder = self._require_encoder()
        if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
            return encoder.plain_lengths(texts)
        return await asyncio.to_thread(encoder.plain_lengths, texts)

    async def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of `messages` with the chat template and generation prompt."""
        return len(await self.prompt_token_ids(messages))

    def stream(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        # The engine has no time limits of its own; a stuck step must not hold a conversation.
        return bounded(self._generate(request), self._settings.timeouts, request.deadline)

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        engine = self._require_started()
        prompt_ids = await self.prompt_token_ids(request.messages)
        self._check_fits(len(prompt_ids))
        # The reply may use what the context has left, never more: a prompt plus max_tokens
        # over max_model_len is a request the engine would not serve.
        room = self._capabilities.max_model_len - len(prompt_ids)
        outputs = engine.generate(
            {"prompt_token_ids": prompt_ids}, self._sampling(request, room), request.request_id
        )
        progress = _Progress(prompt_tokens=len(prompt_ids))
        # The engine has no reasoning parser: a thinking model's <think> comes in the text.
        inline = InlineThinking(opened=self._require_encoder().opens_reasoning)
        try:
            with _vllm_errors_mapped():
                async for out in outputs:
                    split = inline.feed(progress.absorb(out))
                    if split.answer:
                        yield Chunk(text=split.answer)
                    elif split.reasoning:
                        yield Chunk()  # the model at work: the time limits count from it
        finally:
            if not progress.finished:
                await _abort(engine, outputs, request.request_id)
        if progress.finish_reason == ENGINE_FAILED:
            # A request-level failure (a KV-cache load, say) that vLLM's server answers with a
            # 500: not a reply. Retried where nothing was shown; else the reply is cut off.
            raise BackendUnavailable("vLLM failed the request (finish reason: error)")
        if rest := inline.flush().answer:
            yield Chunk(text=rest)
        yield Chunk(usage=progress.usage(), finish_reason=progress.finish_reason)

    def _check_fits(self, prompt_tokens: int) -> None:
        limit = self._capabilities.max_model_len
        # The engine needs room for at least one output token.
        if prompt_tokens >= limit:
            raise ContextTooLong(f"prompt of {prompt_tokens} tokens; max_model_len is {limit}")

    def _sampling(self, request: GenerationRequest, room: int) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            max_tokens=min(request.max_tokens, room),
            temperature=request.temperature,
            stop=list(request.stop) or None,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=_structured(request),
        )

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # On this thread, as vLLM's own server does at its end: the engine's output task
            # runs on this loop, and with the loop free while the engine process is stopped
            # it would see that process gone and log an EngineDeadError traceback before
            # shutdown() cancels it. Every turn is over by now; the join takes about a second.
            engine.shutdown()


# The finish reason of a request the engine failed (vllm.v1.engine.FinishReason.ERROR).
ENGINE_FAILED = "error"


@dataclass
class _Progress:
    """What the delta outputs of one request add up to."""

    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int | None = None
    finish_reason: str | None = None
    finished: bool = False

    def absorb(self, out: Any) -> str:
        """Take one `RequestOutput` (DELTA kind); return its new text."""
        completion = out.outputs[0]
        self.completion_tokens += len(completion.token_ids)
        if out.num_cached_tokens is not None:
            self.cached_tokens = out.num_cached_tokens
        self.finish_reason = completion.finish_reason or self.finish_reason
        self.finished = bool(out.finished)
        return str(completion.text)

    def usage(self) -> Usage:
        return Usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


def _structured(request: GenerationRequest) -> Any:
    """vLLM's guided decoding for a JSON schema; None for free text."""
    if request.json_schema is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=dict(request.json_schema))


async def _abort(engine: Any, outputs: Any, request_id: str) -> None:
    """Stop a request whose consumer left (closed, cancelled or failed) before it finished."""
    # Closing vLLM's generator aborts only if it had started; abort() by id covers every
    # state and is idempotent.
    try:
        await outputs.aclose()
        await engine.abort(request_id)
    except Exception:  # a dead engine has nothing left to abort; keep the original error
        log.warning("could not abort vLLM request %s", request_id, exc_info=True)
    else:
        log.debug("aborted vLLM request %s", request_id)


def _require_local_folder(model: str) -> None:
    """A model named by a path must be a folder there: vLLM takes any other name for a hub
    repository and fails on it after each try of the start-up wait (120 s by default), with
    a hub error. A wrong setting, not a failure a restart would mend: exit status 2."""
    if model.startswith(("/", "./", "../", "~")) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"backend.model: no model folder {model!r} (PARLEY_BACKEND__MODEL)")


def _check_local_model(model: str) -> None:
    """`check_model_folder` where `model` names a folder here (not a hub repository)."""
    if (folder := Path(model).expanduser()).is_dir():
        check_model_folder(folder)


# The weight files vLLM loads from a model folder (its safetensors and PyTorch formats).
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
# A safetensors header longer than this is not one (the format caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000


def check_model_folder(folder: Path) -> None:
    """ConfigError naming the file, where `folder` cannot hold a model vLLM loads: its
    config (config.json, or a Mistral-format params.json) missing or not a JSON object, no
    weight file, a weight shard its index names missing, or a safetensors file shorter than
    its header says. vLLM failed on each of these only inside its engine, which start-up took
    for a server still loading and tried again for backend.startup_wait_s (2 minutes by
    default). Only headers are read: the check takes milliseconds, whatever the model's size."""
    configs = [folder / name for name in ("config.json", "params.json")]
    present = [path for path in configs if path.is_file()]
    if not present:
        raise ConfigError(f"backend.model: {folder / 'config.json'} is missing")
    for path in present:
        _json_object(path)
    weights = sorted(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern))
    if not weights:
        raise ConfigError(
            f"backend.model: no weights in {folder} (no {', '.join(WEIGHT_PATTERNS)} file)"
        )
    for index in sorted(folder.glob("*.index.json")):
        shards = _json_object(index).get("weight_map")
        names = sorted({str(n) for n in shards.values()}) if isinstance(shards, dict) else []
        missing = [name for name in names if not (folder / name).is_file()]
        # An index none of whose shards are here is of a format not downloaded (a folder of
        # safetensors often keeps pytorch_model.bin.index.json): vLLM does not read it.
        if missing and len(missing) < len(names):
            raise ConfigError(
                f"backend.model: {folder / missing[0]} is missing (named in {index.name})"
            )
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path)


def _json_object(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"backend.model: {path} is not valid JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"backend.model: {path} is not a JSON object")
    return loaded


def _check_safetensors(path: Path) -> None:
    """A safetensors file is 8 bytes of header length, a JSON header, then the tensors' data;
    a truncated (or otherwise damaged) one is named here."""
    damaged = f"backend.model: {path} is damaged or truncated"
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            head = file.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(MAX_SAFETENSORS_HEADER, size - 8):
                raise ConfigError(damaged)
            header = json.loads(file.read(length))
    except (OSError, ValueError):
        raise ConfigError(damaged) from None
    if not isinstance(header, dict):
        raise ConfigError(damaged)
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__"
        and isinstance(entry, dict)
        and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2
        and isinstance(entry["data_offsets"][1], int)
    ]
    if 8 + length + max(ends, default=0) > size:
        raise ConfigError(damaged)


def _import_vllm() -> tuple[Any, Any]:
    # vLLM's own logging setup writes its INFO lines to stdout, through a handler of its own:
    # dozens around each answer in the console, and in `parley doctor`'s report. Without it
    # they reach Parley's handler, which shows a library's lines below WARNING with -v only.
    # Its engine processes inherit the setting. An operator's own value wins, and so does a
    # logging config file of theirs (vLLM refuses one with its setup turned off).
    if not os.environ.get("VLLM_LOGGING_CONFIG_PATH"):
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError as exc:  # a missing extra: no wait makes it appear (exit status 2)
        raise ConfigError(
            f"backend kind 'vllm' needs the vllm package ({exc}): pip install 'parley[vllm]'"
        ) from exc
    return AsyncLLM, AsyncEngineArgs


def _build_engine(engine_class: Any, args: Any) -> Any:
    try:
        return engine_class.from_engine_args(args)
    except Exception as exc:  # vLLM raises many kinds while loading; all mean "not up"
        raise BackendUnavailable(f"vLLM engine failed to start: {exc}") from exc


@contextlib.contextmanager
def _vllm_errors_mapped() -> Iterator[None]:
    """Re-raise vLLM's request errors as Parley's."""
    from vllm.exceptions import VLLMClientError, VLLMServerError
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        yield
    except EngineDeadError as exc:
        raise BackendUnavailable(f"vLLM engine died: {exc}") from exc
    except VLLMClientError as exc:
        if _CONTEXT_MESSAGE.search(str(exc)):
            raise ContextTooLong(str(exc)) from exc
        raise BackendError(f"vLLM rejected the request ({_withheld(exc)})") from exc
    except (VLLMServerError, ValueError, RuntimeError) as exc:
        raise BackendError(f"vLLM failed the request ({_withheld(exc)})") from exc


def _withheld(exc: BaseException) -> str:
    """An engine error as it may be logged: its kind and size, not its text, which may quote
    the prompt (a tokenizer's or a chat template's error), that is the user's words."""
    return f"{type(exc).__name__}, message withheld, {len(str(exc))} characters"
