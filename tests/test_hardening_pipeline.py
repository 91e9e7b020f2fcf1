"""kill -9 safety of the pipeline's CLIs (issue 12): the real command in a subprocess,
killed at some moment, then the same command again must end with what an uninterrupted
run writes: nothing lost, nothing twice, no half-written file.

- `python -m training score`: killed after a random number of journalled batches, and
  in the states a kill during its final write leaves (training/score.py: journal +
  atomic rename).
- `python -m export bundle`: killed at each stage; the bundle already in --out survives
  every kill intact (export/bundle.py: staging + renames).
`generate` is killed in tests/test_generate_resume.py, `train` in tests/test_train.py.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from contract.manifest import MANIFEST_FILE, load_manifest
from training.score import journal_path, read_scored

# --- score ------------------------------------------------------------------------------

SCORE_BATCH = 32  # 640 records in 20 journalled batches: many moments to be killed at


def score_args(samples: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "training", "score", "--samples", str(samples), "--out", str(out)] + [
        "--batch-size",
        str(SCORE_BATCH),
    ]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score_samples") / "samples"
    generate = [sys.executable, "-m", "training", "generate", "--out", str(out), "--limit-intents", "40"]
    generate += ["--per-intent", "4", "--tasks-per-intent", "0"]  # 640 samples: room for every kill point
    subprocess.run(generate, check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def scored_reference(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("score_reference") / "scored.jsonl"
    subprocess.run(score_args(samples, out), check=True, capture_output=True, timeout=300)
    return out.read_bytes()


def journal_lines(journal: Path) -> int:
    return journal.read_bytes().count(b"\n") if journal.is_file() else 0


def kill_score_after(samples: Path, out: Path, lines: int) -> None:
    """Run score and kill -9 it once its journal holds at least `lines` scored records."""
    process = subprocess.Popen(score_args(samples, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while journal_lines(journal_path(out)) < lines:
        assert process.poll() is None and time.monotonic() < deadline, "score ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL


def rerun_score(samples: Path, out: Path) -> str:
    result = subprocess.run(score_args(samples, out), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def assert_scored_like(out: Path, reference: bytes) -> None:
    assert out.read_bytes() == reference  # same records, same scores, same order: nothing lost or twice
    ids = [r["id"] for r in read_scored(out)]
    assert len(ids) == len(set(ids)) == reference.count(b"\n")
    assert not journal_path(out).exists() and not out.with_suffix(".jsonl.tmp").exists()


# three moments drawn once (seeded, so a failure can be re-run): after 1..19 of 20 batches
@pytest.mark.parametrize("batches", sorted(random.Random(12).sample(range(1, 20), 3)))
def test_score_killed_at_a_random_batch_reruns_to_the_same_file(
    samples: Path, scored_reference: bytes, tmp_path: Path, batches: int
) -> None:
    out = tmp_path / "scored.jsonl"
    kill_score_after(samples, out, batches * SCORE_BATCH)
    assert not out.exists()  # nothing half-written where the result belongs
    kept = len(read_scored(journal_path(out)))
    assert kept >= batches * SCORE_BATCH
    stdout = rerun_score(samples, out)
    total = scored_reference.count(b"\n")
    assert f"({total - kept} new, {kept} from cache)" in stdout  # the journal's batches were not scored again
    assert_scored_like(out, scored_reference)


def test_score_killed_twice_keeps_every_journalled_batch(
    samples: Path, scored_reference: bytes, tmp_path: Path
) -> None:
    """A kill tears the journal's last line; the next run must cut that tail before it
    appends, or its first record would be glued onto the fragment and lost."""
    out = tmp_path / "scored.jsonl"
    journal = journal_path(out)
    kill_score_after(samples, out, 3 * SCORE_BATCH)
    with open(journal, "a") as f:
        f.write('{"id": "torn by a kill')  # what a kill in the middle of a write leaves
    kill_score_after(samples, out, journal_lines(journal) + 2 * SCORE_BATCH)
    lines = journal.read_text().splitlines()
    complete = lines if journal.read_text().endswith("\n") else lines[:-1]
    assert all(json.loads(line) for line in complete)  # no fragment left inside the journal
    rerun_score(samples, out)
    assert_scored_like(out, scored_reference)


def test_score_killed_during_its_final_write_reruns_to_the_same_file(
    samples: Path, scored_reference: bytes, tmp_path: Path
) -> None:
    """The moments after the last batch, too short to aim a signal at, left as such a
    kill leaves them: the journal complete, and (a) the output's temporary file torn,
    (b) the output renamed into place but the journal not yet removed."""
    out = tmp_path / "scored.jsonl"
    kill_score_after(samples, out, 2 * SCORE_BATCH)
    rerun_score(samples, out)
    whole = out.read_bytes()
    journal_path(out).write_bytes(whole)  # every record journalled: the journal holds a superset of its fields
    out.unlink()
    out.with_suffix(".jsonl.tmp").write_bytes(whole[: len(whole) // 2])  # (a)
    assert "(0 new," in rerun_score(samples, out)
    assert_scored_like(out, scored_reference)
    journal_path(out).write_bytes(whole)  # (b)
    assert "(0 new," in rerun_score(samples, out)
    assert_scored_like(out, scored_reference)


# --- export -----------------------------------------------------------------------------


def export_args(checkpoint: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "export", "bundle", "--checkpoint", str(checkpoint), "--out", str(out)] + [
        "--int8-min-agreement",
        "0",
    ]


def comparable(bundle: Path) -> dict[str, Any]:
    """The manifest without the export time; file hashes included, so the bytes count."""
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest.get("provenance", {}).get("export", {}).pop("exported_at", None)
    return manifest


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export_reference") / "bundle"
    subprocess.run(export_args(tiny_checkpoint, out), check=True, capture_output=True, timeout=300)
    return out


@pytest.mark.parametrize("stage", ["[1/4]", "[3/4] deriving int8", "[4/4]"])
def test_export_killed_at_any_stage_reruns_to_the_same_bundle(
    tiny_checkpoint: Path, reference: Path, tiny_bundle: Path, tmp_path: Path, stage: str
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)  # a previous bundle, which a killed export must leave intact
    before = comparable(out)
    process = subprocess.Popen(export_args(tiny_checkpoint, out), stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(stage):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, f"the export finished before {stage!r}"
    load_manifest(out)  # hashes checked: the old bundle is whole
    assert comparable(out) == before
    subprocess.run(export_args(tiny_checkpoint, out), check=True, capture_output=True, timeout=300)
    assert comparable(out) == comparable(reference)
    load_manifest(out)
    assert not (tmp_path / "bundle.partial").exists() and not (tmp_path / "bundle.old").exists()


def test_export_killed_between_its_renames_reruns_to_the_same_bundle(
    tiny_checkpoint: Path, reference: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """The one moment no signal can be aimed at: the old bundle renamed aside, the new one
    not yet renamed in. The directories are left as such a kill leaves them."""
    shutil.copytree(tiny_bundle, tmp_path / "bundle.old")
    shutil.copytree(reference, tmp_path / "bundle.partial")
    out = tmp_path / "bundle"
    subprocess.run(export_args(tiny_checkpoint, out), check=True, capture_output=True, timeout=300)
    assert comparable(out) == comparable(reference)
    assert not (tmp_path / "bundle.partial").exists() and not (tmp_path / "bundle.old").exists()
