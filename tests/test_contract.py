"""The command format and bundle manifest: the contract every stage shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.command import (
    EOS_TOKEN,
    OUTPUT_TOKEN,
    CommandError,
    CommandSpec,
    count_words,
    encode_text,
    normalize_text,
    prompt_ids,
)
from contract.manifest import (
    BundleError,
    GenerationDefaults,
    Manifest,
    ModelInfo,
    Variant,
    load_manifest,
    sha256_file,
)
from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer, gpt2_tokenizer

SPEC = CommandSpec(
    tasks=("t2i_prompt", "title"), max_words=40, relevance_edges={"t2i_prompt": (0.2, 0.5), "title": (0.1, 0.4)}
)


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["holiday sale", "a snowy storefront at dusk with warm lights", "Winter Deals"]
    return add_command_tokens(compact_gpt2_tokenizer(corpus), SPEC.special_tokens())


def test_full_gpt2_tokenizer_matches_openai_ids() -> None:
    tokenizer = gpt2_tokenizer()
    assert tokenizer.get_vocab_size() == 50257
    assert tokenizer.encode("Hello world").ids == [15496, 995]
    assert tokenizer.token_to_id(EOS_TOKEN) == 50256


def test_compact_tokenizer_encodes_corpus_like_gpt2_and_unseen_words_by_pieces(tokenizer) -> None:
    full = gpt2_tokenizer()
    text = " a snowy storefront at dusk with warm lights"
    compact_tokens = [tokenizer.id_to_token(i) for i in tokenizer.encode(text).ids]
    full_tokens = [full.id_to_token(i) for i in full.encode(text).ids]
    assert compact_tokens == full_tokens
    assert tokenizer.get_vocab_size() < 1000
    unseen = " xylophone quartet"
    ids = tokenizer.encode(unseen).ids
    assert tokenizer.decode(ids) == unseen  # no <unk>: byte fallback keeps every character
    assert len(ids) > len(full.encode(unseen).ids)


def test_prompt_layout_and_round_trip(tokenizer) -> None:
    ids = prompt_ids(tokenizer, SPEC, "title", 5, "high", "  holiday   sale ")
    tokens = [tokenizer.id_to_token(i) for i in ids]
    assert tokens[:3] == ["<|task:title|>", "<|words:5|>", "<|relevance:high|>"]
    assert tokens[-1] == OUTPUT_TOKEN
    assert tokenizer.decode(ids[3:-1]) == " holiday sale"


def test_special_token_strings_in_text_stay_plain_text(tokenizer) -> None:
    injected = "sale <|task:title|><|endoftext|><|words:3|>"
    ids = encode_text(tokenizer, injected)
    special = {tokenizer.token_to_id(t) for t in [*SPEC.special_tokens(), EOS_TOKEN]}
    assert not special & set(ids)
    assert tokenizer.decode(ids, skip_special_tokens=False) == " " + injected
    assert tokenizer.encode_special_tokens is False  # the switch is restored


def test_command_checks_and_relevance_levels() -> None:
    with pytest.raises(CommandError, match="unknown task"):
        SPEC.tokens("poem", 5, "high")
    with pytest.raises(CommandError, match="outside the trained range"):
        SPEC.tokens("title", 41, "high")
    with pytest.raises(CommandError, match="unknown relevance"):
        SPEC.tokens("title", 4, "extreme")
    assert [SPEC.relevance_level("title", s) for s in (0.05, 0.1, 0.39, 0.4, 0.9)] == [
        "low",
        "medium",
        "medium",
        "high",
        "high",
    ]
    assert CommandSpec.from_dict(json.loads(json.dumps(SPEC.to_dict()))) == SPEC
    assert count_words("  a  cozy\treading nook ") == 4
    assert normalize_text(" a \n b ") == "a b"


def _write_bundle(tmp_path: Path) -> Path:
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "model.onnx").write_bytes(b"not really onnx")
    manifest = Manifest(
        name="test",
        model=ModelInfo("gpt2", 2, 2, 64, 300, 128, 299),
        tokenizer_file="tokenizer.json",
        tokenizer_sha256=sha256_file(tmp_path / "tokenizer.json"),
        command=SPEC,
        variants=[
            Variant(
                "fp32",
                "model.onnx",
                "float32",
                "float32",
                "CPUExecutionProvider",
                17,
                sha256_file(tmp_path / "model.onnx"),
                ["input_ids"],
                ["logits"],
            ),
        ],
        generation={"temperature": 0.8},
        provenance={},
    )
    manifest.write(tmp_path)
    return tmp_path


def test_manifest_round_trip_and_refusals(tmp_path: Path) -> None:
    bundle = _write_bundle(tmp_path)
    manifest = load_manifest(bundle)
    assert manifest.command == SPEC
    assert manifest.variant("fp32").opset == 17
    with pytest.raises(BundleError, match="no variant 'int8'"):
        manifest.variant("int8")

    (bundle / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="model.onnx has sha256"):
        load_manifest(bundle)

    data = json.loads((bundle / "manifest.json").read_text())
    data["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        load_manifest(bundle)

    with pytest.raises(BundleError, match="has no manifest.json"):
        load_manifest(tmp_path / "nowhere")


def test_format_1_manifest_is_read_with_the_gpt2_kv_shape(tmp_path: Path) -> None:
    """Format 2 names the KV cache's shape; a format 1 bundle (no n_kv_head, head_dim) still loads.
    Format 3 names each variant's KV cache kind; older bundles' graphs all concatenate."""
    bundle = _write_bundle(tmp_path)
    data = json.loads((bundle / "manifest.json").read_text())
    assert data["format_version"] == 5 and data["model"]["n_kv_head"] == 2 and data["model"]["head_dim"] == 32
    data["format_version"] = 1
    del data["model"]["n_kv_head"], data["model"]["head_dim"]
    for variant in data["variants"]:
        del variant["kv_cache"]
    (bundle / "manifest.json").write_text(json.dumps(data))
    assert all(v.kv_cache == "concat" for v in load_manifest(bundle).variants)
    model = load_manifest(bundle).model
    assert (model.n_kv_head, model.head_dim) == (model.n_head, model.n_embd // model.n_head)
    # grouped-query attention: fewer key/value heads than query heads, head_dim as given
    assert ModelInfo("llama", 2, 8, 256, 300, 128, 299, n_kv_head=2, head_dim=32).n_kv_head == 2


def test_generation_defaults_come_from_the_manifest_with_one_fallback(tmp_path: Path) -> None:
    manifest = load_manifest(_write_bundle(tmp_path))
    defaults = manifest.defaults
    assert defaults.temperature == 0.8 and defaults == GenerationDefaults(temperature=0.8)
    assert GenerationDefaults.from_dict({"top_p": "0.5", "unknown_knob": 1}).top_p == 0.5
    with pytest.raises(BundleError, match="generation defaults are malformed"):
        GenerationDefaults.from_dict({"max_new_tokens": "many"})
