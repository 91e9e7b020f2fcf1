"""kill -9 safety of `python -m export bundle`: the real CLI in a subprocess, killed at
each stage; the bundle already in --out survives every kill intact, and a re-run ends
with the same bundle as an uninterrupted run (export/bundle.py: staging + renames)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contract.manifest import MANIFEST_FILE, load_manifest


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
