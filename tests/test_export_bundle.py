"""The bundle export writes: real ONNX sessions, the real tokenizer, the manifest contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from contract.manifest import BundleError, load_manifest, past_names, present_names
from export.__main__ import main as export_main
from export.verify import decode
from runtime.kv_cache import live
from runtime.onnx_runner import OnnxRunner
from runtime.padding import pad
from training.checkpoint import load_checkpoint
from training.torch_runner import TorchRunner


def test_bundle_lists_every_variant_with_its_contract(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    assert [v.name for v in manifest.variants] == ["fp32", "int8", "fp16"]
    for variant in manifest.variants:
        assert variant.opset >= 17
        assert variant.inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
        assert variant.inputs[3:] == past_names(manifest.model.n_layer)
        assert variant.outputs == ["logits", *present_names(manifest.model.n_layer)]
        assert variant.verification["passed"]
        # the CPU variants have a mixed graph too, held to the same gates (export/verify.py)
        assert bool(variant.mixed_file) == (variant.name != "fp16") == ("mixed" in variant.verification)
        assert not variant.mixed_file or (tiny_bundle / variant.mixed_file).is_file()
    assert manifest.variant("fp16").kv_dtype == "float16"
    assert manifest.variant("int8").provider == "CPUExecutionProvider"


@pytest.mark.parametrize("variant", ["fp32", "int8", "fp16"])
def test_prefill_with_empty_past_and_decode_step(tiny_bundle: Path, variant: str) -> None:
    """The graph's contract: P=0 prefill of a left-padded batch, then one token per row."""
    manifest = load_manifest(tiny_bundle)
    runner = OnnxRunner(tiny_bundle, variant, provider="cpu", manifest=manifest)
    input_ids, attention_mask, position_ids = pad([[5, 6, 7, 8, 9], [10, 11]], pad_id=0)
    logits, present = runner.forward(input_ids, attention_mask, position_ids, runner.empty_past(2))
    assert logits.shape == (2, manifest.model.vocab_size) and logits.dtype == np.float32
    shape = (2, manifest.model.n_kv_head, 5, manifest.model.head_dim)
    assert all(live(runner, p, 5).shape == shape and runner.to_host(p).dtype == runner.kv_dtype for p in present)
    step_mask = np.concatenate([attention_mask, np.ones((2, 1), dtype=np.int64)], axis=1)
    before = [live(runner, p, 5).copy() for p in present]
    logits, after = runner.forward(logits.argmax(-1)[:, None], step_mask, position_ids[:, -1:] + 1, present)
    assert live(runner, after[0], 6).shape[2] == 6 and np.isfinite(logits).all()
    # GPT-2 exports an in-place cache: the step wrote its column into the prefill's buffers,
    # leaving the columns before it as they were.
    assert manifest.variant(variant).kv_cache == "ragged" and after is present
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(live(runner, new, 5), old)


def test_left_padding_does_not_change_a_row(tiny_checkpoint: Path, tiny_bundle: Path) -> None:
    """A short prompt decodes the same alone and padded beside a longer one."""
    manifest = load_manifest(tiny_bundle)
    runner = OnnxRunner(tiny_bundle, "fp32", provider="cpu", manifest=manifest)
    alone = decode(runner, [[10, 11, 12]], steps=4)[:, 0]
    padded = decode(runner, [[1, 2, 3, 4, 5, 6, 7], [10, 11, 12]], steps=4)[:, 1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)
    torch_logits = decode(TorchRunner(load_checkpoint(tiny_checkpoint).model), [[10, 11, 12]], steps=4)[:, 0]
    assert np.abs(torch_logits - alone).max() <= 1e-4


def test_verify_passes_on_the_bundle_and_refuses_a_tampered_one(
    tiny_checkpoint: Path, tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export_main(["verify", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "fp32: fixed: max|dlogit|" in out and "int8 (mixed graph): fixed: max|dlogit|" in out

    for file in ("decoder_int8.onnx", "decoder_int8_mixed.onnx"):
        tampered = tmp_path / file
        shutil.copytree(tiny_bundle, tampered)
        with open(tampered / file, "ab") as f:
            f.write(b"\0")
        with pytest.raises(BundleError, match=f"{file} has sha256"):
            load_manifest(tampered)
        assert export_main(["verify", str(tampered)]) == 2
        assert f"{file} has sha256" in capsys.readouterr().err


def test_manifest_carries_the_checkpoint_command_and_provenance(tiny_checkpoint: Path, tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    udrl = json.loads((tiny_checkpoint / "udrl.json").read_text())
    assert manifest.command.to_dict() == udrl["command"]
    assert manifest.generation == udrl["generation"]
    assert manifest.provenance["note"] == udrl["provenance"]["note"]
    assert manifest.provenance["export"]["checkpoint_sha256"]
    assert manifest.model.eos_token_id == load_checkpoint(tiny_checkpoint).tokenizer.token_to_id("<|endoftext|>")


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["bundle", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err
    assert export_main(["verify", str(tmp_path)]) == 2
    assert "is not a bundle" in capsys.readouterr().err


def test_unknown_variant_is_refused(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--out", str(tmp_path / "b"), "--variants", "fp32,int4"]
    assert export_main(["bundle", "--checkpoint", str(tiny_checkpoint), *out]) == 2
    assert "unknown variants ['int4']" in capsys.readouterr().err


def test_verify_exits_non_zero_with_the_reason_when_a_variant_fails(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No model can agree on more than 100% of tokens: the int8 check must fail and say why.
    assert export_main(["verify", str(tiny_bundle), "--int8-min-agreement", "1.01"]) == 1
    assert "variant int8 failed verification: next-token agreement" in capsys.readouterr().err
