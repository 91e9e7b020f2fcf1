"""Training: a few steps lower the loss; `python -m training train` killed with -9 at a
random step, or while saving, then run again, ends with the very checkpoint an
uninterrupted run writes (issue 12)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_records import write_toy_scored

from training.checkpoint import UDRL_FILE, load_checkpoint
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


STEPS = 30


def train_command(data: Path, out: Path) -> list[str]:
    """The real CLI, with --resume: the same command starts afresh and, after a kill, resumes."""
    budget = ["--max-steps", str(STEPS), "--max-minutes", "0", "--batch-size", "16", "--warmup-steps", "5"]
    return [sys.executable, "-m", "training", "train", "--data", str(data), "--out", str(out), "--resume"] + [
        *budget,
        "--save-every",
        "0",  # a snapshot after every step: a kill loses at most the step in progress
    ]


# The kill tests compare checkpoints bit for bit, so what they compare must be the resume logic,
# not the BLAS's rounding: one thread, and MKL's reproducible mode (its results do not depend on
# how threads or buffers fall). With two threads, one resumed run in ~45 (under a busy CPU)
# ended ~1e-5 off in a bias: same snapshot, same command, and two more resumes from that snapshot
# matched the uninterrupted run exactly.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "AUTO", "MKL_DYNAMIC": "FALSE"}
REPRODUCIBLE = {**os.environ, **ONE_THREAD}


def run_train(data: Path, out: Path) -> None:
    result = subprocess.run(
        train_command(data, out), cwd=ROOT, capture_output=True, text=True, timeout=600, env=REPRODUCIBLE
    )
    assert result.returncode == 0, result.stderr[-2000:]


def snapshot_step(out: Path) -> int:
    try:  # the snapshot is replaced by a rename, so it is never read half-written
        return int(torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)["step"])
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(scored: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "ck"
    run_train(scored, out)
    return out


def assert_same_checkpoint(out: Path, reference: Path) -> None:
    """Bit for bit the same weights, the same validation loss, each logged step once."""
    weights, expected = load_file(out / "model.safetensors"), load_file(reference / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    training, expected_training = (load_checkpoint(p).provenance["training"] for p in (out, reference))
    assert training["steps"] == STEPS
    assert (training["val_loss"], training["epochs"]) == (expected_training["val_loss"], expected_training["epochs"])
    assert [e["step"] for e in log_entries(out)] == [e["step"] for e in log_entries(reference)]


# two moments drawn once (seeded, so a failure can be re-run): after step 1..STEPS-2
@pytest.mark.parametrize("kill_at", sorted(random.Random(7).sample(range(1, STEPS - 1), 2)))
def test_train_killed_at_a_random_step_resumes_to_the_same_checkpoint(
    scored: Path, uninterrupted: Path, tmp_path: Path, kill_at: int
) -> None:
    out = tmp_path / "ck"
    process = subprocess.Popen(
        train_command(scored, out),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=REPRODUCIBLE,
    )
    deadline = time.monotonic() + 300
    while snapshot_step(out) < kill_at:
        assert process.poll() is None, f"training ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (out / UDRL_FILE).exists()  # no checkpoint yet, so nothing downstream takes a half-trained one
    run_train(scored, out)
    assert_same_checkpoint(out, uninterrupted)


def test_train_killed_while_saving_the_checkpoint_resumes_to_the_same_one(
    scored: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    """The final save, too short to aim a signal at, left as a kill there leaves it:
    udrl.json already removed (training/checkpoint.py), the weights file torn."""
    out = tmp_path / "ck"
    shutil.copytree(uninterrupted, out)
    (out / UDRL_FILE).unlink()
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    run_train(scored, out)
    assert_same_checkpoint(out, uninterrupted)


class RunsCode:
    """Pickled, it names a function that unpickling would call: what a planted file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_snapshot_holding_pickled_code_is_refused_unrun(scored: Path, tmp_path: Path) -> None:
    out, marker = tmp_path / "ck", tmp_path / "it-ran"
    out.mkdir()
    torch.save({"step": RunsCode(marker)}, out / STATE_FILE)
    result = subprocess.run(train_command(scored, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {out / STATE_FILE} holds objects other than tensors" in result.stderr
    assert not marker.exists()  # refused before anything in it ran


def test_a_pickled_init_model_is_refused(scored: Path, tmp_path: Path) -> None:
    """Only safetensors weights are loaded: a folder with just a pickled pytorch_model.bin is refused."""
    from transformers import GPT2Config, GPT2LMHeadModel

    pickled = tmp_path / "pickled"
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=128))
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the pickle format save_pretrained no longer writes
    command = [*train_command(scored, tmp_path / "ck"), "--init", str(pickled)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "error:" in result.stderr, result.stderr[-2000:]


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


def test_freeze_layers_trains_only_the_top_of_a_pretrained_student(
    scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from argparse import Namespace

    from transformers import GPT2Config, GPT2LMHeadModel

    from training.train import run

    pretrained = tmp_path / "pretrained"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128)).save_pretrained(pretrained)
    before = load_file(pretrained / "model.safetensors")
    out = train(TrainConfig(init=str(pretrained), max_steps=3, freeze_layers=1, **FAST), scored, tmp_path / "ck")
    after = load_file(out / "model.safetensors")
    for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.weight", "transformer.wpe.weight"):
        assert torch.equal(before[name], after[name]), name  # frozen
    assert torch.equal(
        before["transformer.wte.weight"], after["transformer.wte.weight"][: before["transformer.wte.weight"].shape[0]]
    )
    assert not torch.equal(before["transformer.h.1.mlp.c_fc.weight"], after["transformer.h.1.mlp.c_fc.weight"])

    with pytest.raises(ValueError, match="between 1 and 1"):
        train(TrainConfig(init=str(pretrained), max_steps=1, freeze_layers=2, **FAST), scored, tmp_path / "ck2")
    args = Namespace(
        data=str(scored), out=str(tmp_path / "ck3"), preset="tiny", resume=False, freeze_layers=2, init=None
    )
    assert run(args) == 2
    assert "pretrained student" in capsys.readouterr().err
