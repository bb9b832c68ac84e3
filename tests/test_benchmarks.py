"""The benchmark scripts are not run by the tests (they print figures and take
minutes), but each must at least compile and answer --help."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_compiles_and_has_help(script, tmp_path):
    py_compile.compile(str(script), cfile=str(tmp_path / "x.pyc"), doraise=True)
    if "argparse" in script.read_text():
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                           text=True, timeout=60, cwd=BENCH)
        assert r.returncode == 0, r.stderr
        assert "usage:" in r.stdout
