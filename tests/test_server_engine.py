"""The serving engine in-process: sampler, ONNX runner, batch KV cache, scheduler.

Everything runs the real OnnxRunner on the real tiny bundle (random weights, so the
text is gibberish: these tests check behaviour, never text quality).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from contract.command import EOS_TOKEN, count_words, prompt_ids
from contract.manifest import BundleError, load_manifest, sha256_file
from runtime.cache_graph import build_cache_graph, cache_graph
from runtime.kv_cache import BatchCache, can_write_in_place, empty_cache, live, rebuild, write_in_place
from runtime.onnx_runner import OnnxRunner
from runtime.padding import pad
from runtime.sampler import (
    DENSE_FRACTION,
    KEY_SORT_FROM,
    NO_TOKEN,
    NUCLEUS_CUTS,
    Row,
    SamplingParams,
    _by_row_most_likely_first,
    _draw_by_buckets,
    _draw_from_sorted_candidates,
    _sample_nucleus,
    apply_repetition_penalty,
    make_generator,
    row_mass,
    sample,
)
from runtime.sampler_graph import build_sampler_graph, sampler_graph
from server.engine.request import Event, GenerationRequest, LengthBounds, RequestDone, RequestFailed, SampleDone
from server.engine.scheduler import HOLD_STEPS, SHRINK_AFTER_STEPS, Scheduler
from server.engine.sequence import Sequence
from server.metrics import Metrics
from tests.poisoned_bundle import poisoned_bundle
from tests.ragged_rows import check_mixed_step, check_ragged_rows, prefill

# --- sampler -----------------------------------------------------------------------


def row(seed: int | None = 0, **params: float) -> Row:
    fields = {"temperature": 0.8, "top_p": 1.0, **params}
    return Row(SamplingParams(**fields), make_generator(seed, 0), generated=[], banned=[])  # type: ignore[arg-type]


def nucleus_mask(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The reference the batched samplers must agree with: the smallest set of tokens whose
    probability reaches top_p, one row, by a full stable sort."""
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = order[(cumulative - probs[order]) < top_p * probs.sum()]  # the first token is always kept
    mask = np.zeros(probs.size, dtype=bool)
    mask[keep] = True
    return mask


def test_greedy_is_argmax_and_respects_banned_tokens() -> None:
    logits = np.random.default_rng(0).normal(size=(3, 50)).astype(np.float32)
    rows = [row(temperature=0.0) for _ in range(3)]
    assert sample(logits, rows).tolist() == logits.argmax(axis=1).tolist()
    top = int(logits[0].argmax())
    rows[0].banned = [top]
    assert sample(logits, rows)[0] != top


def test_seeded_row_samples_the_same_whatever_its_batch_mates(top_p_path: str) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20, 100)).astype(np.float32)  # 20 steps of one row's logits

    def run(batch_mates: int) -> list[int]:
        ours = row(seed=42, temperature=1.0, top_p=0.9, top_k=50)
        others = [row(seed=None, temperature=1.3) for _ in range(batch_mates)]
        tokens = []
        for step in range(20):
            batch = np.concatenate([rng.normal(size=(batch_mates, 100)), logits[step : step + 1]]).astype(np.float32)
            tokens.append(int(sample(batch, [*others, ours])[-1]))
        return tokens

    assert run(0) == run(7)
    assert len(set(run(0))) > 1  # it does sample, not always the argmax


def test_each_row_of_a_mixed_batch_draws_what_it_draws_alone_and_the_logits_stay_as_they_were(top_p_path: str) -> None:
    """Greedy, top-p, plain and top-k rows, banned tokens, peaked and flat logits in one call: the
    sampler scales its own copy in place and takes whole-batch shortcuts (every row sampled,
    every row top-p), which must not change any row's token or the caller's logits."""
    rng = np.random.default_rng(8)
    logits = (rng.normal(size=(6, 500)) * np.array([[4.0], [4.0], [0.5], [4.0], [0.5], [4.0]])).astype(np.float32)
    before = logits.copy()
    params: list[dict[str, float]] = [
        {"temperature": 0.0},
        {"top_p": 0.9},
        {"top_p": 0.95},
        {"top_p": 1.0},
        {"temperature": 1.2, "top_p": 0.8},
        {"top_k": 5},
    ]

    def rows() -> list[Row]:
        made = [row(seed=10 + i, **p) for i, p in enumerate(params)]
        made[1].banned = [int(logits[1].argmax())]
        return made

    for start, stop in ((0, 6), (1, 5), (1, 3)):  # all of them, every row sampled, every row top-p
        together = sample(logits[start:stop], rows()[start:stop])
        alone = [int(sample(logits[i : i + 1], [rows()[i]])[0]) for i in range(start, stop)]
        assert together.tolist() == alone
    for read in ([2, 0, 2, 5], [3]):  # rows reading logits rows by index, as a prefill's n samples do
        chosen = [rows()[i] for i in read]
        by_index = sample(logits, chosen, None, np.array(read))
        assert by_index.tolist() == sample(logits[read], [rows()[i] for i in read]).tolist()
    np.testing.assert_array_equal(logits, before)
    assert sample(logits, rows())[1] != logits[1].argmax()  # its ban holds in the batch


def test_sampling_in_a_forward_s_own_logits_draws_what_a_copy_draws(top_p_path: str) -> None:
    """`scratch`: the sampler works in the caller's logits where its rows read every logits row in
    order (a forward's fresh array), else in its own copy; the tokens are the same either way."""
    rng = np.random.default_rng(16)
    logits = (rng.normal(size=(6, 700)) * rng.choice([0.5, 4.0], size=(6, 1))).astype(np.float32)
    mixed: list[dict[str, float]] = [{"top_p": 0.9}, {"temperature": 0.0}, {"top_k": 5}, {"top_p": 1.0}]
    for params in (mixed, [{"top_p": 0.95}]):
        for read in (None, np.arange(6), np.array([0, 2, 2, 5]), np.array([5, 4, 3, 2, 1, 0])):
            count = 6 if read is None else len(read)

            def rows(count: int = count, params: list[dict[str, float]] = params) -> list[Row]:
                return [row(seed=20 + i, **params[i % len(params)]) for i in range(count)]

            expected = sample(logits, rows(), None, read)
            own = logits.copy()
            assert sample(own, rows(), None, read, scratch=True).tolist() == expected.tolist()
            in_order = read is None or read.tolist() == list(range(6))
            if not in_order:
                np.testing.assert_array_equal(own, logits)  # gathered into its own copy
            elif len(params) == 1:
                assert not np.array_equal(own, logits)  # every row sampled: worked in the array


