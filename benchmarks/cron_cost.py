"""What an idle minute of the cron loop costs, as cron runs it, next to the other ways.

Starts a real knotd and two HTTP status servers on loopback, lets the pool
settle, then measures CPU and peak memory, with nothing to change, of:
- `spdu-cron` as cron runs it: one loop that goes on from minute to minute
  (`--follow`), and the copy cron starts each minute, which finds the loop
  running, leaves its note and exits 75. Here the copies are started as cron
  would, just after each minute of the loop ends; the loop's own CPU is read
  from /proc at the first and the last of those minutes;
- `spdu-cron --no-follow`: one process a minute, start-up included (what
  0.1.0 did, and the systemd unit does once an hour);
- one `spdu probe`, `spdu reconcile` and `spdu notify` process each, scaled to
  the ticks of one minute.
spdu is measured as its users install it: a wheel of this checkout in a fresh
venv of Debian's python3 (offline, from the wheels .ci/setup downloaded). The
original bash daemon spent about 0.32 CPU-s a minute per target (issue 6);
the goal is an idle minute of `spdu-cron` that costs at most 0.15 CPU-s per
target (issue 14).

Run: .venv/bin/python benchmarks/cron_cost.py [--minutes 3] [--interval 2]
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import machine, measure, row  # noqa: E402
from probe_cost import Quiet, Server  # noqa: E402

from tests.dnsservers import KnotServer  # noqa: E402
from tests.wheel import SYSTEM_PYTHON, WHEELHOUSE, install  # noqa: E402

ORIGINAL_CPU_PER_TARGET_MINUTE = 0.32  # seconds, the bash daemon (issue 6)
GOAL_PER_TARGET_MINUTE = 0.15  # seconds (issue 14): an idle minute, start-up included
TARGETS = ("beta", "gamma")
LOCK = ".cron.lock"  # spdu_cli.handover.LOOP_LOCK: its mtime is when the loop's minute ends


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a running process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> float:
    """Resident memory of a running process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def copy_cpu(cmd: list[str]) -> float:
    """CPU seconds of one copy, as cron starts it; it must exit 75 (the loop took its minute)."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 75:
        raise SystemExit(f"the copy exited {code}, not 75: {err.decode()}")
    return usage.ru_utime + usage.ru_stime


def follow(cron: list[str], spool: Path, minutes: int) -> dict[str, float]:
    """The loop as cron runs it, for 1 + `minutes` minutes; CPU seconds a minute."""
    lock = spool / LOCK
    last_end = lock.stat().st_mtime if lock.exists() else 0.0  # an earlier run's
    loop = subprocess.Popen(cron, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    copies, samples, rss = [], [], []
    for _ in range(minutes + 1):
        while True:  # cron: just after the loop's minute ends (the lock's mtime says when)
            end = lock.stat().st_mtime if lock.exists() else 0.0
            if end > last_end and time.time() >= end + 0.1:
                break
            if loop.poll() is not None:
                raise SystemExit(f"the loop ended: {loop.stderr.read().decode()}")
            time.sleep(0.05)
        samples.append(proc_cpu(loop.pid))
        rss.append(proc_rss(loop.pid))
        copies.append(copy_cpu(cron))
        last_end = end
    loop.send_signal(signal.SIGTERM)  # (without copies, it would end a minute and 5 s later)
    if loop.wait(timeout=30) != 0:
        raise SystemExit(f"the loop failed: {loop.stderr.read().decode()}")
    return {"first": samples[0], "loop": (samples[-1] - samples[0]) / minutes,
            "copy": statistics.median(copies), "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=int, default=3,
                    help="minutes of the following loop measured after its first")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--python", default=SYSTEM_PYTHON,
                    help="the interpreter of spdu's venv (default: Debian's, as users have it)")
    args = ap.parse_args()
    if not (WHEELHOUSE / ".done").exists():
        raise SystemExit("no wheelhouse: run sh .ci/setup")
    import threading

    servers = []
    for host in ("127.0.0.12", "127.0.0.13"):
        srv = Server((host, 0), Quiet)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = install(Path(tmp) / "install", args.python)[0] / "bin"
        version = subprocess.run([str(bin_dir / "python"), "-c",
                                  "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        spdu, spdu_cron = str(bin_dir / "spdu"), str(bin_dir / "spdu-cron")
        knot = KnotServer(Path(tmp) / "knot", records=[])
        try:
            conf = Path(tmp) / "spdu.conf"
            conf.write_text(
                f"domain=domain.tld\ntargets='{' '.join(TARGETS)}'\nspoolDir={tmp}/spool\n"
                f"selfCheck=no\nselfIP=192.0.2.1\nnamePort={knot.port}\ninterval={args.interval:g}\n"
                "syslogSocket=none\n")
            os.chmod(conf, 0o644)
            (Path(tmp) / "spdu").mkdir()
            for name, srv in zip(TARGETS, servers):
                host, port = srv.server_address
                (Path(tmp) / "spdu" / name).write_text(f"targetIP={host}\nprobePort={port}\n")
            base = [spdu, "-c", str(conf)]
            # settle: both up, in the pool, transitions marked (mailTo is empty)
            subprocess.run([*base, "cron", "--for", "3"], check=True)
            serial = knot.serial()
            minute = measure([spdu_cron, "-c", str(conf), "--no-follow"], runs=1)
            cron = follow([spdu_cron, "-c", str(conf)], Path(tmp) / "spool", args.minutes)
            probe = measure([*base, "probe"], runs=5)
            reconcile = measure([*base, "reconcile"], runs=5)
            notify = measure([*base, "notify"], runs=5)
            unchanged = knot.serial() == serial
        finally:
            knot.stop()
    for srv in servers:
        srv.shutdown()

    ticks = 60 / args.interval
    three = (probe["cpu_ms"] + reconcile["cpu_ms"] + notify["cpu_ms"]) / 1000
    steady = cron["loop"] + cron["copy"]
    n = len(TARGETS)
    print(f"cron loop cost, {n} targets up, nothing to change, interval {args.interval:g} s"
          f" ({machine()}; spdu installed from a wheel, on {args.python} {version})")
    print(row("spdu-cron --no-follow (a minute)", minute))
    print(row("spdu probe (a process)", probe))
    print(row("spdu reconcile (a process)", reconcile))
    print(row("spdu notify (a process)", notify))
    print(f"spdu-cron, one loop minute after minute ({args.minutes} minutes after its first):")
    print(f"  the loop's first minute, start-up included: {cron['first']:.3f} CPU-s")
    print(f"  the loop, each minute after:                {cron['loop']:.3f} CPU-s")
    print(f"  the copy cron starts each minute:           {cron['copy']:.3f} CPU-s"
          " (median; it exits 75)")
    print("  the loop's resident memory, minute by minute: "
          + " ".join(f"{m:.1f}" for m in cron["rss"]) + " MiB")
    print(f"  a minute, loop and copy:                    {steady:.3f} CPU-s a minute,"
          f" {steady / n:.3f} per target -> goal <= {GOAL_PER_TARGET_MINUTE:.2f}:"
          f" {'met' if steady / n <= GOAL_PER_TARGET_MINUTE else 'NOT met'}")
    print(f"one process a minute (--no-follow):          {minute['cpu_ms'] / 1000:.3f} CPU-s"
          f" a minute, {minute['cpu_ms'] / 1000 / n:.3f} per target")
    print(f"three processes per tick:                    {three * ticks:.3f} CPU-s a minute"
          f" ({three * 1000:.0f} ms a tick x {ticks:g} ticks)")
    print(f"the original, per target:                    {ORIGINAL_CPU_PER_TARGET_MINUTE:.3f}"
          " CPU-s a minute")
    print(f"zone serial unchanged during the idle loops (nothing sent): "
          f"{'yes' if unchanged else 'NO'}")


if __name__ == "__main__":
    main()
