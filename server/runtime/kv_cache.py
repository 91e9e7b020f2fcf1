"""The running batch's KV cache: one left-padded, right-aligned tensor per layer.

Every row's real tokens end at the last column, so one decode step appends one column
for everyone, and the graph's `present` is simply the next step's `past` (no copy on
our side, see onnx_runner.py). Rows are not positions in a fixed buffer: when requests
join (prefill) or leave (finished, aborted, past their deadline), the batch is rebuilt
once on the host: gather the surviving rows, pad the shorter side on the left, concat,
and trim columns that are padding in every row. That costs one pass over the cache per
membership change, not per step. On CUDA it is a device->host->device round trip;
doing it with device kernels is future work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from server.runtime.onnx_runner import OnnxRunner


@dataclass
class BatchCache:
    past: list[ort.OrtValue]  # per past name: [rows, n_head, columns, head_dim]
    mask: np.ndarray  # [rows, columns] int64: 1 on real tokens, 0 on left padding

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def positions(self) -> np.ndarray:
        """The position of each row's next token: how many real tokens it holds."""
        return self.mask.sum(axis=1, keepdims=True)

    def advance(self, present: list[ort.OrtValue]) -> None:
        """After a decode step: the graph's output is the cache, one column longer."""
        self.past = present
        self.mask = np.concatenate([self.mask, np.ones((self.rows, 1), np.int64)], axis=1)


def empty_cache(runner: OnnxRunner) -> BatchCache:
    return BatchCache([runner.to_device(a) for a in runner.empty_past(0)], np.zeros((0, 0), np.int64))


def _trim(arrays: list[np.ndarray], mask: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Drop leading columns that are padding in every row (left over from rows that left)."""
    if mask.shape[0] == 0:
        return [a[:, :, :0] for a in arrays], mask[:, :0]
    used = np.flatnonzero(mask.any(axis=0))
    start = int(used[0]) if used.size else mask.shape[1]
    return [a[:, :, start:] for a in arrays], mask[:, start:]


def _pad_left(arrays: list[np.ndarray], mask: np.ndarray, columns: int) -> tuple[list[np.ndarray], np.ndarray]:
    extra = columns - mask.shape[1]
    if extra == 0:
        return arrays, mask
    padded = [np.pad(a, ((0, 0), (0, 0), (extra, 0), (0, 0))) for a in arrays]
    return padded, np.pad(mask, ((0, 0), (extra, 0)))


def rebuild(
    runner: OnnxRunner,
    running: BatchCache,
    keep: np.ndarray,
    joining: BatchCache | None = None,
    joining_rows: np.ndarray | None = None,
) -> BatchCache:
    """The next batch: `running` rows `keep`, then `joining` rows `joining_rows` (a row
    index may repeat: the n samples of one request share one prefill row)."""
    arrays = [runner.to_host(v)[keep] for v in running.past]
    mask = running.mask[keep]
    if joining is not None and joining_rows is not None and joining_rows.size:
        new_arrays = [runner.to_host(v)[joining_rows] for v in joining.past]
        new_mask = joining.mask[joining_rows]
        # Padding columns of a prefill are masked out, but zero them anyway: a masked
        # column only contributes weight 0 * value, which is NaN if the value is not finite.
        new_arrays = [np.where(new_mask[:, None, :, None] > 0, a, 0) for a in new_arrays]
        columns = max(mask.shape[1], new_mask.shape[1])
        arrays, mask = _pad_left(arrays, mask, columns)
        new_arrays, new_mask = _pad_left(new_arrays, new_mask, columns)
        arrays = [np.concatenate([a, b]) for a, b in zip(arrays, new_arrays, strict=True)]
        mask = np.concatenate([mask, new_mask])
    arrays, mask = _trim(arrays, mask)
    return BatchCache([runner.to_device(a) for a in arrays], np.ascontiguousarray(mask))