def test_a_lone_row_draws_what_the_batched_sampler_draws_for_it(top_p_path: str) -> None:
    """`sample` takes a shortcut for a batch of one (_sample_row); the first row of a batch of
    two goes the batched way with the same arithmetic, so both must give the same token for the
    same generator, over peaked, flat and tied logits and every parameter."""
    rng = np.random.default_rng(12)
    choices: list[dict[str, float]] = [
        {"temperature": 0.0},
        {"top_p": 0.95},
        {"top_p": 0.5},
        {"temperature": 1.3, "top_p": 0.999},
        {"top_p": 1.0},
        {"top_k": 20, "top_p": 0.9},
        {"repetition_penalty": 1.3, "top_p": 0.9},
    ]
    never = np.array([3, 7], np.int64)
    for case in range(300):
        vocab = int(rng.choice([40, 700, 7083]))
        logits = (rng.normal(size=(2, vocab)) * rng.choice([0.3, 2.0, 6.0])).astype(np.float32)
        if case % 3 == 0:
            logits = np.round(logits)  # ties
        params = choices[case % len(choices)]

        def made(seed: int, p: dict[str, float] = params, n: int = vocab) -> Row:
            r = row(seed=seed, **p)
            r.generated, r.banned = rng.integers(0, n, 5).tolist(), rng.integers(0, n, 2).tolist()
            return r

        alone, mate = made(case), made(case + 1000)
        batched = made(case)
        batched.generated, batched.banned = alone.generated, alone.banned
        expected = int(sample(logits, [batched, mate], never)[0])
        assert int(sample(logits[:1], [alone], never)[0]) == expected, (case, params)


@pytest.mark.parametrize("broken", ["nan", "+inf", "nothing finite"])
def test_a_row_whose_logits_are_not_finite_gets_no_token_and_its_batch_mates_draw_as_before(
    broken: str, top_p_path: str
) -> None:
    """A NaN or +inf anywhere in a row (an fp16 overflow), or no finite logit at all: the host
    sampler answers NO_TOKEN for that row, alone or in a batch, whatever its parameters, and each
    other row draws the token it draws without it in the batch."""
    rng = np.random.default_rng(31)
    choices: list[dict[str, float]] = [
        {"temperature": 0.0},
        {"top_p": 0.9},
        {"top_p": 1.0},
        {"top_k": 5, "top_p": 0.9},
        {"repetition_penalty": 1.3, "top_p": 0.9},
    ]
    for case, params in enumerate(choices):
        for vocab in (60, 7083):
            logits = (rng.normal(size=(3, vocab)) * 3).astype(np.float32)
            if broken == "nothing finite":
                logits[1] = -np.inf
            else:
                logits[1, rng.integers(vocab)] = np.nan if broken == "nan" else np.inf

            def mates(seed: int = case) -> list[Row]:
                return [row(seed=seed, top_p=0.9), row(seed=seed + 1, temperature=0.0)]

            def broken_row(p: dict[str, float] = params) -> Row:
                made = row(seed=7, **p)
                made.generated = [1, 2]
                return made

            first, second = mates()
            tokens = sample(logits, [first, broken_row(), second])
            assert tokens[1] == NO_TOKEN, (case, vocab)
            assert tokens[[0, 2]].tolist() == sample(logits[[0, 2]], mates()).tolist()
            assert (tokens[[0, 2]] >= 0).all()
            assert sample(logits[1:2], [broken_row()])[0] == NO_TOKEN  # alone: _sample_row


def test_never_tokens_are_never_sampled() -> None:
    logits = np.random.default_rng(6).normal(size=(4, 40)).astype(np.float32)
    never = np.unique(logits.argmax(axis=1))
    tokens = sample(logits, [row(temperature=0.0), row(temperature=0.0), row(seed=1), row(seed=2)], never)
    assert not set(tokens.tolist()) & set(never.tolist())


def test_top_k_one_and_tiny_top_p_are_greedy(top_p_path: str) -> None:
    logits = np.random.default_rng(2).normal(size=(4, 300)).astype(np.float32)
    greedy = logits.argmax(axis=1).tolist()
    assert sample(logits, [row(seed=i, temperature=1.0, top_k=1) for i in range(4)]).tolist() == greedy
    assert sample(logits, [row(seed=i, temperature=1.0, top_p=1e-6) for i in range(4)]).tolist() == greedy


@pytest.mark.parametrize("vocab", [50, 1000])
def test_nucleus_mask_is_the_smallest_set_reaching_top_p(vocab: int) -> None:
    probs = np.random.default_rng(vocab).dirichlet(np.full(vocab, 0.3))
    for top_p in (0.1, 0.5, 0.9, 0.999):
        mask = nucleus_mask(probs, top_p)
        order = np.argsort(-probs)
        k = int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)
        assert set(np.flatnonzero(mask)) == set(order[:k].tolist())


@pytest.mark.parametrize("concentration", [0.05, 5.0])  # peaked: the fast path; flat: the full-sort fallback
def test_batched_top_p_samples_only_inside_the_nucleus(concentration: float, top_p_path: str) -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(2000, concentration), size=8)
    logits = np.log(probs).astype(np.float32)
    seen: set[tuple[int, int]] = set()
    for seed in range(40):
        tokens = sample(logits, [row(seed=seed * 8 + i, temperature=1.0, top_p=0.8) for i in range(8)])
        for i, token in enumerate(tokens):
            assert nucleus_mask(np.exp(logits[i].astype(np.float64)), 0.8)[token], (i, token)
            seen.add((i, int(token)))
    assert len(seen) > 8  # not stuck on the argmax


def test_top_p_within_float32_rounding_of_one_keeps_the_whole_row(top_p_path: str) -> None:
    """A top_p so near 1 that top_p times the row's float32 total can exceed its float64 total
    (no bucket of probability reaches it): the nucleus is the whole row. The numpy draw used to
    index past the end of a row's empty bucket there (an IndexError that failed the step)."""
    rng = np.random.default_rng(15)
    for trial in range(12):
        logits = (rng.normal(size=(32, 7106)) * 0.3).astype(np.float32)
        rows = [row(seed=trial * 32 + i, temperature=1.0, top_p=1 - 1e-9) for i in range(32)]
        rows[0].banned = [0, 1, 2]  # zeros in a row's least likely bucket
        tokens = sample(logits, rows)
        assert (tokens >= 0).all() and tokens[0] > 2


