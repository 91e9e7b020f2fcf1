"""A tiny GPT-2 trained for a few seconds to memorise given outputs, exported by export's own
code: for tests that need a model that writes known text (multi-byte characters, copy tokens)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from contract.command import EOS_TOKEN, CommandSpec


def memorised_bundle(
    tokenizer, spec: CommandSpec, examples: Sequence[tuple[list[int], list[int]]], out: Path, steps: int = 150
) -> Path:
    """Train on (prompt ids, output ids) pairs, loss on the output and EOS only, and export fp32."""
    import torch

    from export.bundle import build_bundle
    from training.checkpoint import Checkpoint, save_checkpoint
    from training.model import build_model

    torch.manual_seed(0)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    model = build_model("tiny", tokenizer.get_vocab_size(), eos, n_layer=2, n_embd=64, n_head=2, n_positions=48)
    rows = [prompt + output + [eos] for prompt, output in examples]
    width = max(map(len, rows))
    ids = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    labels = torch.full_like(ids, -100)
    for i, (prompt, output) in enumerate(examples):
        labels[i, len(prompt) : len(prompt) + len(output) + 1] = ids[i, len(prompt) : len(prompt) + len(output) + 1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint = save_checkpoint(
        Checkpoint(model.eval(), tokenizer, spec, provenance={"note": "memorised"}), out / "ckpt"
    )
    result = build_bundle(checkpoint, out / "bundle", ("fp32",), 0.0)
    assert result.bundle_dir is not None and not result.failures, result.failures
    return result.bundle_dir


def serve_and_stream(bundle: Path, log: Path, body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Start the real server on the bundle (fp32), POST one streaming request, stop it:
    (the text deltas, the first output of the final event)."""
    import httpx
    from server_process import ServerProcess
    from test_server import parse_sse

    server = ServerProcess(bundle, log, variant="fp32")
    try:
        with httpx.stream("POST", f"{server.url}/v1/generate", json={**body, "stream": True}, timeout=60) as response:
            assert response.status_code == 200, response.read()
            events = parse_sse("".join(response.iter_text()))
    finally:
        server.stop()
    deltas = [json.loads(data)["text"] for kind, data in events if kind == "delta"]
    return deltas, json.loads(events[-1][1])["outputs"][0]
