""".ci/setup on a machine that lacks everything: apt's and dpkg's hundreds of
lines go to a log file; the terminal gets a line or two (issue 24). Debian's
tools are stand-ins here (the real ones would change this machine)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def _repo(tmp_path: Path, apt_status: int = 0) -> tuple[Path, dict]:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "setup", repo / ".ci" / "setup")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv = repo / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "wheelhouse").mkdir()
    for done in (venv / ".spdu-installed", venv / "wheelhouse" / ".done"):
        done.touch()
    fake = tmp_path / "bin"
    fake.mkdir()
    tools = {
        "dpkg-query": "exit 1",  # nothing is installed
        "apt-get": ('for i in $(seq 300); do echo "Selecting previously unselected package'
                    f' p$i."; done\nexit {apt_status}'),
        "systemctl": "exit 1",
        "sudo": 'exec "$@"',
    }
    for name, body in tools.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}",
           "SPDU_POLICY_RC": str(tmp_path / "policy-rc.d"), "PYTHON": sys.executable}
    return repo, env


def test_a_fresh_machine_gets_a_line_or_two_and_the_log_in_a_file(tmp_path):
    repo, env = _repo(tmp_path)
    p = subprocess.run(["sh", ".ci/setup"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and p.stdout == "", p.stderr
    assert lines[0].startswith("setup: installing what this machine lacks (Debian packages:"
                               " python3 python3-venv")
    assert lines[0].endswith("; the log is in build/setup.log") and lines[1] == "setup: done"
    log = (repo / "build" / "setup.log").read_text()
    assert log.count("Selecting previously unselected package") == 600  # update + install
    assert not (tmp_path / "policy-rc.d").exists()  # services may start again


def test_a_failure_shows_the_end_of_the_log(tmp_path):
    repo, env = _repo(tmp_path, apt_status=100)
    p = subprocess.run(["sh", ".ci/setup"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert "setup: failed: env DEBIAN_FRONTEND=noninteractive apt-get update -qq;" in p.stderr
    assert "Selecting previously unselected package p300." in p.stderr
    assert p.stderr.count("\n") < 25