def test_top_p_draws_the_same_token_by_buckets_or_sorted_candidates() -> None:
    """The bucketed draw (flat rows) and the flat candidate sort (peaked rows) are one sampler:
    the same token for the same uniform, ties between equal probabilities and zeros included."""
    rng = np.random.default_rng(11)
    for concentration in (0.02, 0.3, 5.0):
        for vocab in (5, 300, 3000):
            probs = rng.dirichlet(np.full(vocab, concentration), size=16).astype(np.float32)
            probs[8:] = np.round(probs[8:] * 50) / 50  # many equal probabilities, zeros too
            probs[8:, 0] += 0.01  # no row all zeros
            for top_p in (0.1, 0.5, 0.9, 0.999, 1.0):
                mass = top_p * probs.sum(axis=1, dtype=np.float64)
                u = rng.random(16)
                by_buckets = _draw_by_buckets(probs, mass, u)
                by_candidates = _draw_from_sorted_candidates(probs, np.flatnonzero(probs >= 0), mass, u)
                assert by_buckets.tolist() == by_candidates.tolist(), (concentration, vocab, top_p)
                for i, token in enumerate(by_buckets):
                    assert nucleus_mask(probs[i].astype(np.float64), top_p)[token] or top_p == 1.0
    for scale in (1.0, 4.0):  # softmax rows of a model's logits: unnormalised, the top one is 1
        logits = rng.normal(0, scale, (32, 7106)).astype(np.float32)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        mass = 0.95 * probs.sum(axis=1, dtype=np.float64)
        for _ in range(5):
            u = rng.random(32)
            by_candidates = _draw_from_sorted_candidates(probs, np.flatnonzero(probs >= 0), mass, u)
            assert _draw_by_buckets(probs, mass, u).tolist() == by_candidates.tolist()


def test_rows_settling_at_different_cuts_draw_as_the_full_bucketed_draw() -> None:
    """_sample_nucleus rescans only the rows its first cut did not settle; rows settled at each
    cut, in any mix and order in the batch, get the token the bucketed draw over every row gives."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        scale = rng.choice([3.0, 4.0, 6.0, 10.0], size=(24, 1))  # flatter rows need lower cuts
        logits = (rng.normal(size=(24, 3000)) * scale).astype(np.float32)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        top_p, u = np.full(24, 0.95), rng.random(24)
        cuts = [next(c for c in NUCLEUS_CUTS if np.where(r >= c, r, 0).sum() >= 0.95 * r.sum()) for r in probs]
        assert len(set(cuts)) >= 2, cuts  # rows settle at different cuts
        candidates = sum(int((r >= c).sum()) for r, c in zip(probs, cuts, strict=True))
        assert candidates <= DENSE_FRACTION * probs.size  # so the candidate path draws, not the buckets
        mass = top_p * probs.sum(axis=1, dtype=np.float64)
        assert _sample_nucleus(probs, top_p, u).tolist() == _draw_by_buckets(probs, mass, u).tolist()


def test_many_tokens_sort_by_row_then_most_likely_first_as_lexsort_orders_them() -> None:
    """Past KEY_SORT_FROM tokens the sampler sorts one int64 key made of each token's row and its
    probability's bits: the same order as np.lexsort on (-p, row), ties (equal probabilities,
    zeros, the same value in two rows) in their given order, rows given in any order."""
    rng = np.random.default_rng(13)
    for size in (KEY_SORT_FROM - 1, KEY_SORT_FROM, 3000):
        p = rng.dirichlet(np.full(size, 0.05)).astype(np.float32)
        p[rng.integers(0, size, size // 4)] = np.round(p[: size // 4] * 8) / 8  # ties, zeros, 1.0
        row_of = rng.integers(0, 32, size)  # rows interleaved, as candidates of several cuts are
        expected = np.lexsort((-p.astype(np.float64), row_of))
        assert _by_row_most_likely_first(row_of, p).tolist() == expected.tolist(), size


def test_a_rows_mass_is_the_same_wherever_the_row_sits_in_memory() -> None:
    """A row's total probability must not depend on its batch: a lone row is a fresh copy at its
    own alignment, a batch's rows sit at offsets of their own (np.einsum's sum fails this on GPT-2's
    50,257 tokens)."""
    rng = np.random.default_rng(14)
    for vocab in (40, 7083, 50257):  # a compact vocabulary, GPT-2's own
        logits = (rng.normal(size=(16, vocab)) * 4).astype(np.float32)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        batched = row_mass(probs)
        for i in range(16):
            buffer = np.empty(vocab + 16, np.float32)
            offset = int(rng.integers(0, 16))
            alone = buffer[offset : offset + vocab]
            alone[...] = probs[i]
            assert row_mass(alone[None])[0] == batched[i], (vocab, i, offset)
        np.testing.assert_allclose(batched, probs.sum(axis=1, dtype=np.float64), rtol=1e-5)


def test_repetition_penalty_shrinks_only_generated_tokens() -> None:
    logits = np.array([2.0, -2.0, 1.0, 0.5], np.float32)
    apply_repetition_penalty(logits, generated=[0, 1, 1], penalty=2.0)
    assert logits.tolist() == [1.0, -4.0, 1.0, 0.5]


# --- runner and KV cache -------------------------------------------------------------


@pytest.fixture(scope="module")
def runner(tiny_bundle: Path) -> OnnxRunner:
    return OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def int8_cache_runner(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> OnnxRunner:
    """The tiny bundle's fp32 graph with an int8 KV cache calibrated by export/kv_int8.py. Its
    weights stay fp32 (the int8 variant quantises activations per batch), so each row's logits
    do not depend on its batch mates and the cache's layout is what a test sees."""
    from export.kv_int8 import kv_scales, quantize_kv_cache
    from training.checkpoint import load_checkpoint

    bundle = tmp_path_factory.mktemp("int8_cache") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    checkpoint = load_checkpoint(tiny_checkpoint)
    manifest = load_manifest(bundle)
    scales = kv_scales(checkpoint.model, checkpoint.tokenizer, checkpoint.command, manifest.model.eos_token_id)
    fp32 = manifest.variant("fp32")
    for file in (fp32.file, fp32.mixed_file):
        quantize_kv_cache(bundle / file, scales)
    fp32.kv_dtype, fp32.sha256 = "int8", sha256_file(bundle / fp32.file)
    fp32.mixed_sha256 = sha256_file(bundle / fp32.mixed_file)
    manifest.write(bundle)
    return OnnxRunner(bundle, variant="fp32", provider="cpu", intra_op_threads=1)


def test_an_int8_cache_is_int8_on_the_host_and_refuses_device_surgery(
    int8_cache_runner: OnnxRunner, caplog: pytest.LogCaptureFixture
) -> None:
    runner = int8_cache_runner
    assert runner.kv_dtype == np.int8 and runner.ragged_rows
    with caplog.at_level(logging.INFO, logger="runtime.onnx_runner"):
        OnnxRunner(runner.bundle_dir, variant="fp32", provider="cpu")
    ready = next(r for r in caplog.records if r.getMessage() == "runner ready")
    assert (ready.kv_dtype, ready.kv_cache, ready.ragged_rows) == ("int8", "ragged", True)  # what an operator reads
    _, cache = prefill(runner, [3, 4, 5])
    values = live(runner, cache.past[0], 3)
    assert values.dtype == np.int8 and np.abs(values.astype(np.int32)).max() > 0
    with pytest.raises(BundleError, match="int8 KV cache, served on CPU only"):
        OnnxRunner(runner.bundle_dir, variant="fp32", provider="cpu", device_cache=True)


