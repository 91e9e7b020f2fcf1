"""`python -m training eval`: does the student obey its commands, and how does it
compare with its teacher?

For intents of the test split (never seen in training) and, reported separately, a
sample of training intents, for every task and a grid of commands (several lengths x
each relevance level), draw n samples per command through one decoding loop over a
runner (the PyTorch checkpoint, or an exported ONNX variant), and measure:
- length adherence: mean absolute error in words, share within +/-2 words and +/-20%;
- relevance achieved per requested level (it must rise with the level);
- student/teacher relevance ratio at the top level (teacher = the data's own outputs
  for the same task and intents that reached the top level);
- diversity of the n samples of one command (mean pairwise cosine distance, distinct-2),
  student vs teacher;
- intent copy rate (does the output carry every content word of the intent?): the
  behaviour that decides relevance on unseen intents;
- share of invalid or empty outputs.
Writes report.json, summary.md and PNG plots to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from contract.command import (
    EOS_TOKEN,
    RELEVANCE_LEVELS,
    CommandSpec,
    count_words,
    normalize_text,
    prompt_ids,
)
from contract.copy import copy_table, intent_words
from contract.manifest import GenerationDefaults
from contract.positions import context_room, countdown, position_offset
from runtime.decode import NonFiniteLogits, generate
from runtime.runner import Runner
from runtime.sampler import SamplingParams, command_token_ids, make_generator
from training.examples import STOP_WORDS
from training.intents.realistic import key_words, load_realistic_eval
from training.rewards import Embedder, distinct_n

SPLITS = {"unseen": "test", "train": "train"}  # report name -> data split
REALISTIC = "realistic"  # report name of the hand-written realistic set (training/intents/realistic.py)
# What text decoded from broken byte pieces looks like: the replacement character, or UTF-8
# read as Latin-1 (mojibake such as "cafÃ©", "â€™").
_BROKEN_TEXT = re.compile("\ufffd|Ã[\u0080-\u00bf]|â€")


@dataclass
class Model:
    """What evaluation needs of a model, whichever format it comes in."""

    runner: Runner
    tokenizer: Any  # tokenizers.Tokenizer
    spec: CommandSpec
    generation: GenerationDefaults
    n_positions: int
    description: dict[str, Any]


@dataclass
class Sample:
    split: str
    task: str
    intent: str
    length: int
    level: str
    request: int  # index of the command request: the n samples of one request share it
    text: str = ""
    words: int = 0
    relevance: float = 0.0
    invalid: bool = False


def load_model(checkpoint: Path | None, bundle: Path | None, variant: str) -> Model:
    if bundle is not None:
        from contract.manifest import load_manifest
        from runtime.onnx_runner import OnnxRunner
        from training.tokenizer import load_tokenizer

        manifest = load_manifest(bundle)
        return Model(
            runner=OnnxRunner(bundle, variant),
            tokenizer=load_tokenizer(bundle / manifest.tokenizer_file),
            spec=manifest.command,
            generation=manifest.defaults,
            n_positions=manifest.model.n_positions,
            description={"format": "onnx", "bundle": str(bundle), "variant": variant},
        )
    from training.checkpoint import load_checkpoint
    from training.torch_runner import TorchRunner

    assert checkpoint is not None, "load_model needs a checkpoint or a bundle"
    loaded = load_checkpoint(checkpoint)
    return Model(
        runner=TorchRunner(loaded.model),
        tokenizer=loaded.tokenizer,
        spec=loaded.command,
        generation=GenerationDefaults.from_dict(loaded.generation),
        n_positions=loaded.model.config.n_positions,
        description={"format": "pytorch", "checkpoint": str(checkpoint)},
    )


def content_words(text: str) -> set[str]:
    return {w for w in normalize_text(text).lower().replace(",", " ").split() if w not in STOP_WORDS}


def copies_intent(intent: str, output: str) -> bool:
    """Every content word of the intent appears in the output (as a word or a word's start)."""
    words = output.lower().replace(",", " ").split()
    return all(any(w.startswith(c) for w in words) for c in content_words(intent))


def broken_text(text: str) -> bool:
    return bool(_BROKEN_TEXT.search(text))


def hard_words(intent: str, known: set[str]) -> list[str]:
    """The intent's words a model cannot write from memory: proper nouns, capitalised,
    accented or numbered words (realistic.key_words), and words the training data never had."""
    words = [w for w in intent_words(intent) if w]
    return list(dict.fromkeys(key_words(intent) + [w for w in words if w.lower() not in known]))


def carries_words(words: Sequence[str], output: str) -> bool:
    """Every word appears intact in the output: as typed, or capitalised (a title)."""
    written = set(intent_words(output))
    return all(w in written or (w[:1].upper() + w[1:]) in written for w in words)


def grid_lengths(spec: CommandSpec, train: Sequence[dict[str, Any]], task: str) -> list[int]:
    """Short, typical and long for this task: the 15th, 50th and 85th percentile of its
    training outputs' word counts, so every command in the grid is one the data taught."""
    counts = [r["words"] for r in train if r["task"] == task]
    values = np.percentile(counts, [15, 50, 85]) if counts else list(spec.length_range(task))
    return sorted({spec.clamp_words(round(float(v)), task) for v in values})


def spread(items: Sequence[str], count: int) -> list[str]:
    """`count` items spread evenly over `items` (all of them when count >= len)."""
    if count >= len(items):
        return list(items)
    return [items[int(i * len(items) / count)] for i in range(max(count, 0))]


def pick_intents(records: Sequence[dict[str, Any]], split: str, task: str, count: int, seed: int) -> list[str]:
    intents = sorted({r["intent"] for r in records if r["split"] == split and r["task"] == task})
    random.Random(f"{seed}-{split}-{task}").shuffle(intents)
    return intents[:count]


def run_samples(model: Model, samples: list[Sample], n: int, batch_size: int, seed: int) -> None:
    """Fill in every sample's text: prompts sorted by length so batches pad little. Copy
    tokens are banned and expanded per intent exactly as the server does (contract/copy.py)."""
    eos = model.tokenizer.token_to_id(EOS_TOKEN)
    command_ids = {model.tokenizer.token_to_id(t) for t in model.spec.input_tokens()} | {eos}
    prompts = [
        prompt_ids(model.tokenizer, model.spec, s.task, s.length, s.level, s.intent) for s in samples[::n]
    ]  # one prompt per request, decoded n times
    copies = [copy_table(model.tokenizer, s.intent, model.spec.copy_slots) for s in samples[::n]]
    order = sorted(range(len(samples)), key=lambda i: len(prompts[i // n]))
    defaults = model.generation
    params = SamplingParams(defaults.temperature, defaults.top_p, defaults.top_k)
    never = command_token_ids(model.tokenizer, model.spec)  # as the server bans them
    counter = countdown(model.spec, model.tokenizer)
    for start in tqdm(range(0, len(order), batch_size), desc="generate", unit="batch"):
        chunk = order[start : start + batch_size]
        batch_prompts = [prompts[i // n] for i in chunk]
        budget = min(
            defaults.max_new_tokens,
            min(context_room(model.spec, model.n_positions, len(p)) for p in batch_prompts),
        )
        # Sample j of request r draws from the generator a server request seeded `seed + r`
        # gives its sample j: the same command and seed give the same text in both.
        generators = [make_generator(seed + i // n, i % n) for i in chunk]
        row_never = [copies[i // n].banned for i in chunk]
        offsets = [position_offset(model.spec, len(p)) for p in batch_prompts]
        decoded = generate(
            model.runner,
            batch_prompts,
            budget,
            eos,
            params,
            generators,
            never,
            row_never=row_never,
            offsets=offsets,
            countdown=counter,
            words=[samples[i].length for i in chunk],
        )
        for i, out in zip(chunk, decoded.generations, strict=True):
            ids = copies[i // n].expand(out.ids)
            text = normalize_text(model.tokenizer.decode(ids, skip_special_tokens=True))
            bad_token = any(t in command_ids for t in ids) or any(t in copies[i // n].banned for t in out.ids)
            samples[i].text = text
            samples[i].invalid = not text or not out.finished or bad_token or "\ufffd" in text


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def increasing(values: Sequence[float | None]) -> bool:
    """Strictly rising, and every value measured (a missing level is no evidence)."""
    return all(v is not None for v in values) and all(a < b for a, b in itertools.pairwise(values))  # type: ignore[operator]  # no None: the first all()


def length_metrics(samples: Sequence[Sample]) -> dict[str, float | None]:
    errors = [abs(s.words - s.length) for s in samples]
    return {
        "mae_words": mean(errors),
        "within_2": mean(e <= 2 for e in errors),
        "within_20pct": mean(abs(s.words - s.length) <= 0.2 * s.length for s in samples),
    }


def group_diversity(embedder: Embedder, groups: Iterable[Sequence[str]]) -> dict[str, float | None]:
    groups = [g for g in groups if len(g) >= 2]
    return {
        "cosine_distance": mean(embedder.diversity(g) for g in groups),
        "distinct_2": mean(distinct_n(g, 2) for g in groups),
        "groups": len(groups),
    }


def teacher_groups(teacher: Sequence[dict[str, Any]], n: int, seed: int) -> list[list[str]]:
    """The teacher's counterpart of one command's n samples: up to n of its outputs for
    one intent at one relevance level."""
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in teacher:
        by_key[(record["intent"], record["level"])].append(record["output"])
    rng = random.Random(seed)
    return [rng.sample(outputs, min(n, len(outputs))) for _, outputs in sorted(by_key.items())]


def split_metrics(
    samples: Sequence[Sample],
    teacher: Sequence[dict[str, Any]],
    embedder: Embedder,
    n: int,
    seed: int,
    known: set[str],
) -> dict[str, Any]:
    """Every metric for one split, overall and per task. `known`: the training data's words
    (lower case), to tell which intent words the model never saw."""
    # Length and relevance count every sample, invalid ones included: a broken output is a missed command.
    valid = [s for s in samples if not s.invalid]
    relevance_by_level = {lvl: mean(s.relevance for s in samples if s.level == lvl) for lvl in RELEVANCE_LEVELS}
    teacher_top = mean(r["relevance"] for r in teacher if r["level"] == "high")
    by_length: dict[int, dict[str, float | None]] = {}
    for length in sorted({s.length for s in samples}):
        by_length[length] = {
            lvl: mean(s.relevance for s in samples if s.length == length and s.level == lvl) for lvl in RELEVANCE_LEVELS
        }
    monotonic = {length: increasing(list(v.values())) for length, v in by_length.items()}
    requests: dict[int, list[str]] = defaultdict(list)
    for s in valid:
        requests[s.request].append(s.text)
    high = [s for s in samples if s.level == "high"]
    teacher_high = [r for r in teacher if r["level"] == "high"]
    # only where the command leaves room for the whole intent, as the teacher's high outputs copy it
    hard = [(s, words) for s in high if s.length >= count_words(s.intent) and (words := hard_words(s.intent, known))]
    return {
        "samples": len(samples),
        "intents": len({s.intent for s in samples}),
        "invalid_share": mean(s.invalid for s in samples),
        "broken_text_share": mean(broken_text(s.text) for s in samples),
        # high outputs whose intent has proper nouns, unusual or unseen words: do they come through intact?
        "hard_words_intact_top": {
            "share": mean(carries_words(words, s.text) for s, words in hard),
            "outputs": len(hard),
        },
        "length": length_metrics(samples),
        "relevance_by_level": relevance_by_level,
        "relevance_by_length_and_level": {str(k): v for k, v in by_length.items()},
        "monotonic_by_length": {str(k): v for k, v in monotonic.items()},
        "monotonic": all(monotonic.values()) if monotonic else False,
        "teacher_relevance": {
            "high": teacher_top,
            "all": mean(r["relevance"] for r in teacher),
            "by_level": {lvl: mean(r["relevance"] for r in teacher if r["level"] == lvl) for lvl in RELEVANCE_LEVELS},
        },
        "student_teacher_ratio_top": ratio(relevance_by_level["high"], teacher_top),
        "intent_copy_rate_top": {
            "student": mean(copies_intent(s.intent, s.text) for s in high),
            "teacher": mean(copies_intent(r["intent"], r["output"]) for r in teacher_high),
        },
        "diversity": {
            "student": group_diversity(embedder, requests.values()),
            "teacher": group_diversity(embedder, teacher_groups(teacher, n, seed)),
        },
    }


def evaluate(
    model: Model,
    records: Sequence[dict[str, Any]],
    intents_per_task: int = 8,
    lengths: Sequence[int] | None = None,
    n: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    embedder: Embedder | None = None,
    realistic: Sequence[str] = (),
) -> dict[str, Any]:
    """The full report (a JSON-able dict) for one model on scored records, plus, when
    `realistic` intents are given, a `realistic` split of them (no teacher outputs there:
    its figures are absolute)."""
    spec = model.spec
    train = [r for r in records if r["split"] == "train"]
    samples: list[Sample] = []
    teacher: dict[str, list[dict[str, Any]]] = {}
    plan: dict[str, dict[str, Any]] = {}
    for name, split in SPLITS.items():
        teacher[name] = []
        for task in spec.tasks:
            intents = pick_intents(records, split, task, intents_per_task, seed)
            task_lengths = (
                sorted({spec.clamp_words(x, task) for x in lengths}) if lengths else grid_lengths(spec, train, task)
            )
            plan.setdefault(name, {})[task] = {"intents": intents, "lengths": task_lengths}
            chosen = set(intents)
            teacher[name] += [
                {**r, "level": spec.relevance_level(task, r["relevance"])}
                for r in records
                if r["split"] == split and r["task"] == task and r["intent"] in chosen
            ]
            for intent in intents:
                for length in task_lengths:
                    for level in RELEVANCE_LEVELS:
                        request = len(samples) // n
                        samples += [Sample(name, task, intent, length, level, request) for _ in range(n)]
    if realistic:
        teacher[REALISTIC] = []
        for task in spec.tasks:
            task_lengths = grid_lengths(spec, train, task)
            plan.setdefault(REALISTIC, {})[task] = {"intents": list(realistic), "lengths": task_lengths}
            for intent, length, level in itertools.product(realistic, task_lengths, RELEVANCE_LEVELS):
                request = len(samples) // n
                samples += [Sample(REALISTIC, task, intent, length, level, request) for _ in range(n)]
    if not samples:
        raise ValueError("no intents to evaluate: the data has no test or train records for the model's tasks")
    started = time.perf_counter()
    run_samples(model, samples, n, batch_size, seed)
    generate_s = time.perf_counter() - started
    embedder = embedder or Embedder()
    for s in samples:
        s.words = count_words(s.text)
    scores = embedder.relevance([s.intent for s in samples], [s.text for s in samples])
    for s, score in zip(samples, scores, strict=True):
        s.relevance = float(score)

    report: dict[str, Any] = {
        "model": model.description,
        "settings": {
            "intents_per_task": intents_per_task,
            "samples_per_command": n,
            "seed": seed,
            "generation": model.generation.to_dict(),
            "plan": plan,
        },
        "timing": {"generate_s": round(generate_s, 2), "samples_per_s": round(len(samples) / generate_s, 1)},
        "splits": {},
    }
    known = {w.lower() for r in train for w in intent_words(r["intent"] + " " + r["output"])}
    for name in teacher:
        split_samples = [s for s in samples if s.split == name]
        metrics = split_metrics(split_samples, teacher[name], embedder, n, seed, known)
        metrics["by_task"] = {
            task: split_metrics(
                [s for s in split_samples if s.task == task],
                [r for r in teacher[name] if r["task"] == task],
                embedder,
                n,
                seed,
                known,
            )
            for task in spec.tasks
        }
        report["splits"][name] = metrics
    report["examples"] = [
        {k: getattr(s, k) for k in ("split", "task", "intent", "length", "level", "text", "words", "relevance")}
        for s in samples[:: max(1, len(samples) // (24 * n)) * n][:24]
    ]
    report["points"] = [[s.split, s.task, s.length, s.words, s.level, round(s.relevance, 4)] for s in samples]
    return report


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Evaluation",
        "",
        f"Model: `{json.dumps(report['model'])}`. {report['settings']['samples_per_command']} samples per command; "
        f"generation {report['settings']['generation']}.",
        "",
        "| split | task | intents | within +/-2 | within 20% | MAE words | rel low | rel med | rel high "
        "| teacher high | ratio top | monotonic | copy student/teacher | hard words intact | diversity student/teacher "
        "| invalid | broken text |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, split in report["splits"].items():
        for task, m in [("all", split), *split["by_task"].items()]:
            rel, length, copy, div = m["relevance_by_level"], m["length"], m["intent_copy_rate_top"], m["diversity"]
            lines.append(
                f"| {name} | {task} | {m['intents']} | {fmt(length['within_2'])} | {fmt(length['within_20pct'])} "
                f"| {fmt(length['mae_words'], 2)} | {fmt(rel['low'])} | {fmt(rel['medium'])} | {fmt(rel['high'])} "
                f"| {fmt(m['teacher_relevance']['high'])} | {fmt(m['student_teacher_ratio_top'])} "
                f"| {fmt(m['monotonic'])} | {fmt(copy['student'], 2)}/{fmt(copy['teacher'], 2)} "
                f"| {fmt(m['hard_words_intact_top']['share'], 2)} "
                f"| {fmt(div['student']['cosine_distance'], 2)}/{fmt(div['teacher']['cosine_distance'], 2)} "
                f"| {fmt(m['invalid_share'])} | {fmt(m['broken_text_share'])} |"
            )
    lines += ["", "## Examples", ""]
    for e in report["examples"][:12]:
        lines.append(
            f"- {e['split']} {e['task']} `{e['intent']}` ({e['length']} words, {e['level']}): "
            f"{e['text']!r} -> {e['words']} words, relevance {e['relevance']:.2f}"
        )
    return "\n".join(lines) + "\n"


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """requested vs achieved length, and relevance by requested level (student vs teacher)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    splits = list(report["splits"])
    paths = []
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.5), squeeze=False)
    for ax, name in zip(axes[0], splits, strict=True):
        points = [p for p in report["points"] if p[0] == name]
        requested = np.array([p[2] for p in points], dtype=float)
        achieved = np.array([p[3] for p in points], dtype=float)
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(points))
        ax.scatter(requested + jitter, achieved, s=6, alpha=0.3)
        top = max([1.0, *requested, *achieved])
        ax.plot([0, top], [0, top], "k--", lw=1)
        ax.set(title=f"{name} intents", xlabel="requested words", ylabel="achieved words")
    fig.tight_layout()
    paths.append(out / "length.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    tasks = list(report["splits"][splits[0]]["by_task"])
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.5), squeeze=False)
    width = 0.8 / max(1, len(tasks))
    for ax, name in zip(axes[0], splits, strict=True):
        for k, task in enumerate(tasks):
            m = report["splits"][name]["by_task"][task]
            values = [m["relevance_by_level"][lvl] or 0.0 for lvl in RELEVANCE_LEVELS]
            bars = ax.bar(np.arange(3) + k * width, values, width, label=task)
            teacher = m["teacher_relevance"]["high"]
            if teacher is not None:
                ax.hlines(teacher, 2 + k * width - width / 2, 2 + k * width + width / 2, colors=bars[0].get_facecolor())
        ax.set_xticks(np.arange(3) + width * (len(tasks) - 1) / 2, RELEVANCE_LEVELS)
        ax.set(title=f"{name} intents (line: teacher top level)", xlabel="requested relevance", ylabel="relevance")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    paths.append(out / "relevance.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth carrying in the model's provenance."""
    return {
        name: {
            "within_2": m["length"]["within_2"],
            "relevance_by_level": m["relevance_by_level"],
            "monotonic": m["monotonic"],
            "student_teacher_ratio_top": m["student_teacher_ratio_top"],
            "invalid_share": m["invalid_share"],
            "hard_words_intact_top": m["hard_words_intact_top"]["share"],
            "broken_text_share": m["broken_text_share"],
        }
        for name, m in report["splits"].items()
    }


def record_in_checkpoint(checkpoint: Path, report: dict[str, Any], data: Path) -> None:
    from training.checkpoint import UDRL_FILE

    path = checkpoint / UDRL_FILE
    udrl = json.loads(path.read_text())
    udrl.setdefault("provenance", {})["eval"] = {"data": str(data), **headline(report)}
    path.write_text(json.dumps(udrl, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    bundle = Path(args.onnx) if args.onnx else None
    data = Path(args.data)
    if (checkpoint is None) == (bundle is None):
        print("error: give exactly one of --checkpoint DIR or --onnx BUNDLE_DIR", file=sys.stderr)
        return 2
    if not data.is_file():
        print(f"error: no scored data at {data} (run `python -m training score` first)", file=sys.stderr)
        return 2
    try:
        lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else None
    except ValueError:
        print(f"error: --lengths must be comma-separated integers, got {args.lengths!r}", file=sys.stderr)
        return 2
    try:
        model = load_model(checkpoint, bundle, args.variant)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    # Sampling defaults come with the model (what the server uses); these override them.
    overrides = {"temperature": args.temperature, "top_p": args.top_p}
    model.generation = dataclasses.replace(model.generation, **{k: v for k, v in overrides.items() if v is not None})
    with open(data, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    try:
        realistic = spread([i.text for i in load_realistic_eval(args.realistic_file)], args.realistic)
    except (OSError, ValueError) as e:
        print(f"error: cannot read the realistic intents: {e}", file=sys.stderr)
        return 2
    try:
        report = evaluate(
            model, records, args.intents, lengths, args.n, args.batch_size, args.seed, realistic=realistic
        )
    except NonFiniteLogits as e:
        print(f"error: the model cannot be evaluated: {e}", file=sys.stderr)
        return 2
    report["data"] = {"file": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "summary.md").write_text(summary_markdown(report))
    write_plots(report, out)
    if checkpoint is not None and not args.no_record and overrides == {"temperature": None, "top_p": None}:
        record_in_checkpoint(checkpoint, report, data)
    print(json.dumps(headline(report), indent=1))
    print(f"report -> {out}/report.json, summary.md, length.png, relevance.png")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="measure command adherence and relevance against the teacher")
    parser.add_argument("--checkpoint", help="a training checkpoint directory")
    parser.add_argument("--onnx", help="an exported bundle directory (instead of --checkpoint)")
    parser.add_argument("--variant", default="int8", help="ONNX variant to run with --onnx (fp32, int8, fp16)")
    parser.add_argument("--data", default="artifacts/data/scored.jsonl", help="scored records (training.score)")
    parser.add_argument("--out", default="artifacts/eval", help="report directory")
    parser.add_argument("--intents", type=int, default=8, help="intents per task and split")
    parser.add_argument(
        "--realistic",
        type=int,
        default=60,
        help="intents of the realistic held-out set to evaluate, spread over it (0: none; a large number: all)",
    )
    parser.add_argument(
        "--realistic-file", type=Path, default=None, help="intent<TAB>domain file (default: the shipped held-out set)"
    )
    parser.add_argument("--lengths", default="", help="comma-separated word counts (default: per-task percentiles)")
    parser.add_argument("--n", type=int, default=4, help="samples per command")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None, help="override the model's default")
    parser.add_argument("--top-p", type=float, default=None, help="override the model's default")
    parser.add_argument("--no-record", action="store_true", help="do not write the headline into udrl.json")
    parser.set_defaults(func=run)
