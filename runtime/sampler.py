"""Sampling: one token per row after each forward, with each row's own parameters and generator.

`Sampler` is the one interface everyone calls (the scheduler, and the decode loop behind
evaluation, export checks and warm-up): it runs the host sampler below (numpy, every
parameter), or, where the runner has one and every row's parameters allow it, the device
sampler (sampler_graph.py: the same temperature / EOS ban / top-p / one-uniform-per-row draw,
inside an ONNX graph next to the model, so only token ids leave the device).

Every row (one sample of one request) carries its own temperature, top_k, top_p,
repetition penalty and numpy Generator. A sampled row draws exactly one uniform number
per token from its own generator, whatever else is in the batch, so a seeded request
gives the same text alone or inside a busy batch (as long as its logits are the same:
true for FP32/FP16; ORT's dynamic INT8 quantises activations per tensor, i.e. across
the whole batch, so INT8 logits depend slightly on the batch mates).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from contract.command import CommandSpec, TokenizerLike
from runtime import top_p_kernel
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.runner import Runner

# Top-p: in C where our library is built (runtime/top_p.c: one pass per row fills buckets of
# probability, only two buckets are sorted; 4x quicker than the numpy below on flat rows), else the
# numpy draw below. Both give a row the same token to float64 rounding.
#
# top_p is exact but sorting the vocabulary per row per step is slow (numpy sorts 32 rows of
# 7,106 float32 in ~3 ms here; one flat sort of them with their ids took ~40 ms). Every token
# of the nucleus is at least as likely as every token outside it, so it is found without a
# full sort (bench/engine.md):
# - the tokens above a probability cut whose mass reaches top_p contain the nucleus: each row
#   takes the highest of these cuts (fractions of its top probability) that does, and when
#   they are few (a peaked row) only those candidates are sorted, all rows' together;
# - else (a flat row, or a high temperature) a histogram of each row's probabilities by value
#   (Buckets) says in which bucket the nucleus ends and in which the draw falls, and only those
#   two buckets' tokens are sorted.
# The cuts step by 2-5x, not 10x: a row sorts every token above its cut, so a coarse ladder made a
# row whose nucleus ends just under 1e-3 sort the ~1,000 tokens above 1e-4.
NUCLEUS_CUTS = (1e-2, 2e-3, 5e-4, 1e-4, 1e-6)
DENSE_FRACTION = 1 / 8  # past this share of the batch's tokens as candidates, draw by buckets
MAX_BUCKETS = 2048  # per row: ~30 tokens per bucket at most on 32 flat rows of 7,106
# Sorting tokens by row, then most likely first: np.lexsort on (-p, row) is quickest for a few
# tokens, one stable argsort of an int64 key 3-4x quicker from a few hundred (1,000 tokens: 35
# against 11 us), which a batch's candidates often are (`python bench/scheduler.py topp`).
KEY_SORT_FROM = 256
# A row whose logits hold a NaN or +inf, or no finite value at all (an fp16 overflow, a broken
# kernel), has no distribution to sample: it gets NO_TOKEN, and the scheduler fails its request
# with a clear error (server/engine/scheduler.py). Told apart for free: such a row's largest
# logit is not finite (NaN propagates through max; argmax finds a NaN first).
NO_TOKEN = -1


@dataclass(frozen=True)
class SamplingParams:
    """Per-row sampling parameters. No defaults here: they come from the bundle
    (contract.manifest.GenerationDefaults), the one place they are set."""

    temperature: float  # 0: greedy
    top_p: float  # 1: off
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1: off; >1 discourages repeating generated tokens


GREEDY = SamplingParams(temperature=0.0, top_p=1.0)


@dataclass
class Row:
    """What the sampler needs to know about one row of the batch."""

    params: SamplingParams
    generator: np.random.Generator
    generated: list[int]
    banned: list[int]  # token ids this row may not produce now (e.g. EOS below the minimum length)
    never: list[int] = field(default_factory=list)  # ids this row may never produce (copy tokens with no word)


def apply_repetition_penalty(logits: np.ndarray, generated: list[int], penalty: float) -> None:
    """CTRL-style: shrink the logits of tokens already generated. In place.

    Only generated tokens count, not the prompt: copying the user's intent into the
    output is what relevance asks for, and must not be penalised.
    """
    if penalty == 1.0 or not generated:
        return
    ids = np.unique(np.asarray(generated, dtype=np.int64))
    values = logits[ids]
    logits[ids] = np.where(values > 0, values / penalty, values * penalty)


def _draw(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, the index where u (in [0, 1)) falls in the row's cumulative weights."""
    cumulative = np.cumsum(weights, axis=1, dtype=np.float64)
    target = u * cumulative[:, -1]
    index: np.ndarray = np.minimum((cumulative <= target[:, None]).sum(axis=1), weights.shape[1] - 1)
    return index