@pytest.fixture(scope="module")
def tokenizer(tiny_bundle: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))


def test_a_batch_from_empty_adopts_its_prefill_cache(runner: OnnxRunner) -> None:
    """Joining an empty batch once each, in order, the prefill's cache becomes the batch's
    without a copy; its padding columns are zeroed; it decodes like each row alone."""
    prompts = [[3, 4, 5, 6, 7], [10, 11]]
    input_ids, mask, positions = pad(prompts, runner.eos_token_id, [0, 0])
    _, present = runner.forward(input_ids, mask, positions, runner.empty_past(2))
    joining = BatchCache(present, mask)
    cache = rebuild(runner, empty_cache(runner), np.array([], np.int64), joining, np.array([0, 1]))
    assert cache.past[0].data_ptr() == present[0].data_ptr()  # adopted, not copied
    assert not live(runner, cache.past[0], cache.columns)[1, :, :3].any()  # row 1's padding zeroed
    step_mask = np.concatenate([cache.mask, np.ones((2, 1), np.int64)], axis=1)
    logits, _ = runner.forward(np.full((2, 1), 20, np.int64), step_mask, cache.positions(), cache.past)
    for row, ids in enumerate(prompts):
        _, alone = prefill(runner, ids)
        alone_mask = np.concatenate([alone.mask, np.ones((1, 1), np.int64)], axis=1)
        expected, _ = runner.forward(np.array([[20]], np.int64), alone_mask, alone.positions(), alone.past)
        np.testing.assert_allclose(logits[row], expected[0], atol=1e-4)
    # n samples of one prompt repeat its row: that is a copy, not an adoption
    _, present = runner.forward(input_ids, mask, positions, runner.empty_past(2))
    copied = rebuild(runner, empty_cache(runner), np.array([], np.int64), BatchCache(present, mask), np.array([0, 0]))
    assert copied.past[0].data_ptr() != present[0].data_ptr() and copied.rows == 2


def test_runner_forward_keeps_the_kv_cache_on_the_device(runner: OnnxRunner) -> None:
    ids = np.array([[5, 6, 7, 8]], np.int64)
    logits, present = runner.forward(ids, np.ones_like(ids), np.arange(4)[None, :], runner.empty_past(1))
    assert logits.shape == (1, runner.vocab_size) and logits.dtype == np.float32
    assert all(isinstance(p, ort.OrtValue) for p in present)
    assert live(runner, present[0], 4).shape == (1, runner.n_kv_head, 4, runner.head_dim)


def test_rebuilt_batch_decodes_like_each_row_alone(runner: OnnxRunner) -> None:
    """Rows of different lengths, merged (left padding) and with a row dropped, give the
    same next-token logits as when each decodes alone: the cache surgery is exact."""
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
    alone = []
    for ids in prompts:
        _, cache = prefill(runner, ids)
        next_ids = np.array([[20]], np.int64)
        mask = np.concatenate([cache.mask, np.ones((1, 1), np.int64)], axis=1)
        logits, _ = runner.forward(next_ids, mask, cache.positions(), cache.past)
        alone.append(logits[0])

    cache = empty_cache(runner)
    for ids in prompts:  # join one at a time, as requests arrive
        _, joining = prefill(runner, ids)
        cache = rebuild(runner, cache, np.arange(cache.rows), joining, np.array([0]))
    cache = rebuild(runner, cache, np.array([1, 2]))  # the longest row leaves; its columns are trimmed
    assert cache.mask.shape == (2, 4)
    mask = np.concatenate([cache.mask, np.ones((2, 1), np.int64)], axis=1)
    logits, _ = runner.forward(np.array([[20], [20]], np.int64), mask, cache.positions(), cache.past)
    np.testing.assert_allclose(logits, np.stack(alone[1:]), atol=1e-4)

    # in place: row 1 leaves (its slot is free), prompt 0's prefill is written into it
    _, joining = prefill(runner, prompts[0])
    cache = rebuild(runner, empty_cache(runner), np.array([], np.int64), joining, np.array([0]))
    for ids in prompts[1:]:
        _, joining = prefill(runner, ids)
        cache = rebuild(runner, cache, np.arange(cache.rows), joining, np.array([0]))
    _, joining = prefill(runner, prompts[2])
    assert can_write_in_place(runner, cache, joining)
    write_in_place(runner, cache, [1], joining, [0])  # slot 1 (prompt 1) now holds prompt 2
    mask = np.concatenate([cache.mask, np.ones((3, 1), np.int64)], axis=1)
    logits, _ = runner.forward(np.full((3, 1), 20, np.int64), mask, cache.positions(), cache.past)
    np.testing.assert_allclose(logits, np.stack([alone[0], alone[2], alone[2]]), atol=1e-4)


@pytest.mark.parametrize("cache", ["fp32", "int8"])
def test_ragged_rows_decode_like_each_row_alone_and_cost_their_own_columns(
    cache: str, request: pytest.FixtureRequest
) -> None:
    """tests/ragged_rows.py on the tiny GPT-2, its cache in fp32 or in int8."""
    check_ragged_rows(request.getfixturevalue("runner" if cache == "fp32" else "int8_cache_runner"))


@pytest.mark.parametrize("cache", ["fp32", "int8"])
def test_a_mixed_step_decodes_the_rows_and_prefills_the_prompts_as_apart(
    cache: str, request: pytest.FixtureRequest
) -> None:
    """tests/ragged_rows.py's mixed step on the tiny GPT-2's mixed graph, its cache in fp32 or int8."""
    check_mixed_step(request.getfixturevalue("runner" if cache == "fp32" else "int8_cache_runner"))


# --- scheduler -----------------------------------------------------------------------


class Collector:
    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []

    def sink(self, request_id: str):  # noqa: ANN201
        return lambda event: self.events.append((request_id, event))

    def done(self, request_id: str) -> list[SampleDone]:
        samples = [e for rid, e in self.events if rid == request_id and isinstance(e, SampleDone)]
        return sorted(samples, key=lambda s: s.index)


