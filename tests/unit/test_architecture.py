"""The layer contracts of DESIGN §7 are enforced: the real tree passes, and a forbidden import is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), str(cwd / "pyproject.toml"), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_import_contracts_hold():
    result = _lint(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_forbidden_import_fails_the_contracts(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "src" / "curaway", tmp_path / "src" / "curaway", ignore=shutil.ignore_patterns("__pycache__")
    )
    offender = tmp_path / "src" / "curaway" / "tasks" / "offender.py"
    offender.write_text("from curaway.api import app  # a handler must never import the API\n")
    result = _lint(tmp_path, tmp_path / "src")
    assert result.returncode != 0
    assert "curaway.tasks.offender" in result.stdout
