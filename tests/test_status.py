"""`spdu status` in its three forms (a table on a real terminal, plain lines in a
pipe, JSON), with --dns against a real knotd, and `spdu history` figures on a
known journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from spdu_cli import history, maint
from spdu_cli.entry import ResultRecord, SpoolEntry, iso
from spdu_cli.health import Health, State
from spdu_cli.spool import Spool
from tests.conftest import free_port
from tests.test_reconcile import BETA, GAMMA, set_state, write_conf

NOW = time.time()


@pytest.fixture
def spool(tmp_path):
    return Spool(str(tmp_path / "spool"))


def seed(spool: Spool) -> None:
    """beta up for an hour, its last probe 12.5 ms, one mail pending, in maintenance;
    gamma down with a refused connection; delta never probed."""
    global NOW  # noqa: PLW0603 - the fixture sets the clock its assertions read
    NOW = time.time()
    spool.ensure_dir()
    beta = SpoolEntry("beta", Health(State.UP, NOW - 3600, 5, 0), checked=NOW - 1,
                      addresses=[BETA])
    beta.record(ResultRecord(NOW - 1, True, BETA, 200, 12.5, None))
    beta.add_change("unknown", "up", NOW - 3600, "HTTP 200 in 3 ms")
    beta.journal[-1]["notified"] = True
    beta.add_change("up", "maint", NOW - 60, "disk swap", until=iso(NOW + 3600))
    from spdu_cli.entry import Maintenance

    beta.maint = Maintenance(NOW - 60, NOW + 3600, "disk swap")
    gamma = SpoolEntry("gamma", Health(State.DOWN, NOW - 120, 0, 3), checked=NOW - 1,
                       addresses=[GAMMA])
    gamma.record(ResultRecord(NOW - 1, False, GAMMA, None, None, "connection refused"))
    for e in (beta, gamma):
        spool.write(e)


@pytest.fixture
def conf(confdir, spool):
    confdir.write(f"domain=domain.tld\ntargets='beta gamma delta'\nspoolDir={spool.dir}\n")
    seed(spool)
    return confdir


def test_json_one_object_per_target(run, conf):
    r = run("status", "--json")
    assert r.exit_code == 0, r.stderr
    objs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["target"] for o in objs] == ["beta", "gamma", "delta"]
    beta, gamma, delta = objs
    assert beta["state"] == "up" and beta["latency_ms"] == 12.5 and beta["reason"] == "HTTP 200"
    assert beta["pending"] == 1 and beta["maint"]["reason"] == "disk swap"
    assert beta["maint"]["until"] == iso(NOW + 3600) and beta["dns"] is None
    assert gamma["state"] == "down" and gamma["reason"] == "connection refused"
    assert gamma["latency_ms"] is None and gamma["maint"] is None and gamma["ok"] is False
    assert delta == {"target": "delta", "state": "unknown", "since": None, "maint": None,
                     "last_probe": None, "ok": None, "latency_ms": None, "reason": None,
                     "pending": 0, "cert": None, "dns": None}


def test_plain_lines_in_a_pipe(run, conf):
    r = run("status", "gamma", "beta")
    assert r.exit_code == 0 and r.stderr == ""
    gamma, beta = r.stdout.splitlines()
    assert gamma.split()[:2] == ["gamma", "down"] and "connection refused" in gamma
    assert beta.split()[:2] == ["beta", "up"] and "12.5 ms" in beta and "(1 h)" in beta
    assert "pending 1" in beta and "maint until" in beta and beta.endswith(": disk swap")
    assert beta.index("pending") == gamma.index("pending")  # aligned
    assert run("status", "nosuch").exit_code == 2


def test_a_spool_directory_that_is_not_there_is_said(run, confdir, tmp_path):
    """A mistyped spoolDir shows every target never probed: status says why."""
    missing = tmp_path / "nosuch" / "spool"
    confdir.write(f"domain=domain.tld\ntargets='beta'\nspoolDir={missing}\n")
    r = run("status")
    assert r.exit_code == 0
    assert f"spoolDir {missing} does not exist: nothing has been probed here yet" in r.stderr
    assert not missing.exists()  # status writes nothing


def test_an_expired_maintenance_shows_as_over_and_status_writes_nothing(run, conf, spool):
    e = spool.read("beta")
    from spdu_cli.entry import Maintenance

    e.maint = Maintenance(NOW - 600, NOW - 300, "done")
    spool.write(e)
    before = spool.path("beta").read_bytes()
    [line] = [json.loads(x) for x in run("status", "beta", "--json").stdout.splitlines()]
    assert line["maint"] is None and line["pending"] == 2  # the way back, not yet mailed
    assert spool.path("beta").read_bytes() == before


def test_a_table_on_a_terminal(conf):
    """A real pseudo-terminal: rich's table, with headers."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "SPDU_CONFIG": str(conf.main)}
    p = subprocess.run([sys.executable, "-m", "spdu_cli", "status"], stdout=slave,
                       stderr=subprocess.PIPE, env=env, timeout=30)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert p.returncode == 0, p.stderr
    text = out.decode()
    assert "\x1b[" in text  # colour codes: it is rich's
    for word in ("TARGET", "STATE", "LATENCY", "PENDING", "MAINT", "beta", "gamma", "delta",
                 "disk swap"):
        assert word in text