def make_request(
    tokenizer: Tokenizer, runner: OnnxRunner, collector: Collector, request_id: str, **fields: object
) -> GenerationRequest:
    spec = runner.manifest.command
    ids = prompt_ids(tokenizer, spec, spec.tasks[0], 8, "high", str(fields.pop("intent", "holiday sale")))
    defaults = {"n": 1, "params": SamplingParams(temperature=1.0, top_p=1.0), "max_new_tokens": 20, "seed": 0}
    return GenerationRequest(request_id, ids, sink=collector.sink(request_id), **{**defaults, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize("mixed", [True, False])
def test_short_request_joins_at_the_next_step_and_finishes_first(
    mixed: bool, tiny_bundle: Path, tokenizer: Tokenizer
) -> None:
    """Mixed: the joiner's prompt is prefilled in the running row's decode step (its first token),
    and it decodes its second at the next; else its prefill and a decode step make one step."""
    runner = OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", intra_op_threads=1, mixed_prefill=mixed)
    assert runner.mixed_prefill == mixed
    metrics = Metrics("test")
    scheduler = Scheduler(runner, tokenizer, metrics, max_batch_size=8)
    collector = Collector()
    scheduler.add(
        make_request(tokenizer, runner, collector, "long", max_new_tokens=60, length_bounds=LengthBounds(32, 32))
    )
    for _ in range(3):
        scheduler.step()
    scheduler.add(make_request(tokenizer, runner, collector, "short", max_new_tokens=2))
    steps = 0
    while not collector.done("short"):
        scheduler.step()
        steps += 1
    assert steps == (2 if mixed else 1)
    count = metrics.registry.get_sample_value
    phases = {p: count("promptgen_batch_size_count", {"model": "test", "phase": p}) for p in ("prefill", "mixed")}
    assert phases == ({"prefill": 1, "mixed": 1} if mixed else {"prefill": 2, "mixed": 0})
    assert "long" in scheduler.active and not collector.done("long")
    while scheduler.has_work():
        scheduler.step()
    assert collector.done("long")[0].tokens > 3


def test_a_burst_joins_running_rows_in_bounded_prefills(runner: OnnxRunner, tokenizer: Tokenizer) -> None:
    """While a row decodes, each step prefills at most max_prefill_tokens padded prompt tokens;
    the running row gets a token at every step; every arrival of the burst still finishes."""
    metrics = Metrics("test")
    prompt = len(make_request(tokenizer, runner, Collector(), "probe").prompt_ids)
    scheduler = Scheduler(runner, tokenizer, metrics, max_batch_size=16, max_prefill_tokens=3 * prompt)
    collector = Collector()
    # (EOS banned below 32 words: the running row cannot end while the burst joins)
    bounds = LengthBounds(32, 32)
    scheduler.add(make_request(tokenizer, runner, collector, "running", max_new_tokens=60, length_bounds=bounds))
    scheduler.step()
    for i in range(8):
        scheduler.add(make_request(tokenizer, runner, collector, f"burst{i}", max_new_tokens=40))
    running = scheduler.active["running"].sequences[0]
    joined = []
    while scheduler.waiting:
        before = len(running.generated)
        scheduler.step()
        assert len(running.generated) == before + 1  # never stalled by a whole-burst prefill
        joined.append(8 - len(scheduler.waiting) - sum(joined))
    assert joined == [3, 3, 2]
    while scheduler.has_work():
        scheduler.step()
    assert all(collector.done(f"burst{i}") for i in range(8))

    def forwards(phase: str) -> float | None:
        return metrics.registry.get_sample_value("promptgen_batch_size_count", {"model": "test", "phase": phase})

    assert runner.mixed_prefill  # the first request alone, then the burst in three decode steps
    assert (forwards("prefill"), forwards("mixed")) == (1, 3)

    # with nothing decoding there is no one to stall: a burst fills the batch in one prefill
    idle = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=16, max_prefill_tokens=prompt)
    for i in range(8):
        idle.add(make_request(tokenizer, runner, Collector(), f"idle{i}"))
    idle.step()
    assert not idle.waiting and len(idle.active) == 8


def test_free_slots_wait_for_joiners_before_the_batch_shrinks(
    runner: OnnxRunner, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that finish leave free slots; a request arriving soon after is written into one in
    place (no rebuild of the batch). Slots left free for SHRINK_AFTER_STEPS are dropped where the
    steps run them; where free slots trail and the steps leave them out (kv_cache.trims_free_rows,
    this runner), they cost no compute, and the batch keeps them without a rebuild."""
    import server.engine.scheduler as scheduler_module

    def half_finished() -> Scheduler:
        scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=8)
        collector = Collector()
        bounds = LengthBounds(32, 32)  # EOS banned below 32 words: these two run on
        for i in range(2):
            long = make_request(tokenizer, runner, collector, f"long{i}", max_new_tokens=60, length_bounds=bounds)
            scheduler.add(long)
        for i in range(2):
            scheduler.add(make_request(tokenizer, runner, collector, f"short{i}", max_new_tokens=2))
        scheduler.step()  # one prefill, one decode step: the short ones are done
        scheduler.step()  # their slots are free, and kept
        assert len(scheduler.rows) == 4 and scheduler.rows.count(None) == 2
        return scheduler

    scheduler = half_finished()
    cache = scheduler.cache.past[0]
    scheduler.add(make_request(tokenizer, runner, Collector(), "late", max_new_tokens=30))
    scheduler.step()
    assert scheduler.cache.past[0] is cache and len(scheduler.rows) == 4  # written in place
    assert scheduler.rows.count(None) == 1

    scheduler = half_finished()
    cache = scheduler.cache.past[0]
    for _ in range(SHRINK_AFTER_STEPS + 4):
        scheduler.step()
    assert scheduler.rows.count(None) == 2 and scheduler.cache.past[0] is cache  # kept, no rebuild

    monkeypatch.setattr(scheduler_module, "trims_free_rows", lambda *args: False)
    scheduler = half_finished()
    for _ in range(SHRINK_AFTER_STEPS - 2):
        scheduler.step()
    assert len(scheduler.rows) == 4
    scheduler.step()
    assert len(scheduler.rows) == 2 and None not in scheduler.rows  # free for SHRINK_AFTER_STEPS: dropped


@pytest.mark.parametrize(("mixed", "room"), [(False, 64), (True, 64), (True, 2)])
def test_a_free_slot_before_live_rows_is_filled_by_the_last_one_and_steps_leave_free_slots_out(
    mixed: bool, room: int, tiny_bundle: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row that finishes before live ones: the last live row moves into its slot
    (kv_cache.move_row) and the decode steps run the live rows only (kv_cache.leading_rows),
    until a joiner takes the trailing slot in place. Every request generates, token for token,
    what it generates where free slots stay where they are and every step runs every row. With
    2 columns of room the buffers are regrown every other step, also while free slots trail:
    the step's rows are then the batch (scheduler._advance)."""
    import runtime.onnx_runner as runner_module
    import server.engine.scheduler as scheduler_module

    runner = OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", intra_op_threads=1, mixed_prefill=mixed)
    greedy = SamplingParams(temperature=0.0, top_p=1.0)
    bounds = LengthBounds(32, 32)  # EOS banned below 32 words: the long ones run through the test

    def run(trim: bool) -> tuple[dict[str, list[str]], list[int], list[str | None]]:
        monkeypatch.setattr(runner_module, "KV_ROOM", room)
        if not trim:
            monkeypatch.setattr(scheduler_module, "trims_free_rows", lambda *args: False)
        ran: list[int] = []
        forward = runner.forward
        monkeypatch.setattr(runner, "forward", lambda ids, *a, **k: ran.append(len(ids)) or forward(ids, *a, **k))
        scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=4)
        collector = Collector()
        for name, new_tokens in (("long0", 50), ("short", 2), ("long1", 50)):
            limits = {"length_bounds": bounds} if new_tokens > 2 else {}
            scheduler.add(
                make_request(
                    tokenizer, runner, collector, name, params=greedy, max_new_tokens=new_tokens, intent=name, **limits
                )
            )
        for _ in range(4):  # a prefill, the step that ends `short`, then two steps without it
            scheduler.step()
        rows = [s.request.request_id if s is not None else None for s in scheduler.rows]
        scheduler.add(make_request(tokenizer, runner, collector, "late", params=greedy, max_new_tokens=30))
        while scheduler.has_work():
            scheduler.step()
        monkeypatch.undo()
        return {n: [s.text for s in collector.done(n)] for n in ("long0", "short", "long1", "late")}, ran, rows

    trimmed, trimmed_ran, trimmed_rows = run(trim=True)
    kept, kept_ran, kept_rows = run(trim=False)
    regrown = room < 4  # the slot behind the live rows went with the old buffers
    assert trimmed_rows == ["long0", "long1"] + ([] if regrown else [None])
    assert kept_rows == ["long0", None, "long1"]
    assert trimmed_ran[2:4] == [2, 2] and kept_ran[2:4] == [3, 3]  # the two steps without `short`
    assert trimmed == kept and all(trimmed.values())


@pytest.mark.parametrize("mixed", [False, True])
def test_a_lone_joiner_waits_for_company_only_while_the_batch_is_nearly_full(
    mixed: bool, tiny_bundle: Path, tokenizer: Tokenizer
) -> None:
    """Over HOLD_ABOVE of the rows decoding, one arrival waits up to HOLD_STEPS steps for others
    to share its prefill, unless the waiting rows fill the free slots; below it, it joins at the
    next step (scheduler.py). A runner that prefills in the decode step never holds: the step's
    weight pass is shared with the rows anyway."""
    runner = OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", intra_op_threads=1, mixed_prefill=mixed)

    def busy(running: int) -> Scheduler:
        scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=16)
        bounds = LengthBounds(32, 32)  # EOS banned below 32 words: these run through the test
        for i in range(running):
            long = make_request(tokenizer, runner, Collector(), f"long{i}", max_new_tokens=60, length_bounds=bounds)
            scheduler.add(long)
        scheduler.step()
        return scheduler

    def steps_to_join(scheduler: Scheduler, names: list[str]) -> int:
        for name in names:
            scheduler.add(make_request(tokenizer, runner, Collector(), name, max_new_tokens=30))
        steps = 0
        while scheduler.waiting:
            scheduler.step()
            steps += 1
        return steps

    nearly_full = busy(13)  # 13 of 16 rows decoding: over 3/4
    assert steps_to_join(nearly_full, ["lone"]) == (1 if mixed else HOLD_STEPS + 1)
    assert steps_to_join(nearly_full, ["a", "b"]) == 1  # they fill the two free slots: no wait
    assert steps_to_join(busy(12), ["lone"]) == 1  # 12 of 16: not over 3/4


