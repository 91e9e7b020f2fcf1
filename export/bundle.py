"""Checkpoint -> bundle: export, derive variants, verify each, write the manifest.

The bundle is assembled in `<out>.partial` and moved into place only at the end, so the
server never finds a half-written bundle at `<out>`. A variant that fails verification is
left out of the manifest; the caller learns why from the returned failures.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.command import EOS_TOKEN
from contract.manifest import (
    ATTENTION_MASK,
    INPUT_IDS,
    LOGITS,
    MANIFEST_FILE,
    POSITION_IDS,
    Manifest,
    ModelInfo,
    Variant,
    past_names,
    present_names,
    sha256_file,
)
from export.kv_int8 import KV_INT8_MODES, kv_scales, quantize_kv_cache, wants_int8_kv
from export.onnx_graph import OPSET, export_decoder, io_shapes, kv_cache_kind, kv_dtype
from export.variants import DERIVE, INT8_SCHEMES, VARIANTS, to_int8
from export.verify import MIN_INT8_AGREEMENT, verify_variants
from training.checkpoint import Checkpoint, load_checkpoint
from training.model import architecture, context_length, kv_shape
from training.tokenizer import TOKENIZER_FILE
from training.torch_runner import TorchRunner

DEFAULT_VARIANTS = ("fp32", "int8", "fp16")
# Variants served on CPU, whose ragged rows let joiners prefill in the batch's step: they get a
# mixed graph too (fp16 is for CUDA, where the cache keeps left-padded rows).
MIXED_VARIANTS = ("fp32", "int8")


class ExportError(RuntimeError):
    """Bad input to export (unknown variant, output path in the way...)."""


@dataclass
class BundleResult:
    bundle_dir: Path | None  # None when no variant passed and nothing was published
    manifest: Manifest | None
    failures: dict[str, list[str]] = field(default_factory=dict)


def model_info(checkpoint: Checkpoint) -> ModelInfo:
    """The manifest's model block, for a GPT-2 or a Llama-family student (config field names
    as both families answer them; GPT2Config maps them to n_layer, n_head...)."""
    config = checkpoint.model.config
    eos = checkpoint.tokenizer.token_to_id(EOS_TOKEN)
    n_kv_head, head_dim = kv_shape(config)
    return ModelInfo(
        architecture=architecture(checkpoint.model),
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_embd=config.hidden_size,
        vocab_size=config.vocab_size,
        n_positions=context_length(checkpoint.model),
        n_kv_head=n_kv_head,
        head_dim=head_dim,
        eos_token_id=int(eos if eos is not None else config.eos_token_id),
    )


def export_provenance(checkpoint_dir: Path) -> dict[str, Any]:
    weights = checkpoint_dir / "model.safetensors"
    versions = {pkg: importlib.metadata.version(pkg) for pkg in ("torch", "transformers", "onnx", "onnxruntime")}
    return {
        "checkpoint": str(checkpoint_dir),
        "checkpoint_sha256": sha256_file(weights) if weights.is_file() else None,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions,
    }


def variant_entry(variant: str, path: Path, info: ModelInfo, kv_cache: str) -> Variant:
    spec = VARIANTS[variant]
    mixed = mixed_path(path)
    return Variant(
        name=variant,
        file=path.name,
        dtype=spec.dtype,
        kv_dtype=kv_dtype(path),
        provider=spec.provider,
        opset=OPSET,
        sha256=sha256_file(path),
        inputs=[INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *past_names(info.n_layer)],
        outputs=[LOGITS, *present_names(info.n_layer)],
        shapes=io_shapes(path),
        kv_cache=kv_cache,
        mixed_file=mixed.name if mixed.is_file() else "",
        mixed_sha256=sha256_file(mixed) if mixed.is_file() else "",
    )


def mixed_path(path: Path) -> Path:
    """Where a variant's graph at `path` has its mixed twin (contract/manifest.py, `mixed_file`)."""
    return path.with_name(f"{path.stem}_mixed{path.suffix}")


def derive(variant: str, fp32_path: Path, scheme: str | None = None, scales: list[np.ndarray] | None = None) -> Path:
    """decoder_{variant}.onnx from the fp32 graph (DERIVE; INT8 under `scheme` when given), and its
    mixed twin from the mixed fp32 one where the variant is served on CPU (MIXED_VARIANTS): the
    same weights, one scheme, one set of KV scales."""
    path = fp32_path.with_name(f"decoder_{variant}.onnx")
    pairs = [(fp32_path, path)]
    if variant in MIXED_VARIANTS and mixed_path(fp32_path).is_file():
        pairs.append((mixed_path(fp32_path), mixed_path(path)))
    for source, out in pairs:
        if variant == "fp32":
            continue
        if scheme is not None:
            to_int8(source, out, scheme)
        else:
            DERIVE[variant](source, out)
        if variant == "int8" and scales is not None:
            quantize_kv_cache(out, scales)
    return path


