"""A copy of a bundle whose embedding of one token is NaN in one variant: a row whose input holds
that token gets logits that are not finite, as an fp16 overflow would give it, for tests of what
the engine does then (runtime/sampler.py: NO_TOKEN)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from contract.manifest import MANIFEST_FILE, sha256_file

if TYPE_CHECKING:
    import onnx


def edited_bundle(bundle: Path, out: Path, variant: str, edit: Callable[[onnx.ModelProto], None]) -> Path:
    """`bundle` copied to `out` with `edit` applied to each of `variant`'s graphs (the decoder's
    and the mixed one's), the manifest's hashes updated to match."""
    import onnx

    shutil.copytree(bundle, out)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    entry = next(v for v in manifest["variants"] if v["name"] == variant)
    for file_key, hash_key in (("file", "sha256"), ("mixed_file", "mixed_sha256")):
        if not entry.get(file_key):
            continue
        path = out / entry[file_key]
        model = onnx.load(str(path))
        edit(model)
        onnx.save(model, str(path))
        entry[hash_key] = sha256_file(path)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest))
    return out


def poisoned_bundle(bundle: Path, out: Path, variant: str, token_id: int) -> Path:
    """`bundle` copied to `out`, the token's row of `variant`'s embedding table set to NaN in each
    of its graphs, the manifest's hashes updated to match."""
    from onnx import numpy_helper

    def poison(model: onnx.ModelProto) -> None:
        embedding = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
        table = next(t for t in model.graph.initializer if t.name == embedding.input[0])
        values = numpy_helper.to_array(table).copy()
        values[token_id] = np.nan
        table.CopyFrom(numpy_helper.from_array(values, table.name))

    return edited_bundle(bundle, out, variant, poison)
