"""The cron loop (`spdu cron`, what spdu-cron runs): real processes against
real HTTP, DNS and SMTP servers on loopback, with short loops (--for)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spdu_cli.cycle import Schedule
from spdu_cli.health import Health, State
from tests.smtpd import SilentRelay

SPDU = [sys.executable, "-m", "spdu_cli"]
SELF, BETA, GAMMA = "192.0.2.1", "127.0.0.12", "127.0.0.13"


# -- the schedule (pure) ----------------------------------------------------------------


def test_suspect_targets_are_probed_again_sooner():
    s = Schedule()
    s.probed("beta", Health(State.UP, 0, 0, 1), now=10, interval=2, fast=0.5)  # failed once
    s.probed("gamma", Health(State.UP, 0, 3, 0), now=10, interval=2, fast=0.5)
    s.probed("delta", Health(State.DOWN, 0, 0, 3), now=10, interval=2, fast=0.5)
    assert s.due(["beta", "gamma", "delta"], 10.5) == ["beta"]
    assert s.due(["beta", "gamma", "delta"], 12) == ["beta", "gamma", "delta"]
    assert s.next(["beta", "gamma"], 99) == 10.5
    assert s.due(["new"], 0) == ["new"]  # never probed: due at once


# -- the loop, as a process --------------------------------------------------------------


@pytest.fixture
def site(confdir, tmp_path, http_server, knot):
    """Two peers with real status servers, Knot holding the pool, a spool."""
    servers = {"beta": http_server(BETA), "gamma": http_server(GAMMA)}
    spool = tmp_path / "spool"

    def write(extra: str = "", name_port: int | None = None, name_timeout: float = 2) -> None:
        confdir.write(
            f"domain=domain.tld\ntargets='beta gamma'\nspoolDir={spool}\nselfIP={SELF}\n"
            "selfCheck=no\n"
            f"nameServer=127.0.0.1\nnamePort={name_port or knot.port}\n"
            f"nameTimeout={name_timeout}\n"
            f"interval=0.4\nfastInterval=0.1\nprobeTimeout=0.5\nsyslogSocket=none\n{extra}")
        for name, srv in servers.items():
            confdir.write(f"targetIP={srv.host}\nprobePort={srv.port}\n", target=name)

    write()
    return {"servers": servers, "spool": spool, "write": write, "knot": knot,
            "conf": str(confdir.main)}


def start(site, *args: str, seconds: float = 3.0) -> subprocess.Popen:
    return subprocess.Popen(
        [*SPDU, "--config", site["conf"], *args, "cron", "--for", str(seconds)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spool_of(site, target: str) -> dict:
    return json.loads((site["spool"] / f"{target}.json").read_text())


def pool(knot) -> list[str]:
    return knot.query("api", "A")


def wait_for(predicate, timeout: float) -> float:
    """Seconds until predicate() held; fails the test after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_the_loop_keeps_the_pool_and_ends_within_its_time(site):
    t0 = time.monotonic()
    p = start(site, seconds=6)
    wait_for(lambda: {SELF, BETA, GAMMA} <= set(pool(site["knot"])), 3)
    site["write"]("interval=1\nfastInterval=0.1\n")  # read again by the running loop
    time.sleep(1.2)
    site["servers"]["beta"].behaviour = "503"
    took = wait_for(lambda: BETA not in pool(site["knot"]), 4)
    # fall=2: the second failed probe 0.1 s after the first (fastInterval), not an
    # interval later: out within one interval + fastInterval (+ slack for a busy CI)
    assert took < 1 + 0.1 + 0.5
    out, err = p.communicate(timeout=10)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, err
    assert elapsed < 6 + 1.5  # the loop ends within its time (plus start-up)
    journal = spool_of(site, "beta")["journal"]
    assert [(j["from"], j["to"]) for j in journal] == [("unknown", "up"), ("up", "down")]
    assert [d["action"] for d in journal[-1]["dns"]] == ["delete"]
    assert all(j["notified"] for j in journal)  # mailTo empty: logged only, nothing piles up
    assert out == ""


