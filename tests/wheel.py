"""spdu as the README installs it: a wheel built from this checkout, installed
into a fresh venv of Debian's python3, offline (the build backend and the
dependencies come from the wheels .ci/setup downloaded). For
tests/test_install.py and benchmarks/cron_cost.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3 package, as a newcomer has it


def _run(*argv) -> None:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))}:\n{r.stdout}\n{r.stderr}")


def install(tmp: Path, python: str = SYSTEM_PYTHON) -> tuple[Path, Path]:
    """(venv, wheel): the wheel built in `tmp`, and the venv of `python` in
    `tmp` that it is installed into."""
    src = tmp / "src"  # a copy: building leaves build/ and *.egg-info behind
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".hypothesis", ".pytest_cache", "__pycache__", "*.egg-info", "build",
        "dist", "tests", "benchmarks"))
    offline = ["--no-index", "--find-links", WHEELHOUSE]
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *offline, "-w", tmp / "dist",
         src)
    [wheel] = (tmp / "dist").glob("spdu-*.whl")
    venv = tmp / "opt-spdu"
    _run(python, "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "-q", *offline, wheel)
    return venv, wheel
