"""The README's first command runs end to end: `.ci/demo` (after `.ci/setup`)
is `.ci/demo.py`, a live demo with a real Knot DNS, two status servers, an
SMTP sink and the cron loop. This runs that script as a newcomer would and
checks that every stage it promises shows in its output."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".ci" / "demo.py"
TIMEOUT = 150


def kdig_answers(out: str) -> list[set[str]]:
    """Each printed kdig answer, as the set of addresses under its `$ kdig` line."""
    answers = []
    for block in re.findall(r"\$ kdig [^\n]*\n((?:  [0-9.]+\n)*)", out):
        answers.append(set(block.split()))
    return answers


def test_the_demo_runs_end_to_end():
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, str(DEMO)], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.terminate()  # SIGTERM: the demo stops what it started (Knot, servers, loop)
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"the demo did not end within {TIMEOUT} s\n{out}\n{err}") from None
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, f"exit {p.returncode}\n{out}\n{err}"

    # The pool as kdig saw it: this site alone, both sites, gamma gone, gamma back.
    self_ip, beta, gamma = "192.0.2.1", "127.0.0.21", "127.0.0.22"
    assert kdig_answers(out) == [
        {self_ip}, {self_ip, beta, gamma}, {self_ip, beta}, {self_ip, beta, gamma}], out
    assert re.search(r"gamma left the pool \d+\.\d s after", out), out
    assert re.search(r"gamma rejoined the pool \d+\.\d s after", out), out

    # The mails the SMTP sink received: the DOWN warning and the up notice.
    subjects = re.findall(r"^  \| Subject: (.*)$", out, re.MULTILINE)
    assert any(re.fullmatch(r"WARNING: (Server |\d+ changes: .*)?gamma is DOWN.*", s)
               for s in subjects), subjects
    assert any(re.fullmatch(r"NOTICE: (Server |\d+ changes: .*)?gamma is up.*", s)
               for s in subjects), subjects
    assert "cron loop stops (SIGTERM: it ends after the current tick), exit 0" in out
    assert "\n== done in " in out
    assert elapsed < 60, f"the demo took {elapsed:.0f} s"

    # Cleaned up: no temporary directory or process of this run is left.
    conf = re.search(r"\$ spdu -c (\S+)/spdu\.conf", out)
    assert conf and not Path(conf.group(1)).exists()
