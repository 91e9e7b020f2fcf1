"""The bundle manifest: everything the server needs to know about an exported model.

A bundle is one directory: `manifest.json`, `tokenizer.json` and one ONNX file per
variant. Export writes it, the server reads it. Loading checks the format version and
every file's sha256, and refuses a bundle it does not understand with a message that
says why, rather than serving a model that does not match its description.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from contract.command import CommandError, CommandSpec

# 2: the model block names the key/value heads (`n_kv_head`) and `head_dim` itself, so a decoder
# with grouped-query attention (Llama family) fits; format 1 bundles are still read (GPT-2: one
# key/value head per query head, head_dim = n_embd / n_head).
# 3: each variant says how its graph treats the KV cache (`kv_cache`, below); format 1 and 2
# bundles are still read, as `concat`, which is what their graphs do.
# 4: the `ragged` kind; format 3 `in_place` bundles are still read.
# 5: a CPU variant may have a `mixed_file` (below); format 4 bundles are still read.
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
MANIFEST_FILE = "manifest.json"

# The decoder graph's interface (docs/architecture.md, "Contracts"). Past/present key/values are
# [batch, n_kv_head, seq, head_dim]; logits are for the last position only, [batch, vocab].
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"
# A variant's `mixed_file` (format 5) is its `ragged` graph with a second part: prompts joining the
# batch, prefilled in the same forward as the batch's step, so a step that admits requests reads
# the weights once. Its extra inputs: the prompts right-padded, [J, S'] ids, mask and positions,
# and their own cache buffers (prompt_past_names, bound in place as prompt_present_names too);
# its logits are [B + J, vocab], the batch's rows then the prompts'. A separate file, not the one
# graph for every step: the second part costs a step without prompts 0.9-1.7 ms of extra operators
# at GPT-2 small's batch of 32 (bench/engine.md, step 11).
PROMPT_IDS = "prompt_ids"
PROMPT_MASK = "prompt_mask"
PROMPT_POSITIONS = "prompt_position_ids"
PROMPT_INPUTS = (PROMPT_IDS, PROMPT_MASK, PROMPT_POSITIONS)


# How a decoder graph treats its KV cache (Variant.kv_cache):
# concat    present = concat(past, new): a new [B, n_kv_head, P+S, head_dim] tensor every step.
# in_place  past is a preallocated buffer of capacity >= P+S columns; the graph writes the S new
#           columns at P and present is that same buffer (the runner binds both to it).
# ragged    in_place, and each row's length is its own: the graph reads row b's last real column
#           from attention_mask (its last 1), attends to columns up to it and no further, writes
#           its new columns there, and returns the logits of the row's last real token. So rows
#           may start at column 0 with lengths of their own (runtime/kv_cache.py); left-padded
#           rows, whose last column is always real, work as with `in_place`.
KV_CONCAT = "concat"
KV_IN_PLACE = "in_place"
KV_RAGGED = "ragged"
KV_CACHE_KINDS = (KV_CONCAT, KV_IN_PLACE, KV_RAGGED)


def past_names(n_layer: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def prompt_past_names(n_layer: int) -> list[str]:
    return [f"prompt_past.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def prompt_present_names(n_layer: int) -> list[str]:
    return [f"prompt_present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


class BundleError(RuntimeError):
    """A bundle the server must not load, with the reason."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelInfo:
    architecture: str
    n_layer: int
    n_head: int  # query heads
    n_embd: int
    vocab_size: int
    n_positions: int
    eos_token_id: int
    # The KV cache's shape, which is all a runner needs: [batch, n_kv_head, seq, head_dim].
    # 0: derived as GPT-2 has them (as many key/value heads as query heads, n_embd / n_head wide).
    n_kv_head: int = 0
    head_dim: int = 0

    def __post_init__(self) -> None:
        if self.n_kv_head <= 0:
            self.n_kv_head = self.n_head
        if self.head_dim <= 0:
            self.head_dim = self.n_embd // self.n_head