def test_the_batch_window_holds_only_an_idle_servers_first_arrivals(runner: OnnxRunner, tokenizer: Tokenizer) -> None:
    """With a window, arrivals at an idle server wait until the first has waited it out, then
    share one prefill; a full batch's worth goes at once, and rows decoding never wait. Without
    one (the default) the first arrival is prefilled at once."""
    metrics = Metrics("test")
    scheduler = Scheduler(runner, tokenizer, metrics, max_batch_size=4, batch_window_s=0.05)
    collector = Collector()
    first = make_request(tokenizer, runner, collector, "a", arrival=100.0)
    scheduler.add(first)
    assert scheduler.window_wait(100.01) == pytest.approx(0.04)
    assert scheduler.window_wait(100.06) == 0.0
    scheduler.add(make_request(tokenizer, runner, collector, "b", arrival=100.03))
    assert scheduler.window_wait(100.04) == pytest.approx(0.01)  # counted from the first arrival
    scheduler.step()
    count = metrics.registry.get_sample_value
    assert count("promptgen_batch_size_sum", {"model": "test", "phase": "prefill"}) == 2  # one prefill, both
    scheduler.add(make_request(tokenizer, runner, collector, "c", arrival=100.07))
    assert scheduler.window_wait(100.07) == 0.0  # rows are decoding: join at the next step

    full = Scheduler(runner, tokenizer, Metrics("full"), max_batch_size=4, batch_window_s=0.05)
    full.add(make_request(tokenizer, runner, collector, "d", arrival=100.0, n=4))
    assert full.window_wait(100.0) == 0.0  # a whole batch is waiting already
    default = Scheduler(runner, tokenizer, Metrics("default"), max_batch_size=4)
    default.add(make_request(tokenizer, runner, collector, "e", arrival=100.0))
    assert default.window_wait(100.0) == 0.0


def staggered_greedy_run(runner: OnnxRunner, tokenizer: Tokenizer, bounds: LengthBounds | None) -> dict[str, list[str]]:
    """Ten greedy requests of different lengths arriving one per step into 4 slots."""
    scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=4)
    collector = Collector()
    greedy = SamplingParams(temperature=0.0, top_p=1.0)
    for i in range(10):
        scheduler.add(
            make_request(
                tokenizer,
                runner,
                collector,
                f"r{i}",
                params=greedy,
                max_new_tokens=3 + 5 * (i % 4),
                intent="ab " * i,
                length_bounds=bounds,
            )
        )
        scheduler.step()
    while scheduler.has_work():
        scheduler.step()
    return {f"r{i}": [s.text for s in collector.done(f"r{i}")] for i in range(10)}


