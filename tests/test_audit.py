"""`.ci/audit.py` (make audit) on each kind of pip-audit answer: a fixable vulnerability
fails the build, one without a fix is reported and passes, an unreachable vulnerability
database is said plainly and passes. pip-audit is replaced by a stand-in module on
PYTHONPATH that answers as the real one does (JSON on stdout, exit 1 when it found
something; a traceback and no JSON when it cannot reach its database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AUDIT = Path(__file__).resolve().parents[1] / ".ci" / "audit.py"


def report(name: str, version: str, vulns: list[dict[str, object]]) -> dict[str, object]:
    return {"dependencies": [{"name": name, "version": version, "vulns": vulns}]}


REPORTS = {
    "fixable": report("foo", "1.0", [{"id": "PYSEC-1", "fix_versions": ["1.1"]}]),
    "unfixable": report("bar", "2.0", [{"id": "GHSA-x", "fix_versions": []}]),
    "clean": report("baz", "3.0", []),
}
STAND_IN = """
import json, os, sys
case = os.environ["AUDIT_CASE"]
if case == "offline":
    sys.exit("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='pypi.org', port=443)")
report = json.loads(os.environ["AUDIT_REPORT"])
print(json.dumps(report))
sys.exit(1 if any(d["vulns"] for d in report["dependencies"]) else 0)
"""


def audit(tmp_path: Path, case: str) -> subprocess.CompletedProcess[str]:
    package = tmp_path / "pip_audit"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(STAND_IN)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AUDIT_CASE": case, "AUDIT_REPORT": json.dumps(REPORTS.get(case))}
    return subprocess.run([sys.executable, str(AUDIT)], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("fixable", 1, "FIX AVAILABLE: foo 1.0: PYSEC-1 (fixed in 1.1)"),
        ("unfixable", 0, "known, no fix yet: bar 2.0: GHSA-x"),
        ("clean", 0, "1 packages, 0 fixable, 0 unfixable"),
        ("offline", 0, "SKIPPED: pip-audit could not reach its vulnerability database (requests.exceptions.Conn"),
    ],
)
def test_the_audit_fails_only_on_a_fixable_vulnerability(tmp_path: Path, case: str, code: int, says: str) -> None:
    result = audit(tmp_path, case)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout
