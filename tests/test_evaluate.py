"""The eval command on a tiny model: every report field, PyTorch and ONNX through one loop."""

from __future__ import annotations

import dataclasses
import json
import shutil
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer
from toy_records import write_toy_scored

from contract.command import OUTPUT_TOKEN, RELEVANCE_LEVELS
from contract.manifest import load_manifest
from tests.poisoned_bundle import poisoned_bundle
from training.compare import run as compare_run
from training.evaluate import copies_intent, evaluate, load_model, run
from training.rewards import Embedder

SPLIT_FIELDS = {
    "samples",
    "intents",
    "invalid_share",
    "broken_text_share",
    "hard_words_intact_top",
    "length",
    "relevance_by_level",
    "relevance_by_length_and_level",
    "monotonic_by_length",
    "monotonic",
    "teacher_relevance",
    "student_teacher_ratio_top",
    "intent_copy_rate_top",
    "diversity",
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_scored(tmp_path_factory.mktemp("data") / "scored.jsonl")


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_copies_intent() -> None:
    assert copies_intent("holiday sale", "Big Holiday Sales today")
    assert copies_intent("a walk in the park", "parks for a walk")  # stop words need not appear
    assert not copies_intent("holiday sale", "winter discounts")


def test_eval_command_writes_every_report_field(
    tiny_checkpoint: Path, scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint"))  # eval records into udrl.json
    out = tmp_path / "eval"
    args = Namespace(
        checkpoint=str(checkpoint), onnx=None, variant="int8", data=str(scored), out=str(out), intents=1,
        lengths="4,8", n=2, batch_size=64, seed=0, no_record=False, temperature=None, top_p=None, realistic=2,
        realistic_file=None,
    )  # fmt: skip
    assert run(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["splits"]) == {"unseen", "train", "realistic"}
    realistic = report["splits"].pop("realistic")  # the hand-written set: no teacher outputs, its own grid
    assert realistic["samples"] == 3 * 2 * 3 * 3 * 2  # tasks x intents x grid lengths x levels x n
    assert set(realistic) >= SPLIT_FIELDS and realistic["teacher_relevance"]["high"] is None
    assert 0.0 <= realistic["broken_text_share"] <= 1.0
    assert realistic["hard_words_intact_top"]["outputs"] > 0  # realistic intents have proper nouns
    for name, split in report["splits"].items():
        assert set(split) >= SPLIT_FIELDS, name
        assert set(split["by_task"]) == {"t2i_prompt", "search_queries", "title"}
        for task_metrics in split["by_task"].values():
            assert set(task_metrics) >= SPLIT_FIELDS
        assert split["samples"] == 3 * 1 * 2 * 3 * 2  # tasks x intents x lengths x levels x n
        assert set(split["length"]) == {"mae_words", "within_2", "within_20pct"}
        assert set(split["relevance_by_level"]) == set(RELEVANCE_LEVELS)
        assert set(split["relevance_by_length_and_level"]) == {"4", "8"}
        assert set(split["diversity"]["student"]) == {"cosine_distance", "distinct_2", "groups"}
        assert split["teacher_relevance"]["high"] > split["teacher_relevance"]["by_level"]["low"]
        assert 0.0 <= split["invalid_share"] <= 1.0
    unseen_intents = report["settings"]["plan"]["unseen"]["title"]["intents"]
    assert unseen_intents and set(unseen_intents) <= {"desert sunrise", "winter market"}  # the test split only
    for name in ("summary.md", "length.png", "relevance.png"):
        assert (out / name).stat().st_size > 0
    assert "| unseen | all |" in (out / "summary.md").read_text()
    udrl = json.loads((checkpoint / "udrl.json").read_text())
    assert set(udrl["provenance"]["eval"]) >= {"unseen", "train", "realistic"}
    # the same report twice, side by side: a row per (task, model), a table per split
    report_path = out / "report.json"
    capsys.readouterr()
    compare = Namespace(report=[f"a={report_path}", f"b={report_path}"], split=["realistic"])
    assert compare_run(compare) == 0
    table = capsys.readouterr().out
    assert table.startswith("### realistic") and table.count("| title | a |") == table.count("| title | b |") == 1
    assert compare_run(Namespace(report=[f"a={report_path}"], split=["nope"])) == 2
    assert compare_run(Namespace(report=["no-equals-sign"], split=[])) == 2


def test_pytorch_and_onnx_run_through_the_same_loop(
    tiny_checkpoint: Path, tiny_bundle: Path, scored: Path, embedder: Embedder
) -> None:
    records = [json.loads(line) for line in scored.read_text().splitlines()]
    reports = []
    for checkpoint, bundle in ((tiny_checkpoint, None), (None, tiny_bundle)):
        model = load_model(checkpoint, bundle, "fp32")
        model.generation = dataclasses.replace(
            model.generation, temperature=0.0, max_new_tokens=12
        )  # greedy: comparable
        reports.append(evaluate(model, records, intents_per_task=1, lengths=[5], n=1, embedder=embedder))
    torch_report, onnx_report = reports
    assert onnx_report["model"]["format"] == "onnx" and torch_report["model"]["format"] == "pytorch"
    # FP32 ONNX matches PyTorch to ~1e-6 in the logits: greedy decoding writes the same words.
    assert [p[3] for p in torch_report["points"]] == [p[3] for p in onnx_report["points"]]
    relevances = np.array([[p[5] for p in r["points"]] for r in reports])
    assert np.allclose(relevances[0], relevances[1], atol=1e-3)


def test_eval_rejects_bad_arguments(scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"checkpoint": None, "onnx": None, "variant": "int8", "data": str(scored), "out": str(tmp_path)}
    base |= {"intents": 1, "lengths": "", "n": 1, "batch_size": 8, "seed": 0, "no_record": True}
    base |= {"temperature": None, "top_p": None}
    assert run(Namespace(**base)) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert run(Namespace(**{**base, "checkpoint": str(tmp_path), "lengths": "5,x"})) == 2
    assert "--lengths" in capsys.readouterr().err
    assert run(Namespace(**{**base, "checkpoint": str(tmp_path)})) == 2
    assert "cannot load" in capsys.readouterr().err


def test_eval_stops_with_one_line_on_a_model_whose_logits_are_not_finite(
    tiny_bundle: Path, scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every prompt ends in the output token, whose embedding is NaN here: nothing can be sampled,
    so no report is written, and the command says why in one line (exit 2)."""
    pytest.importorskip("onnx")
    tokenizer = Tokenizer.from_file(str(tiny_bundle / load_manifest(tiny_bundle).tokenizer_file))
    bundle = poisoned_bundle(tiny_bundle, tmp_path / "bundle", "fp32", tokenizer.token_to_id(OUTPUT_TOKEN))
    out = tmp_path / "eval"
    args = Namespace(
        checkpoint=None, onnx=str(bundle), variant="fp32", data=str(scored), out=str(out), intents=1, lengths="4",
        n=1, batch_size=8, seed=0, no_record=True, temperature=None, top_p=None, realistic=0, realistic_file=None,
    )  # fmt: skip
    assert run(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's lines
    assert error.startswith("error: the model cannot be evaluated:") and "not finite" in error, error
    assert not (out / "report.json").exists()