def replace_dir(new: Path, target: Path) -> None:
    """Put `new` in `target`'s place by renames only, so that a kill -9 at any moment
    leaves either the old bundle or the new one, never a half-deleted directory (which
    prepare_out_dir would refuse on the re-run). The old one is renamed aside, the new one
    renamed in, then the old one removed; a leftover from a killed run goes first."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def prepare_out_dir(out_dir: Path) -> Path:
    """The staging directory; refuse to later replace anything that is not a bundle."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise ExportError(f"{out_dir} exists and is not a bundle; refusing to replace it")
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def build_bundle(
    checkpoint_dir: Path | str,
    out_dir: Path | str,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    int8_min_agreement: float = MIN_INT8_AGREEMENT,
    name: str | None = None,
    kv_int8: str = "on",
) -> BundleResult:
    """`kv_int8`: `on` gives a GPT-2 INT8 variant an int8 KV cache (export/kv_int8.py), `off`
    keeps it fp32."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ExportError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if kv_int8 not in KV_INT8_MODES:
        raise ExportError(f"unknown kv-int8 mode {kv_int8!r}; choose from {list(KV_INT8_MODES)}")
    print(f"[1/4] loading checkpoint {checkpoint_dir}", flush=True)
    checkpoint = load_checkpoint(checkpoint_dir)
    info = model_info(checkpoint)
    staging = prepare_out_dir(out_dir)

    print(f"[2/4] exporting the fp32 decoder graph (opset {OPSET})", flush=True)
    fp32_path = export_decoder(checkpoint.model, staging / "decoder_fp32.onnx")
    if any(v in MIXED_VARIANTS for v in variants):
        export_decoder(checkpoint.model, mixed_path(fp32_path), mixed=True)
    # INT8 attempts, fastest first: each weight scheme (export/variants.py) with an int8 KV cache
    # where the model gets one, then with an fp32 one; the first to pass the gate ships.
    int8_kv = "int8" in variants and wants_int8_kv(kv_int8, info.architecture)
    attempts = [(scheme, kv) for scheme in INT8_SCHEMES for kv in ((True, False) if int8_kv else (False,))]
    scales = None
    if int8_kv:
        print("[3/4] calibrating int8's KV cache on the model's own continuations", flush=True)
        scales = kv_scales(checkpoint.model, checkpoint.tokenizer, checkpoint.command, info.eos_token_id)
    files = {}
    for variant in variants:
        if variant != "fp32":
            print(f"[3/4] deriving {variant}", flush=True)
        files[variant] = derive(variant, fp32_path, scales=scales)
    kv_cache = kv_cache_kind(checkpoint.model)

    # The manifest is drafted with every candidate first: verification loads each variant
    # through the server's runner, exactly as the server will; failures are then dropped.
    shutil.copyfile(checkpoint_dir / TOKENIZER_FILE, staging / TOKENIZER_FILE)
    manifest = Manifest(
        name=name or checkpoint_dir.name,
        model=info,
        tokenizer_file=TOKENIZER_FILE,
        tokenizer_sha256=sha256_file(staging / TOKENIZER_FILE),
        command=checkpoint.command,
        variants=[variant_entry(v, files[v], info, kv_cache) for v in variants],
        generation=dict(checkpoint.generation),
        provenance={**checkpoint.provenance, "export": export_provenance(checkpoint_dir)},
    )
    print("[4/4] verifying each variant against PyTorch (prefill + decode steps)", flush=True)
    reference = TorchRunner(checkpoint.model)
    results = verify_variants(staging, manifest, reference, checkpoint.tokenizer, int8_min_agreement)
    if "int8" in results:
        results["int8"]["scheme"] = INT8_SCHEMES[0]
    for scheme, with_int8_kv in attempts[1:]:
        if "int8" not in results or results["int8"]["passed"]:
            break
        # All-int8 dynamic is the fast variant, but rounds some models' activations too coarsely;
        # the next scheme (export/variants.py) is slower or larger and beats serving FP32.
        cache = "int8" if with_int8_kv else "fp32"
        print(f"[4/4] int8 missed the gate: again as {scheme}, KV cache in {cache}", flush=True)
        derive("int8", fp32_path, scheme, scales if with_int8_kv else None)
        entry = variant_entry("int8", files["int8"], info, kv_cache)
        manifest.variants = [entry if v.name == "int8" else v for v in manifest.variants]
        retry = replace(manifest, variants=[entry])
        results["int8"] = verify_variants(staging, retry, reference, checkpoint.tokenizer, int8_min_agreement)["int8"]
        results["int8"]["scheme"] = scheme
    failures = {v: r["failures"] for v, r in results.items() if not r["passed"]}
    for entry in manifest.variants:
        entry.verification = results[entry.name]
    manifest.variants = [v for v in manifest.variants if v.name not in failures]
    for variant, path in [*files.items(), ("fp32", fp32_path)]:
        if variant in failures or variant not in variants:  # failed, or fp32 kept only as the others' source
            path.unlink(missing_ok=True)
            mixed_path(path).unlink(missing_ok=True)
    if not manifest.variants:
        shutil.rmtree(staging)
        return BundleResult(None, None, failures)

    manifest.write(staging)
    replace_dir(staging, out_dir)
    print(f"bundle written to {out_dir}: {[v.name for v in manifest.variants]}", flush=True)
    return BundleResult(out_dir, manifest, failures)
