"""The fault matrix of issue 27, the cron loop: a bad target file, a bad edit
of the configuration under a running loop, the loop's lock or spool removed
under it, a step that keeps failing, signals and clock steps; each against a
real spdu-cron, a real knotd and real HTTP servers (test_faults' fixtures).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from spdu_cli import handover
from tests import test_faults as faults
from tests.test_faults import BETA, BIN, GAMMA, SELF

world, knot, site = faults.world, faults.knot, faults.site  # the fixtures of the first matrix


def wait_for(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def start_loop(site: faults.Site, seconds: str = "3", *extra: str) -> subprocess.Popen:
    """spdu-cron as cron starts it, its minutes `seconds` long; back once its lock is there."""
    p = subprocess.Popen([str(BIN / "spdu-cron"), "-c", str(site.conf), "--for", seconds,
                          *extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd="/")
    wait_for(lambda: (site.spool / handover.LOOP_LOCK).exists() or p.poll() is not None, 15)
    return p


def copy(site: faults.Site) -> subprocess.CompletedProcess:
    """The next minute's copy."""
    return site.run(prog="spdu-cron", timeout=30)


def stop(p: subprocess.Popen) -> tuple[int, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=20)
    return rc, p.stderr.read()


def in_dns(site: faults.Site) -> None:
    """beta and gamma up and in the pool."""
    assert site.run("probe").returncode == 0
    assert site.run("reconcile").returncode == 0
    assert site.pool() == sorted([SELF, BETA, GAMMA])


def break_beta(site: faults.Site, how: str) -> None:
    f = site.root / "spdu" / "beta"
    if how == "mode":
        os.chmod(f, 0o666)
    else:
        f.write_text(f"targetIP={BETA}\nprobePort=abc\n")


# -- 4. one bad target file does not stop the site -------------------------------------------


@pytest.mark.parametrize("how", ["mode", "port"])
def test_a_bad_target_file_leaves_the_others_going(site, how):
    in_dns(site)
    break_beta(site, how)
    site.servers["beta"].behaviour = "503"  # were it probed, it would go
    site.servers["gamma"].behaviour = "503"
    r = site.run("cron", "--for", "2")
    assert r.returncode == 78, r.stderr  # the exit status still says it
    assert f"{site.root}/spdu/beta" in r.stderr and "beta is not probed" in r.stderr
    assert "its addresses are left as they are in DNS" in r.stderr
    assert site.pool() == sorted([SELF, BETA])  # gamma went; beta is left as it is
    assert site.entry("gamma")["state"] == "down"
    assert "holds 127.0.0.21, which is neither" not in r.stderr  # not called unmanaged


def test_a_bad_target_file_is_said_by_every_copy(site):
    in_dns(site)
    break_beta(site, "port")
    loop = start_loop(site, "30")
    try:
        for _ in range(2):
            c = copy(site)
            assert c.returncode == 75, c.stderr
            assert "spdu-cron: " in c.stderr and "probePort" in c.stderr, c.stderr
            assert "beta is not probed" in c.stderr
    finally:
        stop(loop)
    assert site.entry("gamma")["state"] == "up"
