"""The benchmark and recipe scripts still start: each one's ``--help`` runs (imports, argument parser).

They are run by hand (``benchmarks/README.md``, the recipes under ``scripts/``), so a change of the
package could break one unseen; this catches what breaks a script before its work starts: a module-level
import of something moved or removed, or a broken argument parser.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_help_runs(script):
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
