"""One check of a ragged KV cache (runtime/kv_cache.py), shared by the GPT-2 and Llama tests."""

from __future__ import annotations

import numpy as np

from runtime.kv_cache import BatchCache, can_write_in_place, empty_cache, rebuild, write_in_place
from runtime.onnx_runner import OnnxRunner, Prompts
from runtime.padding import pad


def prefill(runner: OnnxRunner, ids: list[int]) -> tuple[np.ndarray, BatchCache]:
    array = np.array([ids], np.int64)
    past = runner.empty_past(1)
    logits, present = runner.forward(array, np.ones_like(array), np.arange(len(ids))[None, :], past)
    return logits, BatchCache(present, np.ones_like(array))


def check_ragged_rows(runner: OnnxRunner) -> None:
    """A ragged cache: prompts padded on the right, rows from column 0 with their own lengths.
    Prefill, decode steps, a free slot, a joiner written in place (longer than every row: the
    mask widens) and a rebuild that drops the longest row (the width shrinks) all give each row
    the logits it gets alone."""
    assert runner.ragged_rows
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
    follow = [21, 22, 23]

    def alone(ids: list[int], steps: int) -> list[np.ndarray]:
        logits, cache = prefill(runner, ids)
        out = [logits[0]]
        for token in follow[:steps]:
            mask = np.concatenate([cache.mask, np.ones((1, 1), np.int64)], axis=1)
            logits, cache.past = runner.forward(np.array([[token]]), mask, cache.positions(), cache.past)
            cache.mask, out = mask, [*out, logits[0]]
        return out

    expected = [alone(ids, 3) for ids in prompts]
    input_ids, mask, positions = pad(prompts, runner.eos_token_id, right=True)
    logits, present = runner.forward(input_ids, mask, positions, runner.empty_past(3))
    np.testing.assert_allclose(logits, np.stack([e[0] for e in expected]), atol=1e-4)
    cache = rebuild(runner, empty_cache(runner), np.array([], np.int64), BatchCache(present, mask, True), np.arange(3))
    every = np.ones(3, bool)
    for step in range(2):
        step_mask = cache.step_mask(every)
        assert step_mask.shape[1] == 8 + step  # the longest row and its new token, not more
        logits, present = runner.forward(np.full((3, 1), follow[step]), step_mask, cache.positions(), cache.past)
        cache.advance(present, step_mask, every)
        np.testing.assert_allclose(logits, np.stack([e[step + 1] for e in expected]), atol=1e-4)

    # row 1 leaves; its free slot stays of length 0 while the others decode
    live_rows = np.array([True, False, True])
    step_mask = cache.step_mask(live_rows)
    logits, present = runner.forward(np.full((3, 1), follow[2]), step_mask, cache.positions(), cache.past)
    cache.advance(present, step_mask, live_rows)
    np.testing.assert_allclose(logits[[0, 2]], np.stack([expected[0][3], expected[2][3]]), atol=1e-4)
    assert cache.mask.sum(axis=1).tolist() == [10, 0, 7]

    # a joiner longer than every row takes the free slot from column 0
    longest = list(range(30, 42))
    _, joining = prefill(runner, longest)
    joining.ragged = True
    assert can_write_in_place(runner, cache, joining)
    write_in_place(runner, cache, [1], joining, [0])
    step_mask = cache.step_mask(every)
    assert step_mask.shape[1] == len(longest) + 1
    logits, present = runner.forward(np.full((3, 1), 50), step_mask, cache.positions(), cache.past)
    cache.advance(present, step_mask, every)
    np.testing.assert_allclose(logits[1], alone(longest + [50], 0)[0], atol=1e-4)

    # the joiner leaves: the rebuilt cache is as wide as its longest row
    cache = rebuild(runner, cache, np.array([0, 2]))
    assert cache.ragged and cache.mask.shape == (2, 11) and cache.mask.sum(axis=1).tolist() == [11, 8]


def check_mixed_step(runner: OnnxRunner) -> None:
    """A `mixed` graph's step: decoding the batch's rows while prefilling joining prompts in the
    same forward gives the rows the logits of a plain decode step, and the prompts the logits and
    the cache of a prefill of their own."""
    assert runner.mixed_prefill
    rows = [[3, 4, 5, 6, 7, 8, 9], [10, 11]]
    input_ids, mask, positions = pad(rows, runner.eos_token_id, right=True)
    _, present = runner.forward(input_ids, mask, positions, runner.empty_past(2))
    cache = BatchCache(present, mask, True)
    every = np.ones(2, bool)
    step_mask = cache.step_mask(every)
    step = (np.array([[21], [22]]), step_mask, cache.positions(), cache.past)
    decoded, _ = runner.forward(*step)  # writes each row's new column; the mixed step writes the same

    joining = [[30, 31, 32], [33, 34, 35, 36, 37], [38]]
    prompt_ids, prompt_mask, prompt_positions = pad(joining, runner.eos_token_id, right=True)
    alone, alone_cache = runner.forward(prompt_ids, prompt_mask, prompt_positions, runner.empty_past(3))
    prompts = Prompts(prompt_ids, prompt_mask, prompt_positions, runner.empty_past(3))
    mixed, _ = runner.forward(*step, prompts)
    assert mixed.shape[0] == 2 + 3
    np.testing.assert_allclose(mixed[:2], decoded, atol=1e-4)
    np.testing.assert_allclose(mixed[2:], alone, atol=1e-4)
    for ours, theirs in zip(prompts.past, alone_cache, strict=True):  # each prompt's real columns
        ours_host, theirs_host = runner.to_host(ours), runner.to_host(theirs)
        for j, ids in enumerate(joining):
            np.testing.assert_allclose(ours_host[j, :, : len(ids)], theirs_host[j, :, : len(ids)], atol=1e-5)
