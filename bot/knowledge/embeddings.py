"""Text embeddings for semantic search, computed offline.

With `knowledge.embedding_base_url` set, vectors come from that OpenAI-compatible server
(ServedEmbedder: vLLM serving an embedding model). Otherwise the model is WordLlama's
`l2_supercat` (256 dimensions), a static embedding model that ships inside the `wordllama`
wheel: no download, no GPU, about 1,500 passages a second on one core. Its loader looks for the
tokenizer file in a `tokenizers/` folder of its cache directory and otherwise downloads it, so
the bundled file is copied there first and downloads are disabled: loading never touches the
network.

Vectors are unit length (cosine similarity is a dot product) and are stored with their chunk as
little-endian float32 bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from importlib.resources import files
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bot.settings import KnowledgeSettings, data_dir

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]

WORDLLAMA_CONFIG = "l2_supercat"
WORDLLAMA_DIM = 256


class Embedder(Protocol):
    """Turns texts into unit vectors of `dim` floats. Synchronous and CPU-bound: callers run it
    in a worker thread."""

    @property
    def dim(self) -> int: ...

    def embed(self, texts: list[str]) -> Vectors: ...


class WordLlamaEmbedder:
    """WordLlama's bundled model, loaded on first use (0.6 s) from `cache_dir`."""

    def __init__(self, cache_dir: Path) -> None:
        self._cache_dir = cache_dir
        self._lock = threading.Lock()  # two worker threads must not load it twice
        self._model: object | None = None

    @property
    def dim(self) -> int:
        return WORDLLAMA_DIM

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        # A text with no known token (an empty section title, emoji) comes back as 0 / 0:
        # a zero vector instead, similar to nothing, so no NaN reaches the ranking.
        with np.errstate(invalid="ignore", divide="ignore"):
            vectors = model.embed(texts, norm=True)  # type: ignore[attr-defined]
        return np.nan_to_num(np.asarray(vectors, dtype=np.float32), nan=0.0)

    def _load(self) -> object:
        with self._lock:
            if self._model is None:
                from wordllama import WordLlama

                _install_tokenizer(self._cache_dir)
                self._model = WordLlama.load(
                    WORDLLAMA_CONFIG,
                    cache_dir=self._cache_dir,
                    dim=WORDLLAMA_DIM,
                    disable_download=True,
                )
            return self._model


def _install_tokenizer(cache_dir: Path) -> None:
    """Copy the wheel's tokenizer file where the loader looks (`tokenizers/`; `tokenizer/` too,
    the name some versions use), once: written whole under another name and then renamed,
    so that a copy cut short (a full disk) leaves no part of it to be taken for it; one of
    another size (cut short by an older version) is copied again."""
    bundled = files("wordllama") / "tokenizers" / f"{WORDLLAMA_CONFIG}_tokenizer_config.json"
    size = len(bundled.read_bytes())
    for folder in ("tokenizers", "tokenizer"):
        target = cache_dir / folder / bundled.name
        if target.exists() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, draft = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
        try:
            with bundled.open("rb") as source, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
            # mkstemp's 0600 would keep the wheel's public file from the cache's other users.
            os.chmod(draft, 0o644)
            os.replace(draft, target)
        finally:
            Path(draft).unlink(missing_ok=True)


