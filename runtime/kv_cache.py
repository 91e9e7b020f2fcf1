"""The running batch's KV cache: one tensor per layer, rows laid out in one of two ways.

- Left-padded (concat graphs, format-3 in-place graphs, and any cache on CUDA): every row's real
  tokens end at the last live column, so one decode step appends one column for everyone, and
  the graph's `present` is simply the next step's `past` (no copy on our side, see
  onnx_runner.py). A row that joins a running batch is right-aligned with the others, behind
  columns of padding; the attention kernel reads those too, for every row, every step.
- Ragged (`ragged` graphs on CPU, `OnnxRunner.ragged_rows`): every row starts at column 0 and
  has its own length; the mask says which (its 1s). The graph reads each row's length from the
  mask and attends to its own columns only, and a decode step writes each row's new column
  after its last. A joining row is copied to column 0 of a free slot whatever the others'
  lengths, nothing is ever padding in front, and the columns never need trimming. Measured on
  GPT-2 small in a closed loop of 32: left-padded rows spanned 66 columns for 31 real tokens
  on average (bench/engine.md, step 7).
The live columns are the first `columns` of each tensor: an in-place cache's buffers have
room for more (onnx_runner.KV_ROOM), a concatenating one's not.

Rows are slots. A finished row is not cut out at once: its slot is marked free, and
the next request to join is written into it in place (on CPU the cache is host memory,
so this is a copy of the newcomer's prefill only, not of the batch). The batch is
rebuilt (surviving rows gathered; left-padded: the shorter side padded on the left, columns
that are padding in every row trimmed) only when a newcomer does not fit in place, or when
free slots or dead columns would waste too much compute. That is one pass over the cache per
rebuild, not per step. On CUDA every join is a rebuild, and a rebuild is a
device->host->device round trip; doing it with device kernels is future work.

A free slot in a decode step costs about what a live row does (the kernels' work is per row,
whatever its length: `python bench/scheduler.py freeslots`). So where the cache is ragged host
memory (`trims_free_rows`), the scheduler moves the last live rows into the free slots before
them (`move_row`, one row's copy) and runs each step over the leading live rows only, through
views of the same buffers (`leading_rows`): free slots trail, cost nothing but memory, and wait
there for the next joins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from runtime.onnx_runner import OnnxRunner


@dataclass
class BatchCache:
    past: list[ort.OrtValue]  # per past name: [rows, n_kv_head, columns, head_dim]
    mask: np.ndarray  # [rows, columns] int64: 1 on real tokens, 0 on padding
    ragged: bool = False  # rows start at column 0 with their own lengths (see the module's doc)
    # leading_rows' views of `past`: (the past they view, their rows, the views)
    _leading: tuple[list[ort.OrtValue], int, list[ort.OrtValue]] | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def columns(self) -> int:
        return int(self.mask.shape[1])

    def positions(self) -> np.ndarray:
        """The position of each row's next token: how many real tokens it holds."""
        positions: np.ndarray = self.mask.sum(axis=1, keepdims=True)
        return positions

    def step_mask(self, live: np.ndarray) -> np.ndarray:
        """The attention mask of the next decode step: each row's tokens and its new one.
        Left-padded: one more column for every row. Ragged: each live row's next column; a free
        slot (`live` False) is a row of length 0, its dummy token at column 0."""
        if not self.ragged:
            return np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)
        lengths = np.where(live, self.mask.sum(axis=1), 0)
        columns = np.arange(int(lengths.max(initial=0)) + 1)
        return (columns[None, :] <= lengths[:, None]).astype(np.int64)

    def advance(self, present: list[ort.OrtValue], mask: np.ndarray, live: np.ndarray) -> None:
        """After a decode step with `mask` (step_mask's): the graph's output is the cache.
        A free slot's dummy column is not kept in a ragged cache (it stays of length 0)."""
        self.past = present
        self.mask = mask if not self.ragged else mask * live[:, None]