def test_in_place_joins_rebuilds_and_device_sampling_generate_the_same(
    tiny_bundle: Path, tokenizer: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same staggered greedy workload through every path: slots reused in place
    (CPU), rebuild-only (forced by hiding host views), sampling in the ONNX sampler
    graph, and both graphs with no host views (what CUDA does). Token for token the same."""
    import server.engine.scheduler as scheduler_module

    calls: list[str] = []
    real_write = scheduler_module.write_in_place
    monkeypatch.setattr(scheduler_module, "write_in_place", lambda *a: calls.append("in_place") or real_write(*a))
    results = []
    configurations = ((True, "off", False), (False, "off", False), (True, "on", False), (False, "on", True))
    for host_views, device_sampling, device_cache in configurations:
        runner = OnnxRunner(
            tiny_bundle, variant="fp32", provider="cpu", device_sampling=device_sampling, device_cache=device_cache
        )
        if not host_views:
            runner.host_view = lambda value: None  # type: ignore[method-assign]
        real_step = runner.step_and_sample
        runner.step_and_sample = lambda *a, step=real_step: calls.append("device") or step(*a)  # type: ignore[method-assign]
        for bounds in (None, LengthBounds(3, 4)):  # with bounds: EOS is banned on the device too
            results.append(staggered_greedy_run(runner, tokenizer, bounds))
        assert ("in_place" in calls) == host_views and ("device" in calls) == (device_sampling == "on")
        calls.clear()
    assert results[0] == results[2] == results[4] == results[6] and results[1] == results[3] == results[5] == results[7]
    assert results[0] != results[1]


def test_stored_graphs_are_what_the_builders_make() -> None:
    pytest.importorskip("onnx")
    assert sampler_graph() == build_sampler_graph()
    for kv_dtype in ("float32", "float16"):
        assert cache_graph(kv_dtype) == build_cache_graph(kv_dtype)


@pytest.mark.parametrize("variant", ["fp32", "fp16"])  # float32 and float16 KV
def test_cache_rebuild_on_the_device_matches_numpy(tiny_bundle: Path, variant: str) -> None:
    host = OnnxRunner(tiny_bundle, variant=variant, provider="cpu")
    device = OnnxRunner(tiny_bundle, variant=variant, provider="cpu", device_cache=True)
    rng = np.random.default_rng(5)

    def random_cache(rows: int, lengths: list[int], columns: int) -> BatchCache:
        mask = np.zeros((rows, columns), np.int64)
        for i, length in enumerate(lengths):
            mask[i, columns - length :] = 1
        shape = (rows, host.n_kv_head, columns, host.head_dim)
        return BatchCache([host.to_device(rng.normal(size=shape)) for _ in host.past_names], mask)

    running = random_cache(4, [9, 3, 5, 2], 12)  # column 0..2 are padding everywhere
    joining = random_cache(2, [4, 6], 6)
    cases = [
        (np.array([0, 1, 2, 3]), None, None),  # trim only
        (np.array([1, 3]), joining, np.array([1, 1, 0])),  # the longest row leaves, three join
        (np.array([], np.int64), joining, np.array([0])),  # everyone leaves, one joins
        (np.array([2]), None, None),
    ]
    for keep, join, rows in cases:
        expected = rebuild(host, running, keep, join, rows)
        actual = rebuild(device, running, keep, join, rows)
        np.testing.assert_array_equal(actual.mask, expected.mask)
        for a, e in zip(actual.past, expected.past, strict=True):
            np.testing.assert_array_equal(live(device, a, actual.columns), live(host, e, expected.columns))


def test_sampler_graph_top_p_and_seeding(tiny_bundle: Path) -> None:
    """The device sampler, run on CPU: draws inside the nucleus, reads the rows it is
    told to, and a row's token depends only on its own logits and draw."""
    runner = OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", device_sampling="on")
    assert runner.sampler is not None
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.full(300, 0.1), size=6)
    logits = np.log(probs).astype(np.float32)
    rows = np.array([5, 0, 0, 3], np.int64)

    def run(uniform: np.ndarray, top_p: float) -> np.ndarray:
        inputs = {
            "all_logits": logits,
            "rows": rows,
            "temperature": np.ones(4, np.float32),
            "top_p": np.full(4, top_p, np.float32),
            "uniform": uniform.astype(np.float32),
            "banned_ids": banned_ids,
            "vocab_bias": vocab_bias,
        }
        return runner.sampler.run(None, inputs)[0]  # type: ignore[union-attr]

    vocab_bias = np.zeros(300, np.float32)
    banned_ids = np.full((4, 2), -1, np.int64)
    for _ in range(30):
        uniform = rng.random(4)
        uniform[2] = uniform[1]  # rows 1 and 2 read the same logits row with the same draw
        tokens = run(uniform, 0.7)
        for row, token in zip(rows, tokens, strict=True):
            assert nucleus_mask(probs[row], 0.7)[token]
        assert tokens[1] == tokens[2]
        assert (run(np.concatenate([uniform[:1], rng.random(3)]), 0.7)[0]) == tokens[0]  # batch mates don't matter
    assert run(np.full(4, 0.5), 1e-6).tolist() == logits[rows].argmax(axis=1).tolist()
    favourites = logits[rows].argmax(axis=1)
    banned_ids[:, 0] = favourites  # each row's favourite is banned for that row (EOS, a copy token...)
    banned_ids[0, 1] = favourites[0]  # twice: still one ban
    greedy = run(np.full(4, 0.5), 1e-6)
    assert (greedy != favourites).all()
    second = np.argsort(-logits[rows], axis=1, kind="stable")[:, 1]
    assert greedy.tolist() == second.tolist()  # the next best, nothing else disturbed
    banned_ids[:] = -1
    vocab_bias[favourites] = -1e9  # the favourites are banned for everyone (command tokens, say)
    assert not set(run(np.full(4, 0.5), 1e-6).tolist()) & set(favourites.tolist())


def test_the_sampler_graph_answers_no_token_for_rows_that_are_not_finite(tiny_bundle: Path) -> None:
    """As the host sampler does: NaN, +inf, or nothing finite in a row gives NO_TOKEN, greedy or
    sampled, and the other rows' tokens are what they are without those rows."""
    runner = OnnxRunner(tiny_bundle, variant="fp32", provider="cpu", device_sampling="on")
    assert runner.sampler is not None
    logits = np.random.default_rng(9).normal(size=(4, 300)).astype(np.float32)
    logits[0, 17], logits[1, 3], logits[2] = np.nan, np.inf, -np.inf

    def run(rows: list[int], temperature: float) -> list[int]:
        inputs = {
            "all_logits": logits,
            "rows": np.array(rows, np.int64),
            "temperature": np.full(len(rows), temperature, np.float32),
            "top_p": np.full(len(rows), 0.9, np.float32),
            "uniform": np.full(len(rows), 0.4, np.float32),
            "banned_ids": np.full((len(rows), 1), -1, np.int64),
            "vocab_bias": np.zeros(300, np.float32),
        }
        return runner.sampler.run(None, inputs)[0].tolist()  # type: ignore[union-attr]

    for temperature in (1.0, 0.0):
        tokens = run([0, 1, 2, 3], temperature)
        assert tokens[:3] == [NO_TOKEN] * 3
        assert tokens[3] == run([3], temperature)[0] >= 0


