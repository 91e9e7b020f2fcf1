"""The benchmark's models, built once into a work folder and reused by later runs.

- `tiny`: the default student, the checkpoint and bundle the user names (the bundle is
  exported from the checkpoint when it is missing).
- `small`: GPT-2 small (12 layers, 768 wide) randomly initialised with the tiny checkpoint's
  compact vocabulary and command: nothing is downloaded. Speed does not depend on the weights'
  values, only on their shapes (a random model never emits EOS, so it always spends its budget).
Each also gets a CTranslate2 INT8 conversion by CTranslate2's own converter.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from contract.manifest import FORMAT_VERSION


@dataclass
class BenchModel:
    name: str
    checkpoint: Path
    bundle: Path
    ct2: Path | None  # None when ctranslate2 is not installed
    parameters: int


EXPORT_CODE = Path(__file__).resolve().parent.parent / "export"


def exported_before(manifest: Path, code: Path = EXPORT_CODE) -> bool:
    """Whether a work folder's bundle predates this code's export: another bundle format, or
    written before a file of `code` last changed (the same format can hold another graph or
    KV cache dtype). A fresh checkout's files are older than anything exported from them."""
    if json.loads(manifest.read_text()).get("format_version") != FORMAT_VERSION:
        return True
    return manifest.stat().st_mtime < max((f.stat().st_mtime for f in code.glob("*.py")), default=0.0)


def export_bundle(checkpoint: Path, out: Path) -> Path:
    """The bundle by export's own CLI (fp32 and int8; the INT8 gate is off: a random model's
    flat logits say nothing about quantisation). One left by an older export is exported
    again, so the bench measures what this code exports."""
    manifest = out / "manifest.json"
    if manifest.is_file() and exported_before(manifest):
        shutil.rmtree(out)
    if not manifest.is_file():
        command = [sys.executable, "-m", "export", "bundle", "--checkpoint", str(checkpoint), "--out", str(out),
                   "--variants", "fp32,int8", "--int8-min-agreement", "0"]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out


def convert_ct2(checkpoint: Path, out: Path) -> Path | None:
    try:
        import ctranslate2
    except ImportError:
        return None
    if not (out / "model.bin").is_file():
        converter = ctranslate2.converters.TransformersConverter(str(checkpoint), low_cpu_mem_usage=True)
        converter.convert(str(out), quantization="int8", force=True)
    return out


def build_small(tiny_checkpoint: Path, out: Path) -> Path:
    if (out / "udrl.json").is_file():
        return out
    import torch

    from contract.command import EOS_TOKEN, special_ids
    from training.checkpoint import load_checkpoint, save_checkpoint
    from training.model import build_model

    checkpoint = load_checkpoint(tiny_checkpoint)
    torch.manual_seed(0)
    eos = special_ids(checkpoint.tokenizer, [EOS_TOKEN])[0]
    # the tiny model's context (128) is all the bench needs; 1,024 positions would only add rows
    n_positions = int(checkpoint.model.config.n_positions)
    checkpoint.model = build_model("small", checkpoint.tokenizer.get_vocab_size(), eos, n_positions=n_positions)
    checkpoint.provenance = {
        "note": "GPT-2 small, random init, for speed benchmarks only",
        "from": str(tiny_checkpoint),
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(checkpoint, tmp)
    tmp.rename(out)  # whole or not at all: a killed run leaves no half checkpoint to reuse
    return out


def parameter_count(checkpoint: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(checkpoint / "model.safetensors"), "np") as f:  # tied LM head: stored once
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not iterable)


def prepare(name: str, tiny_checkpoint: Path, tiny_bundle: Path, work: Path) -> BenchModel:
    if name == "tiny":
        checkpoint, bundle = tiny_checkpoint, tiny_bundle
        if not (bundle / "manifest.json").is_file():
            bundle = export_bundle(checkpoint, work / "tiny" / "bundle")
    elif name == "small":
        checkpoint = build_small(tiny_checkpoint, work / "small" / "checkpoint")
        bundle = export_bundle(checkpoint, work / "small" / "bundle")
    else:
        raise ValueError(f"unknown bench model {name!r}: tiny or small")
    ct2 = convert_ct2(checkpoint, work / name / "ct2_int8")
    return BenchModel(name, checkpoint, bundle, ct2, parameter_count(checkpoint))
