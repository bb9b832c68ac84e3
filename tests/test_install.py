"""The README's first install route, on Debian 12's own Python: build the wheel,
install it into a fresh venv, link the commands and pages under a prefix as
the README does with /usr/local, and find them there. Offline: the build
backend and the dependencies come from the wheels .ci/setup downloaded."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.wheel import SYSTEM_PYTHON, WHEELHOUSE, install


def sh(*argv, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))}:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, prefix): spdu installed into a fresh venv, linked into prefix/bin and
    prefix/share/man like /usr/local in the README."""
    assert (WHEELHOUSE / ".done").exists(), "no wheelhouse: run sh .ci/setup"
    assert os.access(SYSTEM_PYTHON, os.X_OK), "Debian's python3 is missing (.ci/setup)"
    tmp = tmp_path_factory.mktemp("install")
    venv, wheel = install(tmp)
    prefix = tmp / "usr-local"
    (prefix / "bin").mkdir(parents=True)
    for cmd in ("spdu", "spdu-cron"):
        (prefix / "bin" / cmd).symlink_to(venv / "bin" / cmd)
    for page, section in (("spdu.1", "man1"), ("spdu.conf.5", "man5")):
        (prefix / "share" / "man" / section).mkdir(parents=True)
        (prefix / "share" / "man" / section / page).symlink_to(
            venv / "share" / "man" / section / page)
    return venv, prefix, wheel


def clean_env(prefix: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPDU_", "VIRTUAL_ENV", "PYTHON", "MANPATH"))}
    env["PATH"] = f"{prefix / 'bin'}:/usr/bin:/bin"
    return env


def test_the_commands_run_from_the_prefix(installed, tmp_path):
    venv, prefix, _ = installed
    env = clean_env(prefix)
    r = sh("spdu", "--version", env=env)
    from spdu_cli import __version__

    assert r.stdout.strip() == f"spdu, version {__version__}"
    assert "spdu --syslog cron" in sh("spdu-cron", "--help", env=env).stdout
    conf = tmp_path / "spdu.conf"
    conf.write_text(f"domain=domain.tld\ntargets=beta\ntargetIP=192.0.2.2\nselfCheck=no\nselfIP=192.0.2.1\n"
                    f"spoolDir={tmp_path / 'spool'}\n")
    r = subprocess.run(["spdu", "--config", str(conf), "config", "check"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # it runs on Debian's Python, with the dependencies the wheel names
    py = sh(venv / "bin" / "python", "-c",
            "import sys, requests, dns, click, rich, h11; print(sys.executable)").stdout
    assert Path(py.strip()).parent == venv / "bin"


def test_man_finds_the_pages(installed):
    venv, prefix, _ = installed
    env = clean_env(prefix)  # no MANPATH: man derives it from PATH, as for /usr/local
    for name, section in (("spdu", "1"), ("spdu.conf", "5")):
        where = sh("man", "-w", section, name, env=env).stdout.strip()
        assert where.startswith((str(venv), str(prefix))), where
        text = sh("man", "-P", "cat", section, name, env={**env, "MANWIDTH": "80"}).stdout
        assert "spdu" in text and len(text) > 2000


def test_runtime_dependencies_are_the_declared_ones(installed):
    _, _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        requires = [line.split(":", 1)[1].strip() for line in z.read(meta).decode().splitlines()
                    if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names = sorted(r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requires)
    assert names == ["click", "dnspython", "h11", "requests", "rich"]