def trims_free_rows(runner: OnnxRunner, cache: BatchCache) -> bool:
    """Whether free slots can be moved behind the live rows (`move_row`) and left out of the
    decode step (`leading_rows`): a ragged cache in host memory with room to write in place."""
    return cache.ragged and runner.in_place and keeps_spare_rows(runner, cache)


def move_row(runner: OnnxRunner, cache: BatchCache, source: int, target: int) -> None:
    """Copy row `source` into row `target` (a free slot), in place; `source` becomes a free slot
    (length 0). One row's columns: ~1.5 MB for GPT-2 small at 80 columns, where a free slot in
    the step costs about what a live row costs (`python bench/scheduler.py freeslots`)."""
    for value in cache.past:
        view = runner.host_view(value)
        assert view is not None, "move_row needs host-addressable cache memory"
        view[target, :, : cache.columns] = view[source, :, : cache.columns]
    cache.mask[target] = cache.mask[source]
    cache.mask[source] = 0


def leading_rows(runner: OnnxRunner, cache: BatchCache, rows: int) -> list[ort.OrtValue]:
    """The cache's first `rows` rows as tensors over the same memory (rows are the outermost
    axis, so they are contiguous): a decode step over them writes into the batch's buffers and
    leaves the free slots behind them out. The same views while `rows` and the buffers stay,
    so the runner keeps its IO binding (onnx_runner.py)."""
    if rows == cache.rows:
        return cache.past
    if cache._leading is not None and cache._leading[0] is cache.past and cache._leading[1] == rows:
        return cache._leading[2]
    views = []
    for value in cache.past:
        view = runner.host_view(value)
        assert view is not None, "leading_rows needs host-addressable cache memory"
        views.append(runner.wrap(view[:rows]))
    cache._leading = (cache.past, rows, views)
    return views


def empty_cache(runner: OnnxRunner) -> BatchCache:
    return BatchCache(runner.empty_past(0), np.zeros((0, 0), np.int64), runner.ragged_rows)


def live(runner: OnnxRunner, value: ort.OrtValue, columns: int) -> np.ndarray:
    """The live columns of one cache tensor on the host (a view on CPU)."""
    return runner.to_host(value)[:, :, :columns]


def first_used_column(mask: np.ndarray) -> int:
    used = np.flatnonzero(mask.any(axis=0))
    return int(used[0]) if used.size else mask.shape[1]


def _zero_padding(array: np.ndarray, mask: np.ndarray) -> None:
    """Zero, in place, the (row, column) cells of a joining prefill where `mask` is 0. Padding
    columns are masked out, but a masked column contributes weight 0 * value, which is NaN if
    the value is not finite."""
    array[:, :, : mask.shape[1]].transpose(0, 2, 1, 3)[mask == 0] = 0


def keeps_spare_rows(runner: OnnxRunner, cache: BatchCache) -> bool:
    """Whether `rebuild` can give this cache spare (empty) rows: only the host rebuild does,
    and only host memory is written in place (`write_in_place`) to fill them."""
    return runner.cache_surgery is None and bool(cache.past) and runner.host_view(cache.past[0]) is not None