def test_a_request_whose_logits_turn_non_finite_fails_alone_with_a_model_error(
    tiny_bundle: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """A request whose own output makes the model's logits NaN mid-decode (a token whose embedding
    is NaN, tests/poisoned_bundle.py) fails with `model_error` at the next token; the request
    decoding beside it gets every token it gets without the fault, and the slot serves again."""
    pytest.importorskip("onnx")
    greedy = SamplingParams(temperature=0.0, top_p=1.0)
    intents = {"a": "holiday sale", "b": "summer hiking boots", "c": "summer hiking boots"}

    def run(bundle: Path) -> tuple[Collector, dict[str, list[int]], dict[str, list[int]]]:
        """Requests a and b decode side by side, then c (b again) runs alone in a freed slot.
        The events, and a's and b's prompt and output token ids."""
        runner = OnnxRunner(bundle, variant="fp32", provider="cpu")
        scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=4)
        collector = Collector()
        prompts: dict[str, list[int]] = {}
        for rid in ("a", "b"):
            request = make_request(tokenizer, runner, collector, rid, params=greedy, intent=intents[rid])
            prompts[rid] = request.prompt_ids
            scheduler.add(request)
        outputs: dict[str, Sequence] = {}  # the samples, as they are admitted
        scheduler.before_forward = lambda: outputs.update(
            {rid: admitted.sequences[0] for rid, admitted in scheduler.active.items() if rid in prompts}
        )
        while scheduler.has_work():
            scheduler.step()
        scheduler.add(make_request(tokenizer, runner, collector, "c", params=greedy, intent=intents["c"]))
        while scheduler.has_work():
            scheduler.step()
        return collector, prompts, {rid: sample.generated for rid, sample in outputs.items()}

    clean, prompts, outputs = run(tiny_bundle)
    # The first of a's output tokens (not its last: it must be read back) that b never reads and
    # a's prompt lacks: with its embedding NaN, a's logits turn NaN at the step that reads it.
    spared = {*prompts["a"], *prompts["b"], *outputs["b"], tokenizer.token_to_id(EOS_TOKEN)}
    poison = next(token for token in outputs["a"][:-1] if token not in spared)
    at = outputs["a"].index(poison)
    faulty, _, _ = run(poisoned_bundle(tiny_bundle, tmp_path / "poisoned", "fp32", poison))

    failures = [e for rid, e in faulty.events if rid == "a" and isinstance(e, RequestFailed)]
    assert len(failures) == 1 and failures[0].reason == "model_error", faulty.events
    assert f"at output token {at + 2}" in failures[0].message and failures[0].error_id in failures[0].message
    assert not faulty.done("a")
    assert [s.text for s in faulty.done("b")] == [s.text for s in clean.done("b")]
    assert [s.text for s in faulty.done("c")] == [s.text for s in clean.done("c")] == [s.text for s in clean.done("b")]


def test_n_samples_share_one_prefill_row(runner: OnnxRunner, tokenizer: Tokenizer) -> None:
    metrics = Metrics("test")
    scheduler = Scheduler(runner, tokenizer, metrics, max_batch_size=8)
    collector = Collector()
    scheduler.add(make_request(tokenizer, runner, collector, "r", n=4, max_new_tokens=5))
    while scheduler.has_work():
        scheduler.step()
    prefill_rows = metrics.registry.get_sample_value("promptgen_batch_size_sum", {"model": "test", "phase": "prefill"})
    assert prefill_rows == 1
    samples = collector.done("r")
    assert sorted(s.index for s in samples) == [0, 1, 2, 3]
    assert len({s.text for s in samples}) > 1  # four streams, not four copies
    done = [e for _, e in collector.events if isinstance(e, RequestDone)]
    assert done[0].completion_tokens == sum(s.tokens for s in samples)


def test_length_bounds_hold(runner: OnnxRunner, tokenizer: Tokenizer) -> None:
    scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=16)
    collector = Collector()
    scheduler.add(
        make_request(tokenizer, runner, collector, "r", n=12, max_new_tokens=100, length_bounds=LengthBounds(3, 4))
    )
    while scheduler.has_work():
        scheduler.step()
    samples = collector.done("r")
    assert len(samples) == 12
    for s in samples:
        assert s.words <= 4, s
        assert s.words >= 3 or s.finish_reason == "length", s
        assert count_words(s.text) == s.words
    assert any(s.finish_reason == "stop" for s in samples)


def test_stop_string_ends_the_sample_and_is_cut(runner: OnnxRunner, tokenizer: Tokenizer) -> None:
    scheduler = Scheduler(runner, tokenizer, Metrics("test"), max_batch_size=16)
    collector = Collector()
    free = make_request(tokenizer, runner, collector, "free", n=8, max_new_tokens=30, seed=5)
    scheduler.add(free)
    while scheduler.has_work():
        scheduler.step()
    text = collector.done("free")[0].text
    # a string sample 0 is known to produce (random weights emit stray bytes: avoid those)
    middle = [i for i in range(len(text) // 2, len(text) - 1) if "\ufffd" not in text[i : i + 2]]
    stop = text[middle[0] : middle[0] + 2]
    scheduler.add(make_request(tokenizer, runner, collector, "stopped", n=8, max_new_tokens=30, seed=5, stop=(stop,)))
    while scheduler.has_work():
        scheduler.step()
    first = collector.done("stopped")[0]
    assert first.finish_reason == "stop"
    assert stop not in first.text and text.startswith(first.text)


# --- the server never imports torch -----------------------------------------------------


def test_server_app_does_not_import_torch(tiny_bundle: Path) -> None:
    code = (
        "import sys\n"
        "from server.config import Settings\n"
        "from server.api.app import create_app\n"
        "import server.__main__\n"
        f"create_app(Settings(bundle={str(tiny_bundle)!r}, variant='int8'))\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_bundle_is_loaded_through_the_checked_manifest(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    runner = OnnxRunner(tiny_bundle, manifest=manifest, provider="cpu")
    assert runner.variant.name == "int8"  # auto on CPU
    assert runner.kv_dtype == np.int8 and runner.provider == "CPUExecutionProvider"  # export/kv_int8.py


def test_readyz_follows_the_engine_heartbeat(tiny_bundle: Path) -> None:
    """Ready after warm-up; not ready once the engine loop stops beating, while /healthz
    (the process) stays up: a hung engine must not pass the readiness check."""
    import time

    from fastapi.testclient import TestClient

    from server.api.app import create_app
    from server.config import Settings

    app = create_app(Settings(bundle=tiny_bundle, variant="fp32", heartbeat_timeout_s=0.5))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.05)
        app.state.server.engine.stop()  # the loop ends: no more heartbeats
        time.sleep(0.6)
        response = client.get("/readyz")
        assert response.status_code == 503 and response.json()["status"] == "engine_stalled"
        assert client.get("/healthz").status_code == 200


def test_a_prompt_longer_than_the_cache_room_prefills_and_decodes(runner: OnnxRunner) -> None:
    """In place (bundle format 3), a fresh cache has KV_ROOM spare columns; a longer prompt gets
    a buffer that holds it, and decoding goes on past it."""
    from runtime.decode import generate
    from runtime.onnx_runner import KV_ROOM

    prompt = [int(i) for i in np.random.default_rng(3).integers(10, 200, KV_ROOM + 11)]
    decoded = generate(runner, [prompt, prompt[:5]], 3, None, keep_logits=True)
    assert [len(g.ids) for g in decoded.generations] == [3, 3]
    assert decoded.logits is not None and np.isfinite(decoded.logits).all()
