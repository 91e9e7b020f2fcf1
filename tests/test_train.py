"""Training: a few steps lower the loss; a killed run resumes to the same end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy_records import write_toy_scored

from training.checkpoint import load_checkpoint
from training.train import LOG_FILE, STATE_FILE, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
# Small enough for seconds on 2 cores; the time budget is off so runs are step-exact.
FAST = {"batch_size": 16, "warmup_steps": 5, "max_minutes": 0.0, "log_every": 1}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_scored(tmp_path_factory.mktemp("data") / "scored.jsonl")


def log_entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


def test_training_lowers_the_loss_and_writes_a_checkpoint(scored: Path, tmp_path: Path) -> None:
    out = train(TrainConfig(max_steps=40, **FAST), scored, tmp_path / "ck")
    losses = [e["loss"] for e in log_entries(out)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    lrs = [e["lr"] for e in log_entries(out)]
    assert lrs[0] < lrs[4] and lrs[-1] < lrs[5]  # warmup, then cosine decay
    checkpoint = load_checkpoint(out)
    training = checkpoint.provenance["training"]
    assert training["steps"] == 40 and training["tokens_per_s"] > 0
    assert checkpoint.provenance["dataset"]["sha256"]
    assert checkpoint.provenance["teacher"] == ["toy"]
    assert set(checkpoint.command.tasks) == {"t2i_prompt", "search_queries", "title"}
    # The compact vocabulary, not GPT-2's 50k rows: the default preset must not pay the full LM head.
    assert checkpoint.model.config.vocab_size < 5_000


def test_killed_run_resumes_to_the_same_step_and_loss(scored: Path, tmp_path: Path) -> None:
    steps = 30
    reference = train(TrainConfig(max_steps=steps, **FAST), scored, tmp_path / "reference")

    killed = tmp_path / "killed"
    config = {"max_steps": steps, "save_every": 0.0, **FAST}  # snapshot after every step
    code = (
        "from pathlib import Path; from training.train import TrainConfig, train; "
        f"train(TrainConfig(**{config!r}), Path({str(scored)!r}), Path({str(killed)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (killed / LOG_FILE).is_file() and len((killed / LOG_FILE).read_text().splitlines()) >= steps // 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, f"training ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (killed / STATE_FILE).is_file() and not (killed / "config.json").exists()

    train(TrainConfig(**config), scored, killed, resume=True)
    resumed_training = load_checkpoint(killed).provenance["training"]
    reference_training = load_checkpoint(reference).provenance["training"]
    assert resumed_training["steps"] == steps
    assert resumed_training["val_loss"] == pytest.approx(reference_training["val_loss"], rel=0.02)
    final = [e for e in log_entries(killed) if e["step"] == steps]
    assert final and final[-1]["loss"] == pytest.approx(log_entries(reference)[-1]["loss"], rel=0.02)


def test_bad_input_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from argparse import Namespace

    from training.train import run

    args = Namespace(data=str(tmp_path / "missing.jsonl"), out=str(tmp_path / "ck"), preset="tiny", resume=False)
    assert run(args) == 2
    assert "no scored data" in capsys.readouterr().err
    (tmp_path / "raw.jsonl").write_text(json.dumps({"task": "title", "intent": "x", "output": "y"}) + "\n")
    assert run(Namespace(**{**vars(args), "data": str(tmp_path / "raw.jsonl")})) == 2
    assert "training score" in capsys.readouterr().err


def test_init_from_pretrained_folder_uses_full_gpt2_vocabulary(scored: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    pretrained = tmp_path / "pretrained"
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=128, vocab_size=50257)
    GPT2LMHeadModel(config).save_pretrained(pretrained)
    out = train(TrainConfig(init=str(pretrained), max_steps=3, **FAST), scored, tmp_path / "ck")
    checkpoint = load_checkpoint(out)
    # GPT-2's own ids, then the command tokens appended: the embedding was resized for them.
    assert checkpoint.model.config.vocab_size == 50257 + len(checkpoint.command.special_tokens())
    assert checkpoint.tokenizer.token_to_id("<|endoftext|>") == 50256
    assert checkpoint.model.config.n_layer == 1  # the pretrained architecture, not a preset