def row_mass(probs: np.ndarray) -> np.ndarray:
    """Each row's total probability, float64. Summed in float32: numpy's pairwise sum is within
    ~1e-6 of the exact total, gives a row the same sum wherever it sits in memory (so a row
    draws the same alone or in a batch; np.einsum's does not), and takes half the time of a
    float64 sum (40 against 95 us on 32 rows of 7,106; `python bench/scheduler.py topp`)."""
    mass: np.ndarray = probs.sum(axis=-1).astype(np.float64)
    return mass


def _top_p(probs: np.ndarray, top_p: np.ndarray, u: np.ndarray, peak: np.ndarray | None = None) -> np.ndarray:
    """Top-p sampling for rows [R, V] of exp(z - max z): in C where it is built, else numpy."""
    if top_p_kernel.function() is None:
        return _sample_nucleus(probs, top_p, u, peak)
    return top_p_kernel.draw(probs, top_p, row_mass(probs), u)


def _sample_nucleus(probs: np.ndarray, top_p: np.ndarray, u: np.ndarray, peak: np.ndarray | None = None) -> np.ndarray:
    """Top-p sampling for rows [R, V] of unnormalised probabilities: each row's tokens sorted
    by probability, most likely first (ties: lower id first), the nucleus kept (the tokens
    whose more likely predecessors hold less than top_p of the mass), one draw per row with `u`.
    `peak`: each row's largest probability, where the caller knows it (1 for exp(z - max z))."""
    rows, vocab = probs.shape
    mass = top_p * row_mass(probs)
    if peak is None:
        peak = probs.max(axis=1)
    pending = np.arange(rows)  # rows whose cut is not settled yet
    settled: list[np.ndarray] = []  # the candidates (flat indices into probs) of the settled rows
    count = 0  # how many those are
    for level in NUCLEUS_CUTS:
        # Only the rows still pending are scanned again: on a trained model most rows settle at
        # the first cut, and the few that do not used to cost a pass over the whole batch each.
        part = probs if pending.size == rows else probs[pending]
        above = part >= (level * peak[pending])[:, None]
        if count + np.count_nonzero(above) > DENSE_FRACTION * probs.size:
            break  # too many to sort: a flat row
        # Flat indices (2-D np.nonzero took ~10x as long): their rows' masses are one bincount,
        # and the draw takes them as they are, without another pass over the batch.
        found = np.flatnonzero(above)
        part_row, token = np.divmod(found, vocab)
        covered = np.bincount(part_row, weights=part.reshape(-1)[found], minlength=pending.size)
        covers = covered >= mass[pending]
        keep = covers[part_row]
        settled.append(pending[part_row[keep]] * vocab + token[keep])
        count += settled[-1].size
        pending = pending[~covers]
        if pending.size == 0:
            return _draw_from_sorted_candidates(probs, np.concatenate(settled), mass, u)
    return _draw_by_buckets(probs, mass, u)