def test_a_record_removed_by_hand_is_put_back_by_the_drift_check(site):
    """Nothing changes in the spool, so the loop reads DNS only every DRIFT_CHECK
    seconds (its ticks driven by hand here, real probes and real Knot); a pool
    record deleted by someone else is back at the first drift check after."""
    from spdu_cli import config, cycle

    loop = cycle.Loop(cycle.SiteCache(lambda: config.load(site["conf"]), site["conf"]), 60)
    now = 0.0
    loop.tick(now)  # adds both, then checks an interval later that they are there
    while loop.agreed is None and now < 2:
        now += 0.4
        loop.tick(now)
    assert {SELF, BETA, GAMMA} <= set(pool(site["knot"]))
    reads, agreed_at = loop.tally.reconciles, now
    r = site["knot"].nsupdate(f"update delete api.{site['knot'].zone}. A {BETA}")
    assert r.returncode == 0, r.stderr
    while now + 0.4 < agreed_at + cycle.DRIFT_CHECK:  # a probe every interval (0.4 s), all up
        now += 0.4
        loop.tick(now)
    assert loop.tally.reconciles == reads and BETA not in pool(site["knot"])  # DNS not read
    loop.tick(agreed_at + cycle.DRIFT_CHECK)
    assert loop.tally.reconciles == reads + 1 and BETA in pool(site["knot"])
    assert loop.tally.last_error is None


def test_two_loops_started_together_one_runs(site):
    a, b = start(site, seconds=3), start(site, seconds=3)
    codes = {}
    t0 = time.monotonic()
    while len(codes) < 1 and time.monotonic() - t0 < 5:
        for name, p in (("a", a), ("b", b)):
            if p.poll() is not None:
                codes[name] = (p.returncode, time.monotonic() - t0)
        time.sleep(0.02)
    (first, (code, when)), = codes.items()
    other = b if first == "a" else a
    assert code == 75 and when < 2.0  # the second exits at once (after one more try)
    assert "another spdu cron loop holds" in (a if first == "a" else b).stderr.read()
    assert other.poll() is None  # the first goes on
    assert other.wait(timeout=10) == 0


def test_a_failing_reconcile_does_not_stop_the_probes(site, tmp_path):
    from tests.conftest import free_port

    site["write"](name_port=free_port(), name_timeout=0.3)  # no DNS server there
    p = start(site, seconds=2.5)
    time.sleep(0.6)
    site["servers"]["beta"].behaviour = "503"
    _out, err = p.communicate(timeout=10)
    assert p.returncode == 69
    assert "did not answer" in err
    beta = spool_of(site, "beta")
    assert beta["state"] == "down"  # probes went on and saw it die
    assert len(beta["results"]) >= 4


def test_a_relay_that_never_answers_does_not_delay_probes(site):
    relay = SilentRelay()
    try:
        site["write"](f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={relay.port}\n"
                      "smtpSSL=no\nsmtpTimeout=5\n")
        p = start(site, seconds=3)
        time.sleep(0.8)  # the first mail run is now stuck in the relay's silence
        site["servers"]["beta"].behaviour = "503"
        took = wait_for(lambda: BETA not in pool(site["knot"]), 2)
        assert took < 1.5
        _out, err = p.communicate(timeout=15)
        assert p.returncode in (0, 69), err
        assert any(not j["notified"] for j in spool_of(site, "beta")["journal"])  # kept
    finally:
        relay.stop()


def test_sigterm_ends_the_loop_after_the_current_tick(site):
    p = start(site, seconds=30)
    wait_for(lambda: (site["spool"] / "beta.json").exists(), 3)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=5)
    assert time.monotonic() - t0 < 1.5 and p.returncode == 0


