"""The GPT-2 tokenizer, full or compact, with the command tokens added.

GPT-2's BPE files (OpenAI's `encoder.json` / `vocab.bpe`, kept in `gpt2_bpe/`) give the
full 50,257-token tokenizer, used with pretrained GPT-2 weights (`--init`).

A tiny model trained from scratch cannot afford a 50k-row output layer on 2 CPU cores
(docs/architecture.md: 1,250 vs 4,100 training tokens/s), so the default is a *compact* GPT-2
tokenizer: the tokens the training corpus uses, every token they were merged from, and
the 256 byte tokens, with GPT-2's merges restricted to that set. Why this works:
- every token that appears while BPE-encoding a corpus word is an ancestor of one of
  its final tokens, so corpus text encodes exactly as full GPT-2 would encode it;
- any other text (an unseen intent) still encodes, into shorter pieces down to bytes,
  so the model can read and copy words it never saw instead of getting `<unk>`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tqdm import tqdm

from contract.command import EOS_TOKEN

GPT2_BPE_DIR = Path(__file__).parent / "gpt2_bpe"
TOKENIZER_FILE = "tokenizer.json"


def _read_gpt2_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = json.loads((GPT2_BPE_DIR / "vocab.json").read_text(encoding="utf-8"))
    lines = (GPT2_BPE_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    return vocab, [(left, right) for left, right in pairs]


def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's own tokenizer, vocabulary 50,257 (with `<|endoftext|>` = 50256)."""
    vocab, merges = _read_gpt2_bpe()
    tokenizer = _byte_level(vocab, merges)
    tokenizer.add_special_tokens([EOS_TOKEN])
    return tokenizer


def compact_gpt2_tokenizer(corpus: Iterable[str]) -> Tokenizer:
    """GPT-2's BPE restricted to what `corpus` needs, plus the 256 byte tokens."""
    vocab, merges = _read_gpt2_bpe()
    full = _byte_level(vocab, merges)
    id_to_token = {i: t for t, i in vocab.items()}
    parents = {a + b: (a, b) for a, b in merges}

    keep = {t for t, i in vocab.items() if i < 256}  # GPT-2 ids 0..255 are the byte alphabet
    texts = [" " + t for t in corpus]
    for start in tqdm(range(0, len(texts), 4096), desc="compact vocab", unit="batch", leave=False):
        for encoding in full.encode_batch(texts[start : start + 4096], add_special_tokens=False):
            keep.update(id_to_token[i] for i in encoding.ids)
    stack = list(keep)
    while stack:  # close over merge ancestors, so BPE can reach every kept token
        token = stack.pop()
        for parent in parents.get(token, ()):
            if parent not in keep:
                keep.add(parent)
                stack.append(parent)

    kept = sorted(keep, key=vocab.__getitem__)  # stable order: by GPT-2 id
    compact_vocab = {t: i for i, t in enumerate(kept)}
    compact_merges = [(a, b) for a, b in merges if a + b in keep]
    tokenizer = _byte_level(compact_vocab, compact_merges)
    tokenizer.add_special_tokens([EOS_TOKEN])
    return tokenizer


def add_command_tokens(tokenizer: Tokenizer, special_tokens: list[str]) -> Tokenizer:
    """Append the command vocabulary; ids follow the base vocabulary in a fixed order."""
    tokenizer.add_special_tokens(special_tokens)
    missing = [t for t in special_tokens if tokenizer.token_to_id(t) is None]
    if missing:
        raise ValueError(f"could not add command tokens {missing}")
    return tokenizer


def load_tokenizer(path: Path | str) -> Tokenizer:
    path = Path(path)
    return Tokenizer.from_file(str(path / TOKENIZER_FILE if path.is_dir() else path))
