"""Export of trained checkpoints: INT8 agreement, a failing variant, and `--init` from a pretrained folder.

INT8 next-token agreement is only meaningful where the logits are peaked, so these tests
train tiny models for a few dozen steps on a repetitive toy corpus laid out exactly as
UDRL examples (command + intent + <|output|> + output + EOS).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import GPT2Config, GPT2LMHeadModel

from contract.command import EOS_TOKEN, CommandSpec, count_words, encode_text, prompt_ids
from contract.manifest import load_manifest
from export import bundle as export_bundle
from export.__main__ import main as export_main
from export.kv_int8 import wants_int8_kv
from export.variants import BLOCKWISE, DYNAMIC
from export.verify import FIXED_INTENTS, MIN_INT8_AGREEMENT
from training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from training.model import fit_vocabulary, load_pretrained
from training.tokenizer import add_command_tokens

OUTPUTS = {
    "t2i_prompt": "a festive storefront with warm string lights and red ribbons, soft focus, golden hour",
    "search_queries": "winter discount ideas, christmas deals near me, gift guide under 50",
    "title": "Warm Winter Savings",
}


def train_briefly(checkpoint: Checkpoint, steps: int = 60, intents: tuple[str, ...] = FIXED_INTENTS[:8]) -> Checkpoint:
    """Teacher-forced LM loss on one output per (task, intent): enough to make logits peaked.
    The output depends on the task only, so a third of the verification intents suffice."""
    torch.manual_seed(0)
    tokenizer, spec = checkpoint.tokenizer, checkpoint.command
    eos = tokenizer.token_to_id(EOS_TOKEN)
    rows = []
    for intent in intents:
        for task in spec.tasks:
            output = OUTPUTS[task]
            words = spec.clamp_words(count_words(output))
            rows.append(
                prompt_ids(tokenizer, spec, task, words, "high", intent) + encode_text(tokenizer, output) + [eos]
            )
    width = max(len(r) for r in rows)
    batch = torch.tensor([r + [eos] * (width - len(r)) for r in rows])
    model = checkpoint.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    checkpoint.model = model.eval()
    checkpoint.provenance = {"note": f"trained {steps} steps on a toy corpus, tests", "final_loss": loss.item()}
    return checkpoint


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(train_briefly(load_checkpoint(tiny_checkpoint)), tmp_path_factory.mktemp("trained"))


def test_trained_model_int8_agrees_with_fp32(trained_checkpoint: Path, tmp_path: Path) -> None:
    assert json.loads((trained_checkpoint / "udrl.json").read_text())["provenance"]["final_loss"] < 1.0
    out = tmp_path / "bundle"
    assert export_main(["bundle", "--checkpoint", str(trained_checkpoint), "--out", str(out)]) == 0
    manifest = load_manifest(out)
    assert [v.name for v in manifest.variants] == ["fp32", "int8", "fp16"]
    int8 = manifest.variant("int8").verification["checks"]["fixed"]
    assert int8["agreement_beyond_near_ties"] >= MIN_INT8_AGREEMENT
    assert manifest.variant("int8").verification["scheme"] == "dynamic"  # the fast scheme passes on GPT-2
    assert manifest.variant("fp32").verification["checks"]["fixed"]["max_abs_logit_diff"] <= 1e-4
    assert manifest.variant("fp16").verification["checks"]["fixed"]["max_rel_logit_error"] <= 1e-2


def test_an_int8_kv_cache_on_a_trained_model_passes_the_int8_gate(trained_checkpoint: Path, tmp_path: Path) -> None:
    """By default the INT8 variant keeps keys and values in int8 with calibrated per-channel
    scales, in the graph and in the manifest, and still agrees with PyTorch on the fixed prompts
    (whose intents the calibration never saw). `--kv-int8 off` keeps the cache in fp32."""
    out = tmp_path / "bundle"
    args = ["bundle", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--variants", "fp32,int8"]
    assert export_main(args) == 0
    int8 = load_manifest(out).variant("int8")
    assert int8.kv_dtype == "int8" and int8.verification["scheme"] == DYNAMIC
    assert int8.verification["checks"]["fixed"]["agreement_beyond_near_ties"] >= MIN_INT8_AGREEMENT
    graph = onnx.load(str(out / int8.file)).graph
    assert {v.type.tensor_type.elem_type for v in graph.input if v.name.startswith("past")} == {onnx.TensorProto.INT8}
    scales = [numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith(".scale")]
    assert len(scales) == 2 * 2 and all(s.shape == (1, 2, 1, 32) and (s > 0).all() for s in scales)
    assert export_main([*args, "--kv-int8", "off"]) == 0
    assert load_manifest(out).variant("int8").kv_dtype == "float32"
    assert not wants_int8_kv("on", "llama")  # bench/engine.md, step 10: no gain, agreement lost


def test_a_failing_variant_is_left_out_and_the_command_fails(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One MLP unit driven to ~1e5 (beyond fp16's 65504) and scaled back down by tiny output
    weights: exact in fp32, overflowing in fp16. Verification must catch it and the other
    variants must still ship."""
    checkpoint = load_checkpoint(trained_checkpoint)
    mlp = checkpoint.model.transformer.h[0].mlp
    with torch.no_grad():
        mlp.c_fc.weight[0, 0] = 1e5
        mlp.c_proj.weight[0, :] = 1e-5 * torch.randn(mlp.c_proj.weight.shape[1])
    broken = save_checkpoint(checkpoint, tmp_path / "broken")
    out = tmp_path / "bundle"
    assert export_main(["bundle", "--checkpoint", str(broken), "--out", str(out), "--variants", "fp32,fp16"]) == 1
    err = capsys.readouterr().err
    # Which check catches it depends on where the CPU provider rounds to fp16: with the Conv1D
    # graph the overflow reached the logits as NaN; with the in-place GPT-2 graph the logits stay
    # finite there (measured) and fail the relative-error and greedy checks instead.
    assert "variant fp16 failed verification" in err
    assert [v.name for v in load_manifest(out).variants] == ["fp32"]
    assert not (out / "decoder_fp16.onnx").exists()


