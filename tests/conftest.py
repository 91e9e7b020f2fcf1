"""Shared fixtures: small real artefacts built once per test session.

Nothing here is downloaded: the tokenizer is GPT-2's real BPE (shipped in the repo),
and models are initialised from config.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_TASKS = ("t2i_prompt", "search_queries", "title")
TINY_QUERY_WORDS = (3, 24)  # the tiny model's trained query lengths: the server refuses others
TINY_CORPUS = [
    "holiday sale",
    "cozy reading nook",
    "a festive storefront with warm string lights and red ribbons, soft focus, golden hour",
    "winter discount ideas, christmas deals near me, gift guide under 50",
    "Warm Winter Savings",
]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer GPT-2 checkpoint with the compact tokenizer."""
    import torch

    from contract.command import COPY_SLOTS, CommandSpec
    from contract.positions import COUNTDOWN
    from training.checkpoint import Checkpoint, save_checkpoint
    from training.model import build_model
    from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer

    torch.manual_seed(0)
    spec = CommandSpec(
        tasks=TINY_TASKS,
        max_words=32,
        relevance_edges={t: (0.3, 0.5) for t in TINY_TASKS},
        task_words={"search_queries": TINY_QUERY_WORDS},  # the other tasks: the whole 1..32
        copy_slots=COPY_SLOTS,
        output_position=24,  # every prompt's positions shifted so outputs start at 24, as trained models do
        positions=COUNTDOWN,  # and output positions count down the words left, as trained models' do
    )
    tokenizer = add_command_tokens(compact_gpt2_tokenizer(TINY_CORPUS), spec.special_tokens())
    eos = tokenizer.token_to_id("<|endoftext|>")
    model = build_model("tiny", tokenizer.get_vocab_size(), eos, n_layer=2, n_embd=64, n_head=2, n_positions=128)
    out = tmp_path_factory.mktemp("tiny_checkpoint")
    return save_checkpoint(Checkpoint(model.eval(), tokenizer, spec, provenance={"note": "random init, tests"}), out)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny_checkpoint` exported by export's own code: fp32 + int8 + fp16, all verified."""
    from export.bundle import build_bundle

    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    # INT8 next-token agreement only means something on a trained model; a random-init one
    # has near-flat logits, so the threshold is off here (test_export checks it on a trained one).
    result = build_bundle(tiny_checkpoint, out, ("fp32", "int8", "fp16"), int8_min_agreement=0.0)
    assert result.bundle_dir is not None and not result.failures, result.failures
    return result.bundle_dir


@pytest.fixture()
def client(server: Any) -> Iterator[Any]:
    """An httpx client on the module's own `server` fixture (a ServerProcess)."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def kernel_library() -> Path:
    """Our CPU kernels' library (runtime/custom_ops.py), which the install builds: a test that
    needs it fails, not skips, where it is missing."""
    from runtime.custom_ops import library

    path = library()
    if path is None:
        pytest.fail("our kernels are not built: `pip install -e .` with a C compiler builds them (pyproject.toml)")
    return path


@pytest.fixture(params=["c", "numpy"])
def top_p_path(request: pytest.FixtureRequest, kernel_library: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The host sampler's top-p draw both ways: in C (runtime/top_p.c, as an install with our
    library runs it) and in numpy (an install without it)."""
    from runtime import top_p_kernel

    if request.param == "numpy":
        monkeypatch.setattr(top_p_kernel, "function", lambda: None)
    else:
        assert top_p_kernel.function() is not None
    return str(request.param)