@dataclass
class Variant:
    """One ONNX file of the model: FP32, FP16 for CUDA, or INT8 for CPU."""

    name: str
    file: str
    dtype: str  # weights: float32 | float16 | int8
    kv_dtype: str  # the dtype of past/present key/values at the graph boundary
    provider: str  # the execution provider it was made for
    opset: int
    sha256: str
    inputs: list[str]
    outputs: list[str]
    verification: dict[str, Any] = field(default_factory=dict)
    # Each input's and output's dims as the graph declares them: a name for a dynamic axis
    # ("batch", "past_seq"), a number for a fixed one. Optional: older manifests lack it.
    shapes: dict[str, list[str | int]] = field(default_factory=dict)
    kv_cache: str = KV_CONCAT  # KV_CACHE_KINDS; absent before format 3, whose graphs all concatenate
    # The same weights as a graph that also prefills joining prompts (PROMPT_INPUTS); "" for none
    # (before format 5, and where the variant is not served on CPU).
    mixed_file: str = ""
    mixed_sha256: str = ""


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request gets for every sampling knob it leaves out: the one source of these
    defaults. Training writes them into the checkpoint, export copies them into the bundle,
    and the server and evaluation both read them from there."""

    temperature: float = 0.8
    top_p: float = 0.95  # cuts the long tail a small model's flat distribution would sample from
    top_k: int = 0  # 0: off
    max_new_tokens: int = 96  # the longest task (t2i prompts, ~60 words) with room to end
    length: int = 20  # words, when a request names no length (clamped to the trained range)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationDefaults:
        """Keys the manifest leaves out take the defaults above; unknown keys are ignored
        (a newer exporter may add knobs this server does not have)."""
        types = {"temperature": float, "top_p": float, "top_k": int, "max_new_tokens": int, "length": int}
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: types[k](v) for k, v in data.items() if k in known})
        except (TypeError, ValueError) as e:
            raise BundleError(f"manifest generation defaults are malformed: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Manifest:
    name: str
    model: ModelInfo
    tokenizer_file: str
    tokenizer_sha256: str
    command: CommandSpec
    variants: list[Variant]
    generation: dict[str, Any]
    provenance: dict[str, Any]
    format_version: int = FORMAT_VERSION

    @property
    def defaults(self) -> GenerationDefaults:
        return GenerationDefaults.from_dict(self.generation)

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise BundleError(f"bundle has no variant {name!r}; it has {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "model": asdict(self.model),
            "tokenizer": {"file": self.tokenizer_file, "sha256": self.tokenizer_sha256},
            "command": self.command.to_dict(),
            "variants": [asdict(v) for v in self.variants],
            "generation": self.generation,
            "provenance": self.provenance,
        }

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a manifest
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("format_version")
        if version not in READABLE_VERSIONS:
            raise BundleError(
                f"manifest format_version {version!r} is not supported (this code reads {list(READABLE_VERSIONS)})"
            )
        try:
            return cls(
                name=data["name"],
                model=ModelInfo(**data["model"]),
                tokenizer_file=data["tokenizer"]["file"],
                tokenizer_sha256=data["tokenizer"]["sha256"],
                command=CommandSpec.from_dict(data["command"]),
                variants=[Variant(**v) for v in data["variants"]],
                generation=dict(data["generation"]),
                provenance=dict(data["provenance"]),
            )
        except (KeyError, TypeError, CommandError) as e:
            raise BundleError(f"manifest is malformed: {type(e).__name__}: {e}") from e


def load_manifest(bundle_dir: Path | str, verify_hashes: bool = True) -> Manifest:
    """Read and check a bundle's manifest; raise BundleError saying what is wrong."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: it has no {MANIFEST_FILE}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from e
    manifest = Manifest.from_dict(data)
    if not manifest.variants:
        raise BundleError(f"{path} lists no model variants")
    if verify_hashes:
        files = [(manifest.tokenizer_file, manifest.tokenizer_sha256)]
        files += [(v.file, v.sha256) for v in manifest.variants]
        files += [(v.mixed_file, v.mixed_sha256) for v in manifest.variants if v.mixed_file]
        for name, expected in files:
            file = bundle_dir / name
            if not file.is_file():
                raise BundleError(f"bundle file {name} is missing from {bundle_dir}")
            actual = sha256_file(file)
            if actual != expected:
                raise BundleError(
                    f"bundle file {name} has sha256 {actual[:12]}..., the manifest says {expected[:12]}..."
                )
    return manifest