class ServedEmbedder:
    """An OpenAI-compatible `/v1/embeddings` endpoint (vLLM serving an embedding model).

    Synchronous like every Embedder (it runs in a worker thread). The model's dimension is
    learnt from its first reply (one probe when asked before any text was embedded), vectors
    are normalised here since servers differ on whether they do it, and texts go in batches
    of BATCH so that one request stays within the server's limits.

    An embedding model's context is often shorter than a chunk (all-MiniLM-L6-v2: 256 tokens).
    With `truncate` the server is asked to cut each text to the model's context (vLLM's
    `truncate_prompt_tokens: -1`); a server that does not know that field refuses every
    request, so it is switched off for those (`knowledge.embedding_truncate`). A text the
    server still refuses (HTTP 400) costs that text alone: the batch is sent again one text at
    a time and the refused text gets a zero vector, similar to nothing. A request of several
    texts that are all refused raises EmbeddingError: the server is misconfigured."""

    BATCH = 128

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        truncate: bool = True,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s
        )
        self._body: dict[str, object] = {"model": model}
        if truncate:
            self._body["truncate_prompt_tokens"] = -1
        self._dim: int | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        with self._lock:
            known = self._dim
        return known if known is not None else int(self.embed(["dimension probe"]).shape[1])

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = [self._batch(texts[i : i + self.BATCH]) for i in range(0, len(texts), self.BATCH)]
        vectors = np.vstack(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)  # a refused text's zero vector stays zero
        with self._lock:
            self._dim = int(vectors.shape[1])
        return np.asarray(vectors, dtype=np.float32)

    def _batch(self, texts: list[str]) -> Vectors:
        try:
            return self._request(texts)
        except _Refused:
            alone = [self._alone(text) for text in texts] if len(texts) > 1 else [None]
        kept = [v for v in alone if v is not None]
        if kept:
            zero = np.zeros_like(kept[0])
        else:
            with self._lock:
                dim = self._dim
            if len(texts) > 1 or dim is None:  # nothing gets through: a misconfigured server
                raise EmbeddingError("embeddings server refused every text (HTTP 400)")
            zero = np.zeros((1, dim), dtype=np.float32)
        log.warning(
            "knowledge base: the embeddings server refused %d of %d texts (HTTP 400: longer "
            "than the model's context?); they are found by their words only",
            len(alone) - len(kept),
            len(alone),
        )
        return np.vstack([zero if v is None else v for v in alone])

    def _alone(self, text: str) -> Vectors | None:
        try:
            return self._request([text])
        except _Refused:
            return None

    def _request(self, texts: list[str]) -> Vectors:
        """One request; raises _Refused on HTTP 400, EmbeddingError on any other failure or an
        unexpected payload."""
        import httpx

        try:
            response = self._client.post("/embeddings", json={**self._body, "input": texts})
            if response.status_code == 400:
                raise _Refused
            response.raise_for_status()
            items = sorted(response.json()["data"], key=lambda item: item["index"])
            vectors = np.asarray([item["embedding"] for item in items], dtype=np.float32)
        except httpx.HTTPStatusError as exc:
            raise EmbeddingError(f"embeddings server answered {exc.response.status_code}") from exc
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"embeddings server unreachable: {type(exc).__name__}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError("embeddings server sent an unexpected payload") from exc
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise EmbeddingError("embeddings server sent an unexpected payload")
        return vectors

    def close(self) -> None:
        self._client.close()


class _Refused(Exception):
    """The server answered 400: it refuses this input (too long for the model, say)."""


class EmbeddingError(Exception):
    """The embedding model could not run (KnowledgeBase then searches by words alone)."""


def embedder_from_settings(settings: KnowledgeSettings) -> Embedder | None:
    """The served model when one is configured, else WordLlama; None when semantic search is
    off or wordllama is missing (with one log line)."""
    if not settings.semantic:
        return None
    if settings.embedding_base_url:
        key = settings.embedding_api_key
        return ServedEmbedder(
            settings.embedding_base_url,
            settings.embedding_model,
            api_key=key.get_secret_value() if key else None,
            timeout_s=settings.embedding_timeout_s,
            truncate=settings.embedding_truncate,
        )
    if not wordllama_available():
        log.warning("knowledge base: wordllama is not installed; full-text search only")
        return None
    cache = settings.embeddings_cache
    return WordLlamaEmbedder(Path(cache) if cache else data_dir() / "models")


def wordllama_available() -> bool:
    try:
        import wordllama  # noqa: F401
    except ImportError:
        return False
    return True


def to_blob(vector: Vectors) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: list[bytes], dim: int) -> Vectors:
    """Stacked vectors; the caller passes only blobs of dim * 4 bytes."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).astype(np.float32)