def rebuild(
    runner: OnnxRunner,
    running: BatchCache,
    keep: np.ndarray,
    joining: BatchCache | None = None,
    joining_rows: np.ndarray | None = None,
    spare: int = 0,
) -> BatchCache:
    """The next batch: `running` rows `keep`, then `joining` rows `joining_rows` (a row
    index may repeat: the n samples of one request share one prefill row), then `spare`
    empty rows (free slots for the next joins to be written into in place; host only).

    On the host each row's live columns are copied once, straight into the new buffer: rows
    are right-aligned, so a row's last columns land in the buffer's last live columns, and
    columns that are padding in every row are never copied (trimmed)."""
    if runner.cache_surgery is not None:
        if spare:
            raise ValueError("spare rows are a host rebuild's (see keeps_spare_rows)")
        return _rebuild_on_device(runner, running, keep, joining, joining_rows)
    if not spare and (adopted := _adopt(runner, keep, joining, joining_rows)):
        return adopted
    if running.ragged:
        return _rebuild_ragged(runner, running, keep, joining, joining_rows, spare)
    parts = [(running, keep)]
    if joining is not None and joining_rows is not None and joining_rows.size:
        parts.append((joining, joining_rows))
    columns = max(cache.columns for cache, _ in parts)
    mask = np.concatenate([np.pad(cache.mask[rows], ((0, 0), (columns - cache.columns, 0))) for cache, rows in parts])
    final = columns - (first_used_column(mask) if mask.shape[0] else columns)
    mask = np.concatenate([mask[:, columns - final :], np.zeros((spare, final), mask.dtype)])
    past = []
    for i in range(len(runner.past_names)):
        buffer = runner.kv_buffer(mask.shape[0], final)
        at = 0
        for cache, rows in parts:
            take = min(final, cache.columns)  # the row's last `take` columns are live somewhere
            source = live(runner, cache.past[i], cache.columns)[:, :, cache.columns - take :]
            for row in rows:
                buffer[at, :, final - take : final] = source[row]
                at += 1
        _zero_padding(buffer[len(keep) :], mask[len(keep) :])  # the joining rows' (as on the device)
        past.append(runner.wrap(buffer))
    return BatchCache(past, mask)


def _rebuild_ragged(
    runner: OnnxRunner,
    running: BatchCache,
    keep: np.ndarray,
    joining: BatchCache | None,
    joining_rows: np.ndarray | None,
    spare: int,
) -> BatchCache:
    """`rebuild` of a ragged cache: each row's columns are copied from column 0, as they lie, and
    the buffer is as wide as the longest row."""
    parts = [(running, keep)]
    if joining is not None and joining_rows is not None and joining_rows.size:
        parts.append((joining, joining_rows))
    final = max([int(cache.mask[rows].sum(axis=1).max(initial=0)) for cache, rows in parts])
    widened = [np.pad(c.mask[rows], ((0, 0), (0, max(0, final - c.columns))))[:, :final] for c, rows in parts]
    mask = np.concatenate([*widened, np.zeros((spare, final), np.int64)])
    past = []
    for i in range(len(runner.past_names)):
        buffer = runner.kv_buffer(mask.shape[0], final)
        at = 0
        for cache, rows in parts:
            take = min(final, cache.columns)
            source = live(runner, cache.past[i], cache.columns)[:, :, :take]
            for row in rows:
                buffer[at, :, :take] = source[row]
                at += 1
        past.append(runner.wrap(buffer))
    return BatchCache(past, mask, ragged=True)


def _adopt(
    runner: OnnxRunner, keep: np.ndarray, joining: BatchCache | None, joining_rows: np.ndarray | None
) -> BatchCache | None:
    """When no running row stays and every joining row joins once, in order (a batch that
    starts from empty, or after all its rows finished together), the prefill's own cache is
    the batch: its padding columns are zeroed where they lie, and nothing is copied. (The
    rebuild would copy every row into a new buffer: ~190 MB for 32 rows of GPT-2 small.)"""
    if keep.size or joining is None or joining_rows is None or not joining.rows:
        return None
    if not np.array_equal(joining_rows, np.arange(joining.rows)):
        return None  # rows repeat (n samples of one prompt) or some left
    views = [runner.host_view(v) for v in joining.past]
    if any(view is None for view in views):
        return None
    for view in views:
        assert view is not None
        if not joining.ragged:  # a ragged row's padding lies past its length, where nothing reads
            _zero_padding(view, joining.mask)
    return BatchCache(joining.past, np.ascontiguousarray(joining.mask), joining.ragged)


