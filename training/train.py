"""`python -m training train`: fit the UDRL student on the scored teacher samples.

One run: fit the command vocabulary (relevance tertiles on the train split), build the
tokenizer (compact GPT-2 for a preset; the pretrained model's own for `--init`, see
training/model.py), then AdamW with
warmup and cosine decay, gradient clipping, length-bucketed batches, loss on the
output only, until the step or wall-clock budget is spent. The schedule decays on
whichever budget is further along, so a time-boxed run still completes its decay.

Resumable: `train_state.pt` (model, optimizer, RNG, position in the data) is written
atomically every `--save-every` seconds; `--resume` continues from it after a kill.
Data parallel: under `torchrun` (RANK/WORLD_SIZE set) each rank trains on its share of
every epoch's batches through DistributedDataParallel; no flag needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm
from transformers import PreTrainedModel

from contract.command import (
    COMMAND_FORMATS,
    COPY_SLOTS,
    EOS_TOKEN,
    OUTPUT_POSITION,
    PLAIN_OUTPUT_POSITION,
    PLAIN_WORDS,
    SPECIAL_TOKENS,
    CommandSpec,
)
from contract.positions import COUNTDOWN, POSITION_SCHEMES, check_fits, countdown
from training.checkpoint import DEFAULT_GENERATION, Checkpoint, save_checkpoint
from training.examples import (
    IGNORE_INDEX,
    Example,
    collate,
    encode_example,
    epoch_examples,
    fit_command_spec,
    length_bucketed_batches,
)
from training.loss import OutputLoss
from training.model import (
    GGUF_CACHE,
    PRESETS,
    build_model,
    context_length,
    fit_vocabulary,
    freeze_bottom,
    load_pretrained,
)
from training.precision import AUTO, PRECISIONS, autocast_for
from training.tokenizer import add_command_tokens, compact_gpt2_tokenizer

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
STUDENT_TEMPERATURE = 0.3  # the sampling temperature the checkpoint recommends to the server


@dataclass
class TrainConfig:
    preset: str = "tiny"
    init: str | None = None  # pretrained GPT-2 or Llama-family model: GGUF file, local folder or hub id
    # How the model reads its command (contract.command): None picks plain words for a
    # pretrained model (it already reads words; new special tokens taught it nothing in
    # 10 minutes) and special tokens for a model trained from scratch.
    command_format: str | None = None
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0  # a few epochs at most in the CPU budget: underfitting, not overfitting, is the risk
    # Share of examples with swapped intent words (examples.py). Off by default: at the CPU
    # budget it cost more than it gave (bench/training.md: unseen ratio 0.42 with 0.3, 0.55 without).
    copy_share: float = 0.0
    # Intent words the output can point at with copy tokens (contract/copy.py); 0: plain BPE only.
    copy_slots: int = COPY_SLOTS
    # Where outputs start, whatever the prompt's length (contract.command.position_offset); 0: from
    # the prompt's end; -1: the command format's default (OUTPUT_POSITION, PLAIN_OUTPUT_POSITION).
    output_position: int = -1
    # How output tokens are numbered from there (contract/positions.py): "" picks countdown, for
    # every student: it stops at the asked length on long outputs. A rotary (Llama-family) model
    # reads it too, as the distance from the prompt shrinking word by word: SmolLM2 in 10 CPU
    # minutes, 39% of lengths within +/-2 words counting up, 99.8% counting down (bench/pretrained.md).
    positions: str = ""
    max_words: int = 48
    # Arithmetic of the forward (training/precision.py): "auto" is bf16 autocast on a GPU, and on a
    # CPU with native bf16 for a pretrained student only, where it measured faster (bench/pretrained.md).
    precision: str = AUTO
    # A pretrained student only: freeze its embeddings and this many bottom blocks (0: train all).
    freeze_layers: int = 0
    max_minutes: float = 8.0
    max_steps: int = 0  # 0: no step limit, the wall-clock budget decides
    seed: int = 1337
    save_every: float = 60.0  # seconds between resumable snapshots
    log_every: int = 10


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; a plain `python -m` run is rank 0 of 1."""
    env = os.environ
    dist = Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def read_records(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    needed = ("task", "intent", "output", "split", "words", "relevance")
    missing = [k for k in needed if records and k not in records[0]]
    if missing:
        raise ValueError(f"{path} lacks fields {missing}: run `python -m training score` first")
    return records


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def command_format(config: TrainConfig) -> str:
    return config.command_format or (PLAIN_WORDS if config.init else SPECIAL_TOKENS)


def position_scheme(config: TrainConfig) -> str:
    return config.positions or COUNTDOWN


def output_position(config: TrainConfig) -> int:
    if config.output_position >= 0:
        return config.output_position
    return PLAIN_OUTPUT_POSITION if command_format(config) == PLAIN_WORDS else OUTPUT_POSITION


def build_student(
    config: TrainConfig, spec: CommandSpec, train: list[dict[str, Any]], out: Path, tokenizer: Tokenizer | None
) -> tuple[PreTrainedModel, Tokenizer]:
    """The model and its tokenizer with the command tokens (`tokenizer`: a snapshot's, on resume).
    Pretrained weights keep their own tokenizer; a model from scratch gets the compact vocabulary."""
    if config.init:
        model, base = load_pretrained(config.init, out / GGUF_CACHE)
        tokenizer = tokenizer or add_command_tokens(base, spec.special_tokens())
        model = fit_vocabulary(model, tokenizer)
        if config.freeze_layers:
            freeze_bottom(model, config.freeze_layers)
        return model, tokenizer
    if tokenizer is None:
        base = compact_gpt2_tokenizer(r[k] for r in train for k in ("intent", "output"))
        tokenizer = add_command_tokens(base, spec.special_tokens())
    eos = tokenizer.token_to_id(EOS_TOKEN)
    drop = {"resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout}
    return build_model(config.preset, tokenizer.get_vocab_size(), eos, **drop), tokenizer


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on the matrices only. Not on the embeddings: the rows of
    tokens the corpus never uses (the pieces an unseen word splits into) would decay
    towards zero, and the tied output layer could then never emit them."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 and ".wte." not in name and ".wpe." not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=torch.cuda.is_available())


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warmup over steps, times a cosine from lr to min_lr over the budget's progress."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * warmup * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


def rank_batches(
    config: TrainConfig,
    tokenizer: Tokenizer,
    spec: CommandSpec,
    records: list[dict[str, Any]],
    epoch: int,
    max_len: int,
    dist: Dist,
) -> tuple[list[Example], list[list[int]]]:
    """An epoch's examples and this rank's share of its length-bucketed batches (indices
    into the examples). Seeded by the epoch, so a resumed run rebuilds the same ones."""
    examples = epoch_examples(tokenizer, spec, records, config.copy_share, config.seed + epoch, max_len)
    batches = length_bucketed_batches([len(e.ids) for e in examples], config.batch_size, config.seed + epoch)
    per_rank = len(batches) // dist.world  # equal counts, or DDP ranks would wait on each other forever
    return examples, batches[dist.rank :: dist.world][:per_rank]


def budget_progress(config: TrainConfig, step: int, elapsed: float) -> float:
    by_steps = step / config.max_steps if config.max_steps else 0.0
    by_time = elapsed / (config.max_minutes * 60.0) if config.max_minutes > 0 else 0.0
    return max(by_steps, by_time)


def optimizer_step(
    loss: torch.Tensor,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float,
) -> None:
    """Backward, clip the gradient norm, step; through the loss scaler under fp16."""
    optimizer.zero_grad(set_to_none=True)
    if scaler:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def keep_log_until(path: Path, step: int) -> None:
    """Drop the log entries after `step` and a line torn by a kill. A killed run logs the
    steps it trained after its last snapshot; the resumed run trains and logs them again,
    so without this they would appear twice."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    kept = []
    for line in lines:
        try:
            if line.endswith("\n") and json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


def load_state(path: Path) -> dict[str, Any]:
    """The snapshot, unpickled with weights_only: tensors and plain containers only. A file
    that names any other object (which unpickling would run) is refused (issue 12)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path} holds objects other than tensors: refused; delete it to start afresh") from None


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-write leaves the previous snapshot


@torch.no_grad()
def mean_loss(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    spec: CommandSpec,
    records: list[dict[str, Any]],
    device: torch.device,
    autocast: Any = None,
) -> float:
    """Loss on output tokens of held-out records (no augmentation), up to 1,024 of them,
    in the training's arithmetic (`autocast`)."""
    if not records:
        return float("nan")
    model.eval()
    pad = tokenizer.token_to_id(EOS_TOKEN)
    max_len = context_length(model)
    counter = countdown(spec, tokenizer)
    examples = [e for e in (encode_example(tokenizer, spec, counter, r) for r in records[:1024]) if e.span <= max_len]
    loss_of, total, count = OutputLoss(model), 0.0, 0
    for start in range(0, len(examples), 64):
        ids, mask, labels, positions = (
            torch.from_numpy(a).to(device) for a in collate(examples[start : start + 64], pad)
        )
        n = int((labels[:, 1:] != IGNORE_INDEX).sum())
        with autocast or nullcontext():
            total += float(loss_of(ids, mask, positions, labels)) * n
        count += n
    model.train()
    return total / max(1, count)


def train(config: TrainConfig, data: Path, out: Path, resume: bool = False) -> Path:
    """Train and write the checkpoint to `out`; returns `out`."""
    if config.max_steps <= 0 and config.max_minutes <= 0:
        raise ValueError("give a budget: --max-minutes or --max-steps must be positive")
    dist, device = setup_distributed()
    records = read_records(data)
    train_records = [r for r in records if r["split"] == "train"]
    val_records = [r for r in records if r["split"] == "val"]
    if not train_records:
        raise ValueError(f"{data} has no records with split 'train'")
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    state = load_state(state_path) if resume and state_path.is_file() else None
    if resume and state is None and dist.main:
        print(f"no {STATE_FILE} in {out}: starting afresh", file=sys.stderr)

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    if state:
        # The vocabulary and bucket edges are part of what the snapshot's weights mean.
        spec = CommandSpec.from_dict(state["command"])
        saved: Tokenizer | None = Tokenizer.from_str(state["tokenizer"])
    else:
        spec = fit_command_spec(
            train_records,
            config.max_words,
            config.copy_slots,
            output_position(config),
            command_format(config),
            position_scheme(config),
        )
        saved = None
    model, tokenizer = build_student(config, spec, train_records, out, saved)
    check_fits(spec, context_length(model))
    model = model.to(device)
    optimizer = make_optimizer(model, config)
    step, epoch, batch_in_epoch, elapsed, tokens_seen = 0, 0, 0, 0.0, 0
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        elapsed, tokens_seen = state["elapsed"], state["tokens_seen"]
        torch.set_rng_state(state["torch_rng"])
    model.train()
    loss_of: torch.nn.Module = OutputLoss(model)
    if dist.world > 1:
        loss_of = torch.nn.parallel.DistributedDataParallel(loss_of)
    autocast, scaler = autocast_for(device, config.precision, cpu_bf16_wins=config.init is not None)
    pad = tokenizer.token_to_id(EOS_TOKEN)
    max_len = context_length(model)

    def snapshot() -> None:
        if dist.main:
            save_state(
                state_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_in_epoch,
                    "elapsed": elapsed,
                    "tokens_seen": tokens_seen,
                    "torch_rng": torch.get_rng_state(),
                    "command": spec.to_dict(),
                    "tokenizer": tokenizer.to_str(),
                    "config": asdict(config),
                },
            )

    n_params = sum(p.numel() for p in model.parameters())
    if dist.main:
        print(
            f"{len(train_records)} train / {len(val_records)} val records, vocab {tokenizer.get_vocab_size()}, "
            f"{n_params / 1e6:.1f}M parameters, device {device}, world {dist.world}"
            + (f", resuming at step {step}" if state else "")
        )
    if dist.main and state:
        keep_log_until(out / LOG_FILE, step)  # a resumed run appends, after its snapshot's last step
    elif dist.main:
        (out / LOG_FILE).write_text("")  # a fresh run starts a fresh log
    bar = tqdm(total=config.max_steps or None, initial=step, desc="train", unit="step", disable=not dist.main)
    run_start, last_save = time.perf_counter() - elapsed, time.perf_counter()
    window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
    done = budget_progress(config, step, elapsed) >= 1.0
    batches: list[list[int]] | None = None
    while not done:
        examples, batches = rank_batches(config, tokenizer, spec, train_records, epoch, max_len, dist)
        while batch_in_epoch < len(batches):
            progress = budget_progress(config, step, elapsed)
            if progress >= 1.0:
                done = True
                break
            lr = learning_rate(config, step, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = [examples[i] for i in batches[batch_in_epoch]]
            ids, mask, labels, positions = (torch.from_numpy(a).to(device) for a in collate(batch, pad))
            with autocast:
                loss = loss_of(ids, mask, positions, labels)
            optimizer_step(loss, model, optimizer, scaler, config.grad_clip)
            step += 1
            batch_in_epoch += 1
            batch_tokens = int(mask.sum()) * dist.world
            tokens_seen += batch_tokens
            window_loss += loss.item()
            window_steps += 1
            window_tokens += batch_tokens
            elapsed = time.perf_counter() - run_start
            if dist.world > 1:  # every rank must stop at the same step: agree on the slowest clock
                clock = torch.tensor([elapsed], device=device)
                torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
                elapsed = float(clock)
            bar.update(1)
            if not config.max_steps and progress > 0.02:
                bar.total = int(step / budget_progress(config, step, elapsed))  # an ETA for a time budget
            if step % config.log_every == 0 or budget_progress(config, step, elapsed) >= 1.0:
                seconds = time.perf_counter() - window_start
                entry = {
                    "step": step,
                    "epoch": epoch,
                    "loss": round(window_loss / window_steps, 5),
                    "lr": lr,
                    "tokens_per_s": round(window_tokens / max(seconds, 1e-9), 1),
                    "elapsed_s": round(elapsed, 1),
                }
                if dist.main:
                    with open(out / LOG_FILE, "a", encoding="utf-8") as log:
                        log.write(json.dumps(entry) + "\n")
                bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{entry['tokens_per_s']:.0f}")
                window_loss, window_steps, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
            if time.perf_counter() - last_save >= config.save_every:
                snapshot()
                last_save = time.perf_counter()
        if not done:
            epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    snapshot()
    if batches is None:  # resumed with the budget already spent (killed while saving): not one step ran
        _, batches = rank_batches(config, tokenizer, spec, train_records, epoch, max_len, dist)
    if dist.main:
        model.eval()
        val_loss = mean_loss(model, tokenizer, spec, val_records, device, autocast)
        teachers = sorted({json.dumps(r.get("teacher", "unknown"), sort_keys=True) for r in records})
        provenance = {
            "dataset": {"file": str(data), "sha256": sha256_of(data), "records": len(records)},
            "teacher": [json.loads(t) for t in teachers],
            "training": {
                "config": asdict(config),
                "steps": step,
                "epochs": epoch + batch_in_epoch / max(1, len(batches)),
                "tokens_seen": tokens_seen,
                "tokens_per_s": round(tokens_seen / max(elapsed, 1e-9), 1),
                "wall_s": round(elapsed, 1),
                "val_loss": round(val_loss, 5),
                "parameters": n_params,
                "device": str(device),
                "world_size": dist.world,
            },
        }
        generation = dict(
            DEFAULT_GENERATION,
            # A tiny student sampled at 0.8 wanders off the intent; at 0.3 its relevance rose by a
            # third and its diversity matched the teacher's (bench/training.md).
            temperature=STUDENT_TEMPERATURE,
            max_new_tokens=min(DEFAULT_GENERATION["max_new_tokens"], max_len - 32),
        )
        save_checkpoint(Checkpoint(model.cpu(), tokenizer, spec, generation, provenance), out)
        print(f"step {step}, val loss {val_loss:.4f}, {provenance['training']['tokens_per_s']:.0f} tokens/s -> {out}")
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return out


def run(args: argparse.Namespace) -> int:
    data, out = Path(args.data), Path(args.out)
    if not data.is_file():
        print(f"error: no scored data at {data} (run `python -m training score` first)", file=sys.stderr)
        return 2
    if args.preset not in PRESETS:
        print(f"error: unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}", file=sys.stderr)
        return 2
    if getattr(args, "freeze_layers", 0) and not getattr(args, "init", None):
        print(
            "error: --freeze-layers is for a pretrained student (--init): a model from scratch has nothing to keep",
            file=sys.stderr,
        )
        return 2
    fields = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__ if hasattr(args, f)}
    try:
        train(TrainConfig(**fields), data, out, resume=args.resume)
    except (ValueError, OSError) as e:  # OSError: an --init folder or hub id that cannot be loaded
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser("train", help="train the UDRL student on scored samples")
    parser.add_argument("--data", default="artifacts/data/scored.jsonl", help="scored records (training.score)")
    parser.add_argument("--out", default="artifacts/checkpoint", help="checkpoint directory")
    parser.add_argument("--preset", default=defaults.preset, help=f"model size from config: {sorted(PRESETS)}")
    parser.add_argument(
        "--init", default=None, help="pretrained GPT-2 or Llama-family LM: a .gguf file, a local folder or a hub id"
    )
    parser.add_argument(
        "--command-format",
        choices=COMMAND_FORMATS,
        default=None,
        help="how the command is written (default: plain_words with --init, special_tokens otherwise)",
    )
    parser.add_argument("--max-minutes", type=float, default=defaults.max_minutes, help="wall-clock budget")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="step budget (0: none)")
    parser.add_argument("--resume", action="store_true", help=f"continue from {STATE_FILE} in --out")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--dropout", type=float, default=defaults.dropout)
    parser.add_argument("--copy-share", type=float, default=defaults.copy_share, help="copy-augmented share")
    parser.add_argument(
        "--copy-slots", type=int, default=defaults.copy_slots, help="intent words copy tokens can point at (0: off)"
    )
    parser.add_argument(
        "--output-position",
        type=int,
        default=defaults.output_position,
        help="the position outputs start at, whatever the prompt's length (0: right after the prompt; "
        f"default {OUTPUT_POSITION}, {PLAIN_OUTPUT_POSITION} for a plain-words command)",
    )
    parser.add_argument(
        "--positions",
        choices=POSITION_SCHEMES,
        default=defaults.positions,
        help="output positions: count down the words left (default) or up from the output position",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults.precision,
        help="forward arithmetic: auto = bf16 on a GPU, and on a bf16 CPU for a pretrained student",
    )
    parser.add_argument(
        "--freeze-layers",
        type=int,
        default=defaults.freeze_layers,
        help="pretrained only: freeze the embeddings and this many bottom blocks (0: train every weight)",
    )
    parser.add_argument("--max-words", type=int, default=defaults.max_words, help="longest length command")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--save-every", type=float, default=defaults.save_every, help="seconds between snapshots")
    parser.set_defaults(func=run)