def test_dns_in_sync_out_of_sync_and_unreachable(run, confdir, knot, spool):
    write_conf(confdir, knot, spool)
    set_state(spool, "beta", "up", [BETA])
    set_state(spool, "gamma", "up", [GAMMA])
    r = run("status", "--dns", "--json")
    assert r.exit_code == 0, r.stderr  # out of sync is a report, exit 0
    beta, _gamma = [json.loads(x)["dns"] for x in r.stdout.splitlines()]
    assert beta["in_sync"] is False and beta["pool"] == "api.pool.domain.tld"
    assert beta["changes"] == [{"action": "add", "address": GAMMA, "target": "gamma"}]
    r = run("status", "--dns")
    lines = r.stdout.splitlines()
    assert lines[0].endswith("dns agrees (other changes pending)")
    assert lines[1].endswith(f"dns would add {GAMMA}")
    assert run("status", "--dns").exit_code == 0 and knot.serial() == 1  # status sends nothing
    assert run("reconcile").exit_code == 0 and knot.serial() == 2
    r = run("status", "--dns")
    *targets, server = r.stdout.splitlines()
    assert len(targets) == 2 and all(line.endswith("dns in sync") for line in targets)
    # then each server of the zone's NS set (ns1 is the primary itself here)
    assert server == (f"api.pool.domain.tld on 127.0.0.1:{knot.port} (ns1.pool.domain.tld):"
                      " serial 2, in step, unsigned")
    write_conf(confdir, type("Down", (), {"address": "127.0.0.1", "port": free_port()})(), spool)
    r = run("status", "--dns", "--json")
    assert r.exit_code == 69
    assert "did not answer" in json.loads(r.stdout.splitlines()[0])["dns"]["error"]
    r = run("status")  # without --dns, DNS is not read
    assert r.exit_code == 0


# -- history ------------------------------------------------------------------------------

T0 = 1_750_000_000.0


def test_history_figures_on_a_known_journal(spool):
    """up 10 h, down 1 h, up 2 h, maint 1 h, unknown 30 min, up until now (+30 min)."""
    spool.ensure_dir()
    e = SpoolEntry("beta")
    steps = [("unknown", "up", 0), ("up", "down", 10), ("down", "up", 11), ("up", "maint", 13),
             ("maint", "unknown", 14), ("unknown", "up", 14.5)]
    for old, new, hours in steps:
        e.add_change(old, new, T0 + hours * 3600, f"to {new}")
    with spool.locked():
        spool.write(e)
    h = history.of_entry(spool.read("beta"), now=T0 + 15 * 3600)
    assert [p.new for p in h.periods] == ["up", "unknown", "maint", "up", "down", "up"]
    assert [p.seconds / 3600 for p in h.periods] == [0.5, 0.5, 1, 2, 1, 10]
    assert h.periods[0].current and not any(p.current for p in h.periods[1:])
    assert h.seconds == {"up": 12.5 * 3600, "down": 3600, "maint": 3600, "unknown": 1800}
    assert h.availability == pytest.approx(12.5 / 13.5)
    assert h.to_json()["availability"] == 0.925926 and h.start == T0
    from spdu_cli import render

    line = render.availability_line(h)
    assert "availability 92.59 %" in line and "down 1 h" in line and "maintenance 1 h" in line


def test_history_empty_and_expired_maintenance(spool):
    assert history.of_entry(SpoolEntry("beta"), now=T0).availability is None
    e = SpoolEntry("beta", Health(State.UP, T0, 2, 0))
    e.add_change("unknown", "up", T0, "ok")
    e.add_change("up", "maint", T0 + 100, "x", until=iso(T0 + 200))
    from spdu_cli.entry import Maintenance

    e.maint = Maintenance(T0 + 100, T0 + 200, "x")
    h = history.of_entry(e, now=T0 + 1000)  # shown as ended at until, as the probe will write
    assert [(p.old, p.new, p.seconds) for p in h.periods] == [
        ("maint", "up", 800), ("up", "maint", 100), ("unknown", "up", 100)]
    assert e.maint is not None  # the entry itself is untouched
    assert maint.expire(e, T0 + 150) is None


def test_history_cli(run, confdir, spool):
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={spool.dir}\n")
    spool.ensure_dir()
    NOW = time.time()
    e = SpoolEntry("beta", Health(State.UP, NOW - 7200, 2, 0))
    e.add_change("unknown", "up", NOW - 7200, "HTTP 200 in 1 ms")
    e.add_change("up", "down", NOW - 3600, "connection refused")
    spool.write(e)
    r = run("history", "beta")
    assert r.exit_code == 0, r.stderr
    first, second, last = r.stdout.splitlines()
    assert "up -> down" in first and "1 h (now)" in first and "connection refused" in first
    assert "unknown -> up" in second and first.index("connection") == second.index("HTTP 200")
    assert last.startswith("beta: availability 50.00 % from ")
    obj = json.loads(run("history", "beta", "--json").stdout)
    assert obj["availability"] == pytest.approx(0.5, abs=1e-3)
    assert [t["id"] for t in obj["transitions"]] == [2, 1]
    assert run("history", "nosuch").exit_code == 2
