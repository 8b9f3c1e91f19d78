"""Text embeddings for semantic search, computed offline.

The default model is WordLlama's `l2_supercat` (256 dimensions), a static embedding model that
ships inside the `wordllama` wheel: no download, no GPU, about 1,500 passages a second on one
core. Its loader looks for the tokenizer file in a `tokenizers/` folder of its cache directory
and otherwise downloads it, so the bundled file is copied there first and downloads are
disabled: loading never touches the network.

Vectors are unit length (cosine similarity is a dot product) and are stored with their chunk as
little-endian float32 bytes.
"""

from __future__ import annotations

import logging
import shutil
import threading
from importlib.resources import files
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

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
        vectors = self._load().embed(texts, norm=True)  # type: ignore[attr-defined]
        return np.asarray(vectors, dtype=np.float32)

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
    the name some versions use), once."""
    bundled = files("wordllama") / "tokenizers" / f"{WORDLLAMA_CONFIG}_tokenizer_config.json"
    for folder in ("tokenizers", "tokenizer"):
        target = cache_dir / folder / bundled.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with bundled.open("rb") as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)


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