def _draw_from_sorted_candidates(
    probs: np.ndarray, candidates: np.ndarray, mass: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """All rows' candidates (flat indices into `probs`, each row's in ascending order, the rows in
    any order) sorted together in one flat array (grouped by row), so a row with many candidates
    costs its own sort only, not a padded one for every row."""
    rows, vocab = probs.shape
    row_of, token = np.divmod(candidates, vocab)
    p = probs.reshape(-1)[candidates]
    order = _by_row_most_likely_first(row_of, p)
    row_of, token, p = row_of[order], token[order], p[order].astype(np.float64)
    starts = np.searchsorted(row_of, np.arange(rows))  # each row's first candidate
    kept, kept_sum = _kept_running_mass(row_of, p, starts, np.zeros(rows), mass)
    target = u * np.bincount(row_of, weights=kept, minlength=rows)
    index = np.bincount(row_of, weights=kept_sum <= target[row_of], minlength=rows).astype(np.int64)
    last = np.bincount(row_of, minlength=rows) - 1
    tokens: np.ndarray = token[starts + np.minimum(index, last)]
    return tokens


def _by_row_most_likely_first(row_of: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The order that sorts tokens by row, then by probability `p` (>= 0), most likely first;
    stable, so ties keep their given order (each row's ascending ids: lower id first).
    A non-negative float32's bits, as an integer, keep its order (as in Buckets), so many
    tokens sort as one int64 key: the row above the complement of the bits."""
    if p.size < KEY_SORT_FROM or p.dtype != np.float32:
        order: np.ndarray = np.lexsort((-p, row_of))
        return order
    key = row_of.astype(np.int64) << 31
    key |= np.int32(np.iinfo(np.int32).max) - p.view(np.int32)
    return np.argsort(key, kind="stable")


def _kept_running_mass(
    row_of: np.ndarray, p: np.ndarray, starts: np.ndarray, above: np.ndarray, mass: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For tokens in sampling order, grouped by row, each group following `above[row]` of more
    likely mass: each token's kept probability (0 past the nucleus: its predecessors already
    hold `mass`) and the kept mass up to and including it. Per-row running sums come from one
    flat cumsum, less what the rows before contributed."""
    before = np.cumsum(p) - p
    kept = np.where(above[row_of] + before - before[starts][row_of] < mass[row_of], p, 0.0)
    kept_before = np.cumsum(kept) - kept
    return kept, above[row_of] + kept_before - kept_before[starts][row_of] + kept


class Buckets:
    """Rows of probabilities (>= 0) bucketed by value: a non-negative float32's bits, as an
    integer, keep its order, so equal-width ranges of them are buckets in order of value
    (each a fixed ratio of probabilities wide). `key` [R, V]: each token's bucket, 0 the
    least likely; `upto` [R, buckets]: the mass of each bucket and all above it; `above`:
    the mass above it."""

    def __init__(self, probs: np.ndarray) -> None:
        bits = probs.view(np.int32)
        high = int(bits.max())
        # The least positive: minus one, a zero wraps to the largest uint32 and never wins (half
        # the time of a masked min). Every row all zero: one bucket.
        low = min(int((bits.view(np.uint32) - np.uint32(1)).min()) + 1, high)
        shift = max(0, (high - low).bit_length() - (MAX_BUCKETS - 1).bit_length())
        key = np.subtract(bits, low)  # in place from here: [R, V] temporaries cost more than the arithmetic
        np.maximum(key, 0, out=key)  # zeros share the least likely bucket
        self.key = np.right_shift(key, shift, out=key)
        buckets = int(self.key.max()) + 1
        # Row by row: one bincount over the whole batch (offset keys) measured slower.
        mass = np.stack([np.bincount(k, weights=p, minlength=buckets) for k, p in zip(self.key, probs, strict=True)])
        self.upto = np.cumsum(mass[:, ::-1], axis=1)[:, ::-1]
        self.above = self.upto - mass


def _draw_by_buckets(probs: np.ndarray, mass: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Top-p without sorting whole rows. The nucleus ends in `last_bucket`: its tokens, sorted,
    say which of them are in it, so the kept mass and the draw's target. The draw falls in
    the lowest bucket whose mass and the mass above it exceed the target: its tokens, sorted,
    say which one. Buckets hold disjoint ranges of values, so sorting within one is sorting
    the row there."""
    rows = probs.shape[0]
    r = np.arange(rows)
    buckets = Buckets(probs)
    reaching = (buckets.upto >= mass[:, None]).sum(axis=1)
    # No bucket reaches a mass within float32 rounding of the row's total (top_p within ~1e-6 of
    # 1: row_mass sums in float32): the nucleus is the whole row, so it ends in the row's least
    # likely bucket that holds any mass (bucket 0 may hold none of this row's tokens).
    lowest = np.argmax(buckets.upto > buckets.above, axis=1)
    last_bucket = np.where(reaching > 0, reaching - 1, lowest)
    row_of, _, kept, _ = _bucket_in_order(probs, buckets.key, last_bucket, buckets.above[r, last_bucket], mass)
    target = u * (buckets.above[r, last_bucket] + np.bincount(row_of, weights=kept, minlength=rows))
    drawn = np.maximum((buckets.upto > target[:, None]).sum(axis=1) - 1, last_bucket)
    row_of, token, kept, kept_sum = _bucket_in_order(probs, buckets.key, drawn, buckets.above[r, drawn], mass)
    index = np.bincount(row_of, weights=kept_sum <= target[row_of], minlength=rows).astype(np.int64)
    last = np.bincount(row_of, weights=kept > 0, minlength=rows).astype(np.int64) - 1
    tokens: np.ndarray = token[np.searchsorted(row_of, r) + np.minimum(index, last)]
    return tokens


def _bucket_in_order(
    probs: np.ndarray, key: np.ndarray, bucket: np.ndarray, above: np.ndarray, mass: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's tokens in its bucket `bucket[row]`, in sampling order: rows, token ids, kept
    probabilities and kept mass so far (_kept_running_mass, from `above[row]`)."""
    row_of, token = np.divmod(np.flatnonzero(key == bucket[:, None]), key.shape[1])  # grouped by row, ascending ids
    p = probs[row_of, token]
    order = _by_row_most_likely_first(row_of, p)
    row_of, token, p = row_of[order], token[order], p[order].astype(np.float64)
    starts = np.searchsorted(row_of, np.arange(probs.shape[0]))
    kept, kept_sum = _kept_running_mass(row_of, p, starts, above, mass)
    return row_of, token, kept, kept_sum


def sample(
    logits: np.ndarray,
    rows: list[Row],
    never: np.ndarray | None = None,
    logits_rows: np.ndarray | None = None,
    scratch: bool = False,
) -> np.ndarray:
    """One token id per row from logits [rows, vocab] (float32), row i from logits row
    `logits_rows[i]` (default i: the n samples of a request read their one prefill row). Does
    not modify `logits`: it works on its own copy, gathered and copied in one go; unless
    `scratch` (the logits are the caller's to discard: a forward's fresh array) and the rows read
    every logits row in order, where it works in them (a 32-row step's 0.9 MB copy saved).

    Batched where it can be (softmax, top-p, the draw), per row where parameters differ
    (penalty, banned tokens, top-k). `never`: token ids no row may produce. Each row's
    result depends only on its own logits, parameters and generator; a row whose logits are
    not finite gets NO_TOKEN.
    """
    if len(rows) == 1:
        return np.array([_sample_row(logits[0 if logits_rows is None else logits_rows[0]], rows[0], never)], np.int64)
    every_row = logits_rows is None or (
        len(logits_rows) == logits.shape[0] and bool((logits_rows == np.arange(len(logits_rows))).all())
    )
    if scratch and every_row and logits.dtype == np.float32:
        x = logits
    else:
        x = np.asarray(logits.copy() if logits_rows is None else logits[logits_rows], dtype=np.float32)
    if never is not None and never.size:
        x[:, never] = -np.inf  # tokens no output may contain (the command tokens)
    banned_rows: list[int] = []
    banned_ids: list[int] = []
    for i, row in enumerate(rows):
        apply_repetition_penalty(x[i], row.generated, row.params.repetition_penalty)
        if ids := row.banned + row.never:
            banned_rows += [i] * len(ids)
            banned_ids += ids
    if banned_ids:
        x[banned_rows, banned_ids] = -np.inf
    temperature = np.array([row.params.temperature for row in rows], np.float32)
    greedy = temperature <= 0.0
    tokens = np.zeros(len(rows), np.int64)
    if greedy.any():
        greedy_x = x[greedy]
        best = greedy_x.argmax(axis=1)
        tokens[greedy] = np.where(np.isfinite(greedy_x[np.arange(best.size), best]), best, NO_TOKEN)
    sampled = np.flatnonzero(~greedy)
    if sampled.size == 0:
        return tokens
    z = x if sampled.size == len(rows) else x[sampled]  # x is this call's own copy: scaled in place
    z *= (np.float32(1.0) / temperature[sampled])[:, None]  # a product is quicker than a quotient
    for j, i in enumerate(sampled.tolist()):
        top_k = rows[i].params.top_k
        if 0 < top_k < z.shape[1]:
            kth = np.partition(z[j], z.shape[1] - top_k)[z.shape[1] - top_k]
            z[j, z[j] < kth] = -np.inf
    peak_logit = z.max(axis=1, keepdims=True)
    broken = ~np.isfinite(peak_logit[:, 0])
    if broken.any():  # drawn from as flat rows, their tokens then dropped: the others are untouched
        z[broken] = peak_logit[broken] = 0.0
    z -= peak_logit
    probs = np.exp(z, out=z)
    u = np.array([rows[i].generator.random() for i in sampled])  # exactly one draw per sampled row
    top_p = np.array([rows[i].params.top_p for i in sampled])
    nucleus = top_p < 1.0
    peak = np.ones(len(sampled), np.float32)  # exp(0): each row's most likely token
    if nucleus.all():
        tokens[sampled] = _top_p(probs, top_p, u, peak)
    elif nucleus.any():
        tokens[sampled[nucleus]] = _top_p(probs[nucleus], top_p[nucleus], u[nucleus], peak[nucleus])
    if not nucleus.all():
        tokens[sampled[~nucleus]] = _draw(probs[~nucleus], u[~nucleus])
    tokens[sampled[broken]] = NO_TOKEN
    return tokens


def _sample_row(logits: np.ndarray, row: Row, never: np.ndarray | None) -> int:
    """`sample` for a batch of one (a lone request: every step of an unloaded server): the same
    steps on one row without the batch's bookkeeping, and the same draw (its candidates go to
    `_draw_from_sorted_candidates` as a batch of one), so the same token for the same uniform.
    `python bench/scheduler.py sampling BUNDLE`, one row of the tiny default: 0.12-0.13 -> 0.09-0.10
    ms (bench/engine.md, step 19)."""
    x = np.array(logits, dtype=np.float32, copy=True)
    if never is not None and never.size:
        x[never] = -np.inf
    params = row.params
    apply_repetition_penalty(x, row.generated, params.repetition_penalty)
    if ids := row.banned + row.never:
        x[ids] = -np.inf
    if params.temperature <= 0.0:
        best = int(x.argmax())
        return best if np.isfinite(x[best]) else NO_TOKEN
    x *= np.float32(1.0) / np.float32(params.temperature)  # as `sample` scales a row
    if 0 < params.top_k < x.size:
        kth = np.partition(x, x.size - params.top_k)[x.size - params.top_k]
        x[x < kth] = -np.inf
    peak_logit = x.max()
    if not np.isfinite(peak_logit):
        return NO_TOKEN
    x -= peak_logit
    probs = np.exp(x, out=x)[None]
    u = np.array([row.generator.random()])
    if params.top_p >= 1.0:
        return int(_draw(probs, u)[0])
    if top_p_kernel.function() is not None:
        return int(top_p_kernel.draw(probs, np.array([params.top_p]), row_mass(probs), u)[0])
    mass = params.top_p * row_mass(probs)
    for level in NUCLEUS_CUTS:  # _sample_nucleus's cuts, for one row (its top probability is 1)
        found = np.flatnonzero(probs >= level)
        if found.size > DENSE_FRACTION * probs.size:
            break  # a flat row: the buckets draw it
        if np.cumsum(probs[0, found], dtype=np.float64)[-1] >= mass[0]:  # in order, as its bincount adds
            return int(_draw_from_sorted_candidates(probs, found, mass, u)[0])
    return int(_draw_by_buckets(probs, mass, u)[0])


def make_generator(seed: int | None, sample_index: int) -> np.random.Generator:
    """Sample i of a seeded request gets its own stream, a pure function of (seed, i)."""
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed, sample_index])


BANNED_LOGIT = -1e9  # added to a banned token's logit on the device (finite: -inf * 0 would be NaN)


def device_inputs(rows: list[Row]) -> dict[str, np.ndarray] | None:
    """The sampler graph's per-row inputs (runtime/sampler_graph.py), or None when a row
    needs what only the host sampler does (top-k, repetition penalty).
    Draws one uniform per sampled row from its own generator, exactly like `sample`."""
    for row in rows:
        if row.params.top_k > 0 or row.params.repetition_penalty != 1.0:
            return None
    sampled = [row.params.temperature > 0.0 for row in rows]
    bans = [row.banned + row.never for row in rows]
    banned_ids = np.full((len(rows), max([1, *map(len, bans)])), -1, np.int64)  # -1: no ban
    for i, ids in enumerate(bans):
        banned_ids[i, : len(ids)] = ids
    return {
        "temperature": np.array([max(row.params.temperature, 0.0) for row in rows], np.float32),
        "top_p": np.array([row.params.top_p for row in rows], np.float32),
        "uniform": np.array(
            [row.generator.random() if s else 0.0 for row, s in zip(rows, sampled, strict=True)], np.float32
        ),
        "banned_ids": banned_ids,
    }


def command_token_ids(tokenizer: TokenizerLike, spec: CommandSpec) -> list[int]:
    """Command tokens are inputs only: no output may contain one. (Copy tokens are outputs:
    which of them a row may write depends on its intent, `Row.never`.)"""
    return [i for t in spec.input_tokens() if (i := tokenizer.token_to_id(t)) is not None]


@dataclass
class SampledStep:
    tokens: np.ndarray  # [rows] int64: one per sampled row
    present: list[Any]  # the runner's KV cache after this forward
    logits: np.ndarray | None  # [batch, vocab] with keep_logits (else None: the host sampler worked in them)
    forward_s: float  # the forward's wall time (with device sampling: forward and sampling)


class Sampler:
    """A forward and one token per row: on the device where it can be, else on the host."""

    def __init__(self, runner: Runner, never: Sequence[int] = ()) -> None:
        self.runner = runner
        self.never = np.asarray(never, np.int64)
        self.device: OnnxRunner | None = None
        if isinstance(runner, OnnxRunner) and runner.sampler is not None:
            self.device = runner
            vocab_bias = np.zeros(runner.vocab_size, np.float32)
            vocab_bias[self.never] = BANNED_LOGIT
            # constant for the sampler's life: put on the device once, not every step
            self._vocab_bias = ort.OrtValue.ortvalue_from_numpy(vocab_bias, runner.device, 0)

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: list[Any],
        rows: list[Row],
        logits_rows: np.ndarray,
        keep_logits: bool = False,
        prompts: Prompts | None = None,
    ) -> SampledStep:
        """One forward, then a token for each of `rows` from logits row `logits_rows[i]` (the n
        samples of one request read their shared prefill row). `keep_logits` forces the host
        path, which brings the logits back. `prompts` are prefilled in the same forward (an
        OnnxRunner with a `mixed` graph); their logits rows follow the batch's."""
        inputs = None
        if self.device is not None and not keep_logits:
            inputs = device_inputs(rows)
        start = time.perf_counter()
        if self.device is not None and inputs is not None:
            sampling: dict[str, np.ndarray | ort.OrtValue] = {
                "rows": np.asarray(logits_rows, np.int64),
                "vocab_bias": self._vocab_bias,
                **inputs,
            }
            step = (input_ids, attention_mask, position_ids, past, sampling, prompts)
            tokens, present = self.device.step_and_sample(*step)
            return SampledStep(tokens, present, None, time.perf_counter() - start)
        if prompts is None:
            logits, present = self.runner.forward(input_ids, attention_mask, position_ids, past)
        else:
            assert isinstance(self.runner, OnnxRunner), "only a mixed ONNX graph prefills prompts in a step"
            logits, present = self.runner.forward(input_ids, attention_mask, position_ids, past, prompts)
        forward_s = time.perf_counter() - start
        # The forward's logits are this step's own array: sampled in place unless the caller keeps them.
        tokens = sample(logits, rows, self.never, logits_rows, scratch=not keep_logits)
        return SampledStep(tokens, present, None if not keep_logits else logits, forward_s)
