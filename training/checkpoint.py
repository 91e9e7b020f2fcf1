"""The checkpoint: what training hands to export.

A directory with the Hugging Face model (`config.json`, `model.safetensors`), the
tokenizer with its command tokens (`tokenizer.json`), and `udrl.json`: the command
vocabulary with its fitted bucket edges, generation defaults and provenance. Export
copies the last two into the bundle manifest unchanged.

`udrl.json` is what makes a directory a checkpoint (`load_checkpoint` and the Makefile look
for it), so it is removed before the other files are rewritten and renamed into place
after them: a kill -9 while saving leaves no checkpoint, never new weights beside an old
`udrl.json` or a torn weights file beside a whole one (issue 12).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, PreTrainedModel

from contract.command import CommandSpec
from contract.manifest import GenerationDefaults
from training.tokenizer import TOKENIZER_FILE

UDRL_FILE = "udrl.json"
DEFAULT_GENERATION = GenerationDefaults().to_dict()  # the one source: contract.manifest


@dataclass
class Checkpoint:
    model: PreTrainedModel  # GPT-2 or Llama family (training/model.py)
    tokenizer: Tokenizer
    command: CommandSpec
    generation: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_GENERATION))
    provenance: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(checkpoint: Checkpoint, out_dir: Path | str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / UDRL_FILE).unlink(missing_ok=True)  # from here until the rename below: no checkpoint
    checkpoint.model.save_pretrained(out_dir, safe_serialization=True)
    checkpoint.tokenizer.save(str(out_dir / TOKENIZER_FILE))
    udrl = {
        "command": checkpoint.command.to_dict(),
        "generation": checkpoint.generation,
        "provenance": checkpoint.provenance,
    }
    tmp = out_dir / (UDRL_FILE + ".tmp")
    tmp.write_text(json.dumps(udrl, indent=2) + "\n")
    tmp.replace(out_dir / UDRL_FILE)
    return out_dir


def load_checkpoint(path: Path | str) -> Checkpoint:
    path = Path(path)
    if not (path / UDRL_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: it has no {UDRL_FILE}")
    udrl = json.loads((path / UDRL_FILE).read_text())
    # safetensors only: a checkpoint folder with a pickled pytorch_model.bin instead is refused
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
    # Every reader asks config.n_positions, GPT-2's name for the context; Llama calls it otherwise.
    model.config.n_positions = model.config.max_position_embeddings
    return Checkpoint(
        model=model,
        tokenizer=Tokenizer.from_file(str(path / TOKENIZER_FILE)),
        command=CommandSpec.from_dict(udrl["command"]),
        generation=udrl.get("generation", dict(DEFAULT_GENERATION)),
        provenance=udrl.get("provenance", {}),
    )
