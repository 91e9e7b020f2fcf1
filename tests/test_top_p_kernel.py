"""The top-p draw in C (runtime/top_p.c) against the numpy draws it replaces where it is built:
the same token for the same row, top_p and uniform, over peaked, flat, tied and tail-heavy rows,
and always a token of the nucleus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime import top_p_kernel
from runtime.sampler import Row, SamplingParams, _draw_by_buckets, make_generator, row_mass, sample


@pytest.fixture(params=["avx512", "portable"])
def path_kind(request: pytest.FixtureRequest, kernel_library: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each parity test on both code paths of the C draw: AVX-512 where this CPU has it, and the
    scalar C (PROMPTGEN_TOP_P_PORTABLE, read at each call)."""
    if request.param == "portable":
        monkeypatch.setenv("PROMPTGEN_TOP_P_PORTABLE", "1")
    if (request.param == "avx512") != top_p_kernel.vectorized():
        pytest.skip("this CPU has no AVX-512: the portable run covers the draw")
    return str(request.param)


def nucleus(probs: np.ndarray, top_p: float) -> set[int]:
    """The tokens top-p keeps in one row, by a full stable sort: most likely first, each kept
    while the mass before it is below top_p of the row's."""
    order = np.argsort(-probs.astype(np.float64), kind="stable")
    p = probs[order].astype(np.float64)
    before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
    return set(order[(before < top_p * p.sum()) & (p > 0)].tolist()) | {int(order[0])}


def softmax_rows(rng: np.random.Generator, rows: int, vocab: int, scale: float) -> np.ndarray:
    """exp(z - max z) of normal logits: what `sample` hands the draw (each row's largest is 1)."""
    logits = rng.normal(0, scale, (rows, vocab)).astype(np.float32)
    return np.exp(logits - logits.max(axis=1, keepdims=True))


def test_c_draws_the_numpy_draws_token(path_kind: str) -> None:
    """Dirichlet rows (peaked to flat, with ties and zeros) and softmax rows of a 7,106-token
    vocabulary at several logit scales, and of GPT-2's 50,257: peaked rows leave most tokens in the tail the C draw
    skips, flat ones put thousands in the nucleus. Every top_p, 1 included."""
    rng = np.random.default_rng(21)
    cases = []
    for concentration in (0.02, 0.3, 5.0):
        for vocab in (1, 5, 300, 3000):
            probs = rng.dirichlet(np.full(vocab, concentration), size=16).astype(np.float32)
            probs[8:] = np.round(probs[8:] * 50) / 50  # many equal probabilities, zeros too
            probs[8:, 0] += 0.01  # no row all zeros
            cases.append(probs / probs.max(axis=1, keepdims=True))
    cases += [softmax_rows(rng, 32, 7106, scale) for scale in (0.3, 1.0, 2.5, 4.0, 10.0)]
    cases += [softmax_rows(rng, 8, 50257, scale) for scale in (0.5, 6.0)]  # GPT-2's own vocabulary
    draws = 0
    for probs in cases:
        total = row_mass(probs)
        for top_p in (1e-6, 0.1, 0.5, 0.9, 0.95, 0.999999, 1.0):
            for _ in range(3):
                u = rng.random(probs.shape[0])
                ours = top_p_kernel.draw(probs, np.full(probs.shape[0], top_p), total, u)
                numpy = _draw_by_buckets(probs, top_p * total, u)
                assert ours.tolist() == numpy.tolist(), (probs.shape, top_p)
                draws += ours.size
                for i, token in enumerate(ours.tolist()):
                    assert top_p == 1.0 or token in nucleus(probs[i], top_p), (probs.shape, top_p, i)
    assert draws > 7_000


def test_a_uniform_walks_the_sorted_nucleus_token_by_token(path_kind: str) -> None:
    """On small rows, every uniform on a fine grid gives the token the plain definition gives: the
    nucleus in sampling order (ties: lower id first), the first token whose running kept mass
    exceeds uniform * the kept mass."""
    rng = np.random.default_rng(22)
    for vocab in (3, 17, 64):
        probs = rng.dirichlet(np.full(vocab, 0.5), size=4).astype(np.float32)
        probs[2] = np.round(probs[2] * 8) / 8 + 0.01  # ties
        probs /= probs.max(axis=1, keepdims=True)
        total = row_mass(probs)
        for top_p in (0.3, 0.8, 1.0):
            for u in np.linspace(0.0, 0.999, 97):
                ours = top_p_kernel.draw(probs, np.full(4, top_p), total, np.full(4, u))
                for i in range(4):
                    order = np.argsort(-probs[i].astype(np.float64), kind="stable")
                    p = probs[i][order].astype(np.float64)
                    before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
                    kept = np.where(before < top_p * total[i], p, 0.0)
                    expected = order[np.argmax(np.cumsum(kept) > u * kept.sum())]
                    assert ours[i] == expected, (vocab, top_p, u, i)


@pytest.mark.parametrize("top_p", [0.5, 0.95])
def test_sample_gives_a_seeded_row_the_same_tokens_with_the_c_draw_or_without(
    kernel_library: Path, monkeypatch: pytest.MonkeyPatch, top_p: float
) -> None:
    """`sample` end to end (temperature, bans, the batch and the lone-row paths): an install with
    our library and one without draw the same tokens for the same seeds."""
    rng = np.random.default_rng(23)
    logits = (rng.normal(size=(40, 8, 7106)) * rng.choice([0.5, 2.0, 6.0], size=(40, 8, 1))).astype(np.float32)

    def run() -> list[list[int]]:
        rows = [Row(SamplingParams(0.8, top_p), make_generator(i, 0), [], [3, 5]) for i in range(8)]
        return [sample(step, rows).tolist() + sample(step[:1], rows[:1]).tolist() for step in logits]

    ours = run()
    monkeypatch.setattr(top_p_kernel, "function", lambda: None)
    assert run() == ours
    assert len({tokens[0] for tokens in ours}) > 5  # it samples, not the argmax each step
