"""The cron loop says when it cannot keep up: one warning a minute with the
likely cause, and the gauge spdu_probe_lag_seconds; a real loop of too many
targets for its interval (real knotd, real sockets), and the cause as logic."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time

from prometheus_client.parser import text_string_to_metric_families

from spdu_cli.lag import Minute, Watch, cause
from tests.dnsservers import free_port

SPDU = [sys.executable, "-m", "spdu_cli"]
WARNING = "the loop is falling behind"


def many_targets(confdir, tmp_path, knot, n: int, extra: str = ""):
    """`n` targets at a port where nothing listens: each probe is refused at once
    and cheap, but their number is more than one loop can probe every 0.1 s."""
    names = [f"t{i}" for i in range(n)]
    confdir.write(
        f"domain=domain.tld\ntargets='{' '.join(names)}'\nspoolDir={tmp_path}/spool\n"
        f"selfCheck=no\nselfIP=192.0.2.1\nnameServer=127.0.0.1\nnamePort={knot.port}\n"
        f"probePort={free_port()}\ninterval=0.1\ndownInterval=0.1\nsyslogSocket=none\n"
        f"metricsFile={tmp_path}/spdu.prom\n{extra}")
    for i, name in enumerate(names):
        confdir.write(f"targetIP=127.1.{i // 250}.{i % 250 + 1}\n", target=name)


def test_a_loop_that_cannot_keep_up_warns_once_a_minute_and_has_a_gauge(
        confdir, tmp_path, knot):
    many_targets(confdir, tmp_path, knot, 500)
    cmd = [*SPDU, "-v", "--config", str(confdir.main), "cron", "--for", "3"]
    a = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line)
                                                          for line in a.stderr), daemon=True)
    reader.start()
    gauge: list[float] = []  # read as node_exporter would, while the loop runs

    def scrape():
        while a.poll() is None:
            try:
                gauge.extend(s.value for f in text_string_to_metric_families(
                    (tmp_path / "spdu.prom").read_text()) for s in f.samples
                    if s.name == "spdu_probe_lag_seconds")
            except OSError:
                pass
            time.sleep(0.05)

    threading.Thread(target=scrape, daemon=True).start()
    lock = tmp_path / "spool" / ".cron.lock"
    for _ in range(2):  # two copies, each in the second half of a's minute: 3 minutes
        deadline = time.monotonic() + 10
        while not (lock.exists() and lock.read_text().strip()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        end = os.stat(lock).st_mtime
        time.sleep(max(0.0, end - 1.2 - time.time()))  # past half, before its end
        assert subprocess.run(cmd, capture_output=True, timeout=15).returncode == 75
        time.sleep(max(0.0, end + 0.1 - time.time()))  # a's next minute begins
    assert a.wait(timeout=20) == 0
    reader.join(5)
    warnings = [(t, line) for t, line in lines if WARNING in line]
    runs = [int(re.search(r"\d+ of (\d+) later than", line).group(1)) for _, line in warnings]
    # one a minute (3 s here) and at the end, not one a probe run
    assert 1 <= len(warnings) <= 4 and sum(runs) > len(warnings), warnings
    assert all(b - a >= 1.5 for (a, _), (b, _) in itertools.pairwise(warnings)), warnings
    text = warnings[0][1]
    assert "interval 0.1 s" in text and "likely cause: " in text, text
    assert gauge and max(gauge) > 0.1, gauge


def test_a_loop_that_keeps_up_says_nothing_and_its_gauge_is_near_zero(
        confdir, tmp_path, knot):
    many_targets(confdir, tmp_path, knot, 2, "interval=0.5\ndownInterval=0.5\nstaleAfter=10\n")
    r = subprocess.run([*SPDU, "--config", str(confdir.main), "cron", "--for", "2"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and WARNING not in r.stderr, r.stderr
    prom = (tmp_path / "spdu.prom").read_text()
    lag = [s.value for f in text_string_to_metric_families(prom) for s in f.samples
           if s.name == "spdu_probe_lag_seconds"]
    assert len(lag) == 1 and 0 <= lag[0] < 0.1, lag
    # routine results wait in the loop's memory (Spool.defer), not in the metrics: the
    # last tick's count is every probe, as the file holds once the loop has ended
    total = [s.value for f in text_string_to_metric_families(prom) for s in f.samples
             if s.name == "spdu_probes_total" and s.labels == {"target": "t0"}]
    spool = json.loads((tmp_path / "spool" / "t0.json").read_text())
    assert total == [spool["counters"]["probes"]] and total[0] >= 3, (total, spool["counters"])


# -- the cause (pure) -------------------------------------------------------------------


def minute(**kw) -> Minute:
    base = dict(interval=2.0, seconds=60.0, cpu=10.0, waited=0.1, spool=0.5, probing=20.0,
                longest=1.0, longest_cpu=0.8, worst=1.0, runs=30, late=5)
    return Minute(**{**base, **kw})


def test_the_cause_a_starved_cpu_comes_first():
    assert cause(minute(waited=4.0, cpu=10.0)).startswith("the process did not get the CPU")
    assert cause(minute(waited=None)).startswith("the loop's own work")  # unknown: not blamed


def test_the_cause_slow_spool_writes():
    assert cause(minute(spool=8.0, probing=20.0)).startswith("spool writes took 8.00 s")


def test_the_cause_a_probe_run_longer_than_the_interval():
    assert "too many targets" in cause(minute(longest=3.0, longest_cpu=2.5))
    assert "the disk or the spool lock" in cause(minute(longest=3.0, longest_cpu=0.1))


def test_one_warning_a_period_and_only_when_late():
    w = Watch(now=0.0, period=60.0)
    w.started(0.05, 2.0)  # within tolerance (0.5 s at interval 2)
    w.ran(0.1, 0.05)
    assert w.report(61.0) is None and w.current == 0.05
    w.started(1.5, 2.0)
    w.ran(0.1, 0.05)
    assert w.report(100.0) is None  # the period is not over
    text = w.report(121.5)
    assert text and "up to 1.50 s late in the last 60 s (1 of 1 later than 0.50 s" in text
    assert w.report(200.0, final=True) is None  # nothing late since


def test_after_a_long_tick_the_periods_keep_to_the_loops_minutes():
    """A tick that ran three periods long gives one warning, not one a tick
    until the periods catch up: the next period ends on the loop's minute."""
    w = Watch(now=0.0, period=60.0)
    w.started(1.5, 2.0)
    w.ran(200.0, 1.0)
    assert w.report(200.0)  # late, said once
    w.started(1.5, 2.0)
    assert w.report(201.0) is None and w.report(239.0) is None  # the minute ends at 240
    assert w.report(240.0)
