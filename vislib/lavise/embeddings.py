"""Word embeddings in GloVe text format: a loader, a writer and a seeded table for small vocabularies."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vislib.errors import ConfigError, DataError
from vislib.io import atomic_path

DISTRACTORS = [
    "tree", "car", "dog", "house", "water", "person", "table", "sky", "book", "phone",
    "grass", "road", "window",
]
"""Everyday words added to a seeded word table beside a dataset's concepts, so a ranking has wrong answers to
avoid (a word that is also a concept of the dataset is not added twice)."""


@dataclass
class WordEmbeddings:
    """A word table: `words[i]` has the vector `vectors[i]` (float32 [V,D])."""

    words: list[str]
    vectors: np.ndarray
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vectors = np.asarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise DataError(f"embedding table has {len(self.words)} words but vectors of shape "
                            f"{self.vectors.shape}; expected [{len(self.words)}, D]")
        self.index = {}
        for i, word in enumerate(self.words):
            # GloVe files can repeat a token; the first row wins, as in torchtext.
            self.index.setdefault(word, i)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    @property
    def dim(self) -> int:
        """Vector size D."""
        return int(self.vectors.shape[1])

    def vectors_of(self, words: Sequence[str]) -> torch.Tensor:
        """Float32 [len(words), D] rows of `words`; every word must be in the table."""
        missing = [w for w in words if w not in self.index]
        if missing:
            raise DataError(f"words {missing[:5]} are not in the embedding table ({len(self)} words); "
                            "use the embedding file the concept targets were built with")
        return torch.from_numpy(self.vectors[[self.index[w] for w in words]])

    def unit_vectors(self) -> torch.Tensor:
        """All vectors scaled to unit length (zero rows stay zero), float32 [V,D]."""
        vectors = torch.from_numpy(self.vectors)
        return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)


def load_glove(path: str | os.PathLike, keep: Iterable[str] | None = None) -> WordEmbeddings:
    """Read a GloVe text file ("word v1 ... vD" per line); `keep` limits the table to those words."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"embedding file {str(path)!r} does not exist; write one with "
                        "vislib.lavise.write_seeded_embeddings or download GloVe (glove.6B.300d.txt)")
    wanted = set(keep) if keep is not None else None
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            # Split from the right: a few GloVe tokens contain spaces, vectors never do.
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if len(parts) < 2:
                if line.strip():
                    raise DataError(f"embedding file {str(path)!r} line {line_no} has no vector")
                continue
            dim = dim or len(parts) - 1
            word = " ".join(parts[:len(parts) - dim])
            if len(parts) - 1 < dim or not word:
                raise DataError(f"embedding file {str(path)!r} line {line_no} has {len(parts) - 1} "
                                f"values, expected {dim}")
            if wanted is not None and word not in wanted:
                continue
            try:
                rows.append(np.asarray(parts[-dim:], dtype=np.float32))
            except ValueError:
                raise DataError(f"embedding file {str(path)!r} line {line_no} has a value that is not "
                                "a number") from None
            words.append(word)
    if not words:
        what = "none of the requested words" if wanted is not None else "no vectors"
        raise DataError(f"embedding file {str(path)!r} holds {what}; check the file and the vocabulary")
    return WordEmbeddings(words, np.stack(rows))


def write_glove(path: str | os.PathLike, embeddings: WordEmbeddings) -> None:
    """Write a table in GloVe text format, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for word, vector in zip(embeddings.words, embeddings.vectors, strict=True):
            handle.write(word + " " + " ".join(f"{v:.6f}" for v in vector) + "\n")


def seeded_embeddings(words: Sequence[str], dim: int = 50, seed: int = 0) -> WordEmbeddings:
    """A fixed random unit vector per word; a word's vector depends only on (word, dim, seed)."""
    if dim < 2:
        raise ConfigError(f"embedding dim {dim} is too small; use 2 or more (e.g. 50)")
    unique = list(dict.fromkeys(words))
    if not unique:
        raise ConfigError("seeded_embeddings got an empty word list; give at least one word")
    rows = []
    for word in unique:
        # Seeding per word keeps a word's vector stable when the vocabulary grows.
        digest = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
        vector = np.random.default_rng([seed, digest]).standard_normal(dim)
        rows.append(vector / np.linalg.norm(vector))
    return WordEmbeddings(unique, np.stack(rows).astype(np.float32))


def write_seeded_embeddings(path: str | os.PathLike, words: Sequence[str], dim: int = 50,
                            seed: int = 0) -> WordEmbeddings:
    """Write the seeded table for `words` in GloVe format."""
    table = seeded_embeddings(words, dim, seed)
    write_glove(path, table)
    return table