def _rebuild_on_device(
    runner: OnnxRunner,
    running: BatchCache,
    keep: np.ndarray,
    joining: BatchCache | None,
    joining_rows: np.ndarray | None,
) -> BatchCache:
    """`rebuild` where the cache lives: the masks (small) are worked out on the host, the
    tensors are gathered, padded or trimmed and concatenated by cache_graph.py."""
    if joining is None or joining_rows is None or not joining_rows.size:
        joining, joining_rows = running, np.zeros(0, np.int64)
    mask, new_mask = running.mask[keep], joining.mask[joining_rows]
    columns = max(mask.shape[1], new_mask.shape[1])
    merged = np.concatenate(
        [
            np.pad(mask, ((0, 0), (columns - mask.shape[1], 0))),
            np.pad(new_mask, ((0, 0), (columns - new_mask.shape[1], 0))),
        ]
    )
    start = first_used_column(merged) if merged.shape[0] else columns
    final = columns - start

    def pads(current: int, value: ort.OrtValue) -> np.ndarray:
        """Pads of the columns axis only (negative: trim): on the left to `final` live columns,
        on the right the room beyond the live columns (in place, onnx_runner.KV_ROOM) is cut;
        the runner gives the result room again when a step needs it."""
        return np.array([0, 0, final - current, 0, 0, 0, current - int(value.shape()[2]), 0], np.int64)

    # The joining rows' mask zeroes their padding columns; zero their room (in place) too.
    room = int(joining.past[0].shape()[2]) - joining.columns if joining.past else 0
    scale = np.pad(new_mask, ((0, 0), (0, room)))[:, None, :, None]
    past = [
        runner.rearrange(r, keep, pads(running.columns, r), j, joining_rows, scale, pads(joining.columns, j))
        for r, j in zip(running.past, joining.past, strict=True)
    ]
    return BatchCache(past, np.ascontiguousarray(merged[:, start:]))


def can_write_in_place(runner: OnnxRunner, cache: BatchCache, joining: BatchCache) -> bool:
    """Only where the cache memory is host-addressable (CPU) and the newcomer fits: no longer
    than the live columns (left-padded), or than the buffer (ragged)."""
    if cache.rows == 0:
        return False
    room = int(cache.past[0].shape()[2]) if cache.ragged else cache.columns
    return joining.columns <= room and runner.host_view(cache.past[0]) is not None


def write_in_place(
    runner: OnnxRunner, cache: BatchCache, slots: list[int], joining: BatchCache, joining_rows: list[int]
) -> None:
    """Put joining rows into free slots of the running cache, in place: right-aligned with the
    others (left-padded), or from column 0 (ragged)."""
    if cache.ragged:
        _write_ragged(runner, cache, slots, joining, joining_rows)
        return
    start = cache.columns - joining.columns
    for value, new in zip(cache.past, joining.past, strict=True):
        view = runner.host_view(value)
        assert view is not None, "write_in_place needs host-addressable cache memory"
        source = live(runner, new, joining.columns)
        for slot, row in zip(slots, joining_rows, strict=True):
            view[slot, :, :start] = 0
            view[slot, :, start : cache.columns] = source[row]
            _zero_padding(view[slot : slot + 1, :, start:], joining.mask[row : row + 1])
    cache.mask[slots] = 0
    cache.mask[slots, start:] = joining.mask[joining_rows]


def _write_ragged(
    runner: OnnxRunner, cache: BatchCache, slots: list[int], joining: BatchCache, joining_rows: list[int]
) -> None:
    if joining.columns > cache.columns:  # the buffer has room (can_write_in_place); the mask grows
        cache.mask = np.pad(cache.mask, ((0, 0), (0, joining.columns - cache.columns)))
    for value, new in zip(cache.past, joining.past, strict=True):
        view = runner.host_view(value)
        assert view is not None, "write_in_place needs host-addressable cache memory"
        source = live(runner, new, joining.columns)
        for slot, row in zip(slots, joining_rows, strict=True):
            view[slot, :, : joining.columns] = source[row]
    cache.mask[slots] = 0
    cache.mask[slots, : joining.columns] = joining.mask[joining_rows]
