"""The systemd units in cron/: they pass `systemd-analyze verify`, and the
service's exact ExecStart command runs its minute against a real lab (Knot and
HTTP peers on loopback)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.test_cycle import BETA, GAMMA, SELF, pool, site, wait_for  # noqa: F401 - fixture
from tests.test_notify import syslog_socket  # noqa: F401 - fixture

ROOT = Path(__file__).parent.parent
UNITS = ROOT / "cron"


def unit(name: str) -> dict[str, list[str]]:
    """KEY -> values of a unit file (every section; keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_start() -> list[str]:
    """The service's ExecStart as argv, its program taken from where the tests'
    venv installed it (the unit names /usr/local/bin, where the README links it)."""
    [line] = unit("spdu.service")["ExecStart"]
    argv = shlex.split(line)
    assert argv[0] == "/usr/local/bin/spdu-cron", "cron/README.md links spdu-cron there"
    return [str(Path(sys.executable).parent / Path(argv[0]).name), *argv[1:]]


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    """Verified as installed: ExecStart's program must exist, so the copy names the
    venv's spdu-cron; Documentation= names man pages, which must be found."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: .ci/setup installs the systemd package"
    for name in ("spdu.service", "spdu.timer"):
        text = (UNITS / name).read_text()
        text = text.replace("ExecStart=/usr/local/bin/spdu-cron", f"ExecStart={exec_start()[0]}")
        (tmp_path / name).write_text(text)
    man = tmp_path / "man"
    for page, section in (("spdu.1", "man1"), ("spdu.conf.5", "man5")):
        (man / section).mkdir(parents=True)
        (man / section / page).symlink_to(ROOT / "man" / page)
    r = subprocess.run([analyze, "verify", str(tmp_path / "spdu.service"),
                        str(tmp_path / "spdu.timer")],
                       env={**os.environ, "MANPATH": str(man)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr  # an unknown key is only a warning


def test_the_service_is_sandboxed_and_the_timer_misses_no_minute():
    svc = unit("spdu.service")
    assert svc["Type"] == ["exec"] and svc["User"] == ["knot"]
    # an hour a process; no copy ever meets the lock (systemd starts none), so no --follow
    assert svc["Environment"] == ["SPDU_CRON_FOR=3600"] and svc["RuntimeMaxSec"] == ["3660"]
    assert exec_start()[1:] == ["--no-follow"]
    assert svc["ProtectSystem"] == ["strict"] and svc["ReadWritePaths"] == ["/var/spool/spdu"]
    assert svc["CapabilityBoundingSet"] == [""] and svc["NoNewPrivileges"] == ["yes"]
    assert svc["PrivateTmp"] == ["yes"]
    assert set(svc["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    timer = unit("spdu.timer")
    assert timer["OnCalendar"] == ["*-*-* *:*:00"] and timer["AccuracySec"] == ["1s"]
    # systemd skips a start while the unit still runs: a run that overran its minute
    # is followed a second later, as cron's copy hands its minute over.
    assert timer["OnUnitInactiveSec"] == ["1s"]


def test_exec_start_runs_a_minute_of_ticks_against_a_lab(site, syslog_socket):  # noqa: F811
    """What the timer starts, as it starts it: ExecStart's command, no terminal,
    its configuration found through SPDU_CONFIG (the default path otherwise). A
    minute of ticks at the default interval of 2 s is 30 ticks; here the same 30
    ticks at interval=0.2, in 6 s: the command has no option to shorten it, so
    SPDU_CRON_FOR (the environment form of `spdu cron --for`) does."""
    path, lines = syslog_socket
    site["write"](f"interval=0.2\nfastInterval=0.1\nsyslogSocket={path}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPDU_")}
    env.update(SPDU_CONFIG=site["conf"], SPDU_CRON_FOR="6")
    t0 = time.monotonic()
    p = subprocess.Popen(exec_start(), env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: {SELF, BETA, GAMMA} <= set(pool(site["knot"])), 3)
    site["servers"]["beta"].behaviour = "503"
    took = wait_for(lambda: BETA not in pool(site["knot"]), 3)
    # fall=2 at fastInterval 0.1, one interval of 0.2: about 0.3 s. This test is about
    # what the timer starts, not failover time (benchmarks/failover.py measures that):
    # the bound only says the loop acts within its minute, with room for a loaded CI
    # machine (1.00 to 1.007 s were seen there, cause not found yet).
    assert took < 1.5
    out, err = p.communicate(timeout=15)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, err
    assert out == "" and err == ""  # journald would get nothing: it all goes to syslog
    assert 6 - 0.6 < elapsed < 6 + 2
    text = "\n".join(lines())
    [done] = re.findall(r"cron loop done: (\d+) ticks, \d+ probe runs, (\d+) reconciles", text)
    ticks, reconciles = map(int, done)
    # DNS is read at the start, at each change and an interval after it (to see it
    # done), not every tick: the drift check (every 10 s) does not come within 6 s
    assert 2 <= reconciles <= 8 and ticks >= 25, text
    assert "beta is DOWN" in text and f"delete api.pool.domain.tld {BETA}" in text