def test_export_of_a_checkpoint_initialised_from_a_pretrained_folder(tmp_path: Path) -> None:
    """`--init <folder>`: full GPT-2 vocabulary (50257) + command tokens, embeddings resized."""
    pretrained = tmp_path / "pretrained"
    config = GPT2Config(vocab_size=50257, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(pretrained)
    spec = CommandSpec(tasks=tuple(OUTPUTS), max_words=16, relevance_edges={t: (0.3, 0.5) for t in OUTPUTS})
    model, base = load_pretrained(str(pretrained), tmp_path / "init_cache")
    tokenizer = add_command_tokens(base, spec.special_tokens())
    model = fit_vocabulary(model, tokenizer)
    assert model.config.vocab_size == 50257 + len(spec.special_tokens())
    # A few steps through the training checkpoint path; INT8 agreement is the other test's job
    # (a 50k-row LM head would need minutes of training to give peaked logits).
    checkpoint = train_briefly(Checkpoint(model, tokenizer, spec), steps=5, intents=FIXED_INTENTS[:1])
    out = tmp_path / "bundle"
    args = ["bundle", "--checkpoint", str(save_checkpoint(checkpoint, tmp_path / "ckpt")), "--out", str(out)]
    assert export_main([*args, "--variants", "fp32,int8", "--int8-min-agreement", "0"]) == 0
    manifest = load_manifest(out)
    assert manifest.model.vocab_size == tokenizer.get_vocab_size()
    assert manifest.model.eos_token_id == 50256
    assert manifest.variant("fp32").shapes["logits"] == ["batch", tokenizer.get_vocab_size()]
    assert manifest.variant("fp32").verification["checks"]["fixed"]["max_abs_logit_diff"] <= 1e-4


def test_int8_that_misses_the_gate_is_retried_with_each_slower_scheme(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gate above 100% fails every scheme: the retry must run, and int8 must still be left out."""
    out = tmp_path / "bundle"
    args = ["bundle", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--variants", "fp32,int8"]
    assert export_main([*args, "--int8-min-agreement", "1.01"]) == 1
    captured = capsys.readouterr()
    # Each scheme with an int8 KV cache, then with an fp32 one.
    for scheme in ("dynamic", "dynamic_keep_sensitive", "blockwise"):
        assert f"int8 missed the gate: again as {scheme}, KV cache in fp32" in captured.out
        assert scheme == "dynamic" or f"int8 missed the gate: again as {scheme}, KV cache in int8" in captured.out
    assert captured.out.count("int8: fixed:") == 6
    assert [v.name for v in load_manifest(out).variants] == ["fp32"]


def test_int8_falls_through_to_blockwise_which_ships(
    trained_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first scheme that breaks the model (its LM head negated) fails the gate; the blockwise
    scheme, made from the intact FP32 graph, passes and is what the bundle ships."""

    def broken_int8(fp32_path: Path, out_path: Path) -> Path:
        model = onnx.load(str(fp32_path))
        head = next(n for n in model.graph.node if n.op_type == "MatMul" and "lm_head" in n.name)
        weight = next(i for i in model.graph.initializer if i.name in head.input)
        weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
        onnx.save(model, str(out_path))
        return out_path

    monkeypatch.setitem(export_bundle.DERIVE, "int8", broken_int8)
    monkeypatch.setattr(export_bundle, "INT8_SCHEMES", (DYNAMIC, BLOCKWISE))
    out = tmp_path / "bundle"
    args = ["bundle", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--variants", "fp32,int8"]
    # an fp32 cache: else the first retry is the intact dynamic scheme with it, which passes
    assert export_main([*args, "--kv-int8", "off"]) == 0
    int8 = load_manifest(out).variant("int8")
    assert int8.verification["scheme"] == BLOCKWISE
    assert int8.verification["checks"]["fixed"]["agreement_beyond_near_ties"] >= MIN_INT8_AGREEMENT
    ops = {n.op_type for n in onnx.load(str(out / int8.file)).graph.node}
    assert "MatMulNBits" in ops and "MatMulInteger" not in ops
