"""`mypy --strict` on src/: the typed public surface STYLE.md asks for stays typed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists(),
                    reason="mypy is not installed")
def test_mypy_strict_on_src():
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary", str(ROOT / "src")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