def test_a_copy_from_the_next_minute_is_covered_by_the_running_loop(site):
    a = start(site, seconds=4)
    lock = site["spool"] / ".cron.lock"  # its mtime: when a's minute ends (wall clock)
    wait_for(lambda: lock.exists() and lock.read_text().strip(), 5)
    # b's note must come past half of a's time (else it is the copy of a's own
    # minute) and before a looks for the last time, 0.5 s before its end: b is
    # started just past half, counted from a's own start, so a slow start under
    # load still leaves it 1.5 s to leave its note
    time.sleep(max(0.0, os.stat(lock).st_mtime - 2.0 - time.time()))
    b = start(site, seconds=2)
    assert b.wait(timeout=8) == 75
    t0 = time.monotonic()
    assert a.wait(timeout=10) == 0
    assert time.monotonic() - t0 > 1.0  # a ran on to cover b's time


def test_config_error_at_start_is_78_and_no_loop(site, confdir):
    confdir.write("domain=domain.tld\ntargets=beta\nprobePort=99999\n")
    p = start(site, seconds=2)
    _out, err = p.communicate(timeout=10)
    assert p.returncode == 78 and "probePort=99999" in err


def test_spdu_cron_entry_point_logs_to_syslog(site, tmp_path):
    """spdu-cron is `spdu --syslog cron`: transitions and DNS changes go to the
    daemon facility, one line each; nothing for an unchanged tick."""
    import socket

    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    lines: list[str] = []
    stop = threading.Event()

    def collect():
        while not stop.is_set():
            try:
                lines.append(sock.recv(4096).decode())
            except TimeoutError:
                pass

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        site["write"](f"syslogSocket={path}\n")
        spdu_cron = Path(sys.executable).parent / "spdu-cron"
        q = subprocess.run([str(spdu_cron), "--config", site["conf"], "--", "--for", "2"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15)
        assert q.returncode == 0, q.stderr
        assert q.stderr == "" and q.stdout == ""  # nothing on the terminal: cron mails nobody
    finally:
        stop.set()
        thread.join()
        sock.close()
    text = "\n".join(lines)
    assert all(line.startswith("<") for line in lines)
    # <daemon.info>=30: one line per transition (unknown -> up) and the DNS changes
    assert sum("beta is up" in line for line in lines) == 1, text
    assert not any("unknown -> up" in line for line in lines), text  # -v's line: not twice
    assert sum("add api.pool.domain.tld 127.0.0.12" in line for line in lines) == 1, text
    assert len(lines) <= 6, text  # nothing per unchanged tick


def test_the_example_config_is_valid(run, confdir):
    example = Path(__file__).parent.parent / "cron" / "spdu.conf.example"
    confdir.write(example.read_text())
    r = run("config", "check")
    assert r.exit_code == 0, r.stderr
    # no unknown key, no warning but the example's names not resolving here
    assert [ln for ln in r.stderr.splitlines() if "cannot resolve" not in ln] == []


def test_maintenance_set_by_hand_is_applied_mailed_and_counted_by_the_loop(site, smtp_relay,
                                                                           tmp_path):
    relay = smtp_relay()
    prom = tmp_path / "spdu.prom"
    site["write"](f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={relay.port}\n"
                  f"smtpSSL=no\nsmtpStartTLS=no\nmetricsFile={prom}\n")
    p = start(site, seconds=4)
    wait_for(lambda: {BETA, GAMMA} <= set(pool(site["knot"])), 3)
    r = subprocess.run([*SPDU, "--config", site["conf"], "maint", "beta", "--for", "1h",
                        "--reason", "kernel upgrade"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: BETA not in pool(site["knot"]), 2)
    wait_for(lambda: any("beta is in maintenance" in m.message["Subject"]
                         for m in relay.received), 3)
    assert "spdu_target_maintenance{target=\"beta\"} 1" in prom.read_text()
    p.communicate(timeout=10)
    assert p.returncode == 0


@pytest.mark.parametrize("kind", ["missing", "dead", "closes"])
def test_syslog_that_is_not_listening_falls_back_to_stderr(site, tmp_path, kind):
    import socket

    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind != "missing":
        sock.bind(path)
    if kind == "dead":
        sock.close()  # the file stays, nobody listens
    site["write"](f"syslogSocket={path}\n")
    spdu_cron = Path(sys.executable).parent / "spdu-cron"
    p = subprocess.Popen([str(spdu_cron), "--config", site["conf"], "--", "--for", "2"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    if kind == "closes":
        time.sleep(0.8)  # logging to it by now
        sock.close()
        os.unlink(path)
        site["servers"]["beta"].behaviour = "503"  # something to log after it is gone
    _out, err = p.communicate(timeout=15)
    sock.close()
    assert p.returncode == 0, err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("logging to stderr") == 1, err
    if kind == "closes":
        assert "delete api.pool.domain.tld 127.0.0.12" in err  # the line is not lost


def test_sigterm_does_not_wait_for_a_hung_relay(site):
    relay = SilentRelay()
    try:
        site["write"](f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={relay.port}\n"
                      "smtpSSL=no\nsmtpTimeout=30\n")
        p = start(site, seconds=30)
        wait_for(lambda: (site["spool"] / "beta.json").exists(), 3)
        time.sleep(0.5)  # the first mail run now waits on the silent relay
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=10)
        assert time.monotonic() - t0 < 2.5
        assert p.returncode == 69 and "still waiting on the SMTP relay" in err
        assert all(not j["notified"] for j in spool_of(site, "beta")["journal"])  # kept
    finally:
        relay.stop()


def test_a_mail_that_failed_once_and_went_out_later_is_no_error(site, smtp_relay):
    from tests.conftest import free_port

    port = free_port()
    site["write"](f"mailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\nsmtpPort={port}\n"
                  "smtpSSL=no\nsmtpStartTLS=no\n")
    p = start(site, seconds=12)
    wait_for(lambda: (site["spool"] / "beta.json").exists(), 3)
    time.sleep(1)  # the first mail run fails: nothing listens
    relay = smtp_relay(port=port)
    wait_for(lambda: relay.received, 12)  # retried after 10 s
    _out, err = p.communicate(timeout=20)
    assert "refused the connection" in err  # the failure was logged
    assert p.returncode == 0, err  # but nothing was pending at the end


def test_under_spdu_cron_a_second_copy_exits_75_quietly(site, tmp_path):
    a = start(site, seconds=4)
    wait_for(lambda: (site["spool"] / ".cron.lock").exists(), 3)
    time.sleep(0.3)
    spdu_cron = Path(sys.executable).parent / "spdu-cron"
    for verbose in ([], ["-v"]):  # (options beyond --config: the full start, not cronstart)
        b = subprocess.run([str(spdu_cron), *verbose, "--config", site["conf"], "--", "--for",
                            "1"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=15)
        assert b.returncode == 75
        if verbose:  # the usual hand-over: said at info level (syslogSocket=none: stderr)
            assert "another spdu cron loop" in b.stderr
            assert "error:" not in b.stderr and "warning" not in b.stderr.lower()
        else:
            assert b.stderr == ""  # nothing that cron would mail
    assert a.wait(timeout=15) == 0


def test_a_webhook_receiver_that_hangs_does_not_delay_dns(site, webhook_receiver):
    """A site fails while the webhook receiver accepts POSTs and never answers:
    the site is out of DNS on time, the change stays pending for the webhook."""
    hook = webhook_receiver()
    hook.answer = "hang"
    site["write"](f"webhookURL={hook.url}\nwebhookTimeout=5\n")
    os.chmod(site["conf"], 0o600)  # webhookURL is a secret
    p = start(site, seconds=3)
    wait_for(lambda: hook.tried >= 1, 2)  # the first POST (beta, gamma up) now hangs
    site["servers"]["beta"].behaviour = "503"
    took = wait_for(lambda: BETA not in pool(site["knot"]), 2)
    assert took < 1.5
    _out, err = p.communicate(timeout=15)
    assert p.returncode == 69, err
    assert "did not answer within 5 s" in err or "still waiting" in err
    assert "s3cretpath" not in err
    journal = spool_of(site, "beta")["journal"]
    assert journal[-1]["to"] == "down" and not journal[-1]["notified"]  # kept for the next run
