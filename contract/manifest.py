"""The bundle manifest: everything the server needs to know about an exported model.

A bundle is one directory: `manifest.json`, `tokenizer.json` and one ONNX file per
variant. Export writes it, the server reads it. Loading checks the format version and
every file's sha256, and refuses a bundle it does not understand with a message that
says why, rather than serving a model that does not match its description.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contract.command import CommandError, CommandSpec

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

# The decoder graph's interface (DESIGN.md, "Contracts"). Past/present key/values are
# [batch, n_head, seq, head_dim]; logits are for the last position only, [batch, vocab].
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
LOGITS = "logits"


def past_names(n_layer: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


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
    n_head: int
    n_embd: int
    vocab_size: int
    n_positions: int
    eos_token_id: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


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
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest format_version {version!r} is not supported (this code reads {FORMAT_VERSION})"
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
