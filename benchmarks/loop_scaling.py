"""Whether one cron loop keeps its schedule with many targets up: `spdu cron
--for SECONDS` at interval 2 for 100, 1,000 and 3,000 targets, each a real process.

One HAProxy answers every target's status URL (200 "ok"), bound on one
loopback address per target (127.2.x.y), so every probe is a real HTTP
exchange and keeps its connection, as on a site; the pool lives on a real
knotd, no mail is configured. Each size is settled first (a short loop: every
target up and in the pool), then measured in a second loop. Printed per
size: probes per target per minute against the schedule (60 / interval; from
the spool's probe counters), CPU-s per target-minute (start-up included),
the loop's wall, CPU and peak memory (GNU time), and its "falling behind"
warnings with the worst lateness they report.

Goal (issue 23): 1,000 targets keep interval 2 s at <= 0.05 CPU-s per
target-minute and <= 100 MiB.

Run: .venv/bin/python benchmarks/loop_scaling.py [--sizes 100,1000,3000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import GNU_TIME, VENV_BIN, installed_env, machine  # noqa: E402

from tests.dnsservers import KnotServer, free_port  # noqa: E402

INTERVAL = 2.0
GOAL_CPU = 0.05  # CPU-s per target-minute, at 1,000 targets
GOAL_MIB = 100.0


def address(i: int) -> str:
    return f"127.2.{i // 250}.{i % 250 + 1}"


class HAProxy:
    """One haproxy process answering 200 on `port` of each of `n` addresses."""

    def __init__(self, tmp: Path, n: int, port: int):
        self.cfg = tmp / "haproxy.cfg"
        binds = "\n".join(f"  bind {address(i)}:{port}" for i in range(n))
        self.cfg.write_text(
            f"global\n  maxconn {2 * n + 100}\n"
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n"
            "  timeout server 30s\n  timeout http-request 5s\n  timeout http-keep-alive 30s\n"
            "frontend api\n" + binds + "\n"
            '  http-request return status 200 content-type text/plain string "ok"\n')
        self.log = open(tmp / "haproxy.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([shutil.which("haproxy") or "haproxy", "-db", "-f",
                                      str(self.cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        for i in (0, n - 1):
            while True:
                try:
                    socket.create_connection((address(i), port), 0.5).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"haproxy does not answer: "
                                         f"{(tmp / 'haproxy.log').read_text()[-2000:]}"
                                         ) from None
                    time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def site(tmp: Path, n: int, name_port: int, port: int) -> Path:
    conf = tmp / "spdu.conf"
    names = [f"t{i}" for i in range(n)]
    conf.write_text(
        f"domain=domain.tld\ntargets='{' '.join(names)}'\nspoolDir={tmp}/spool\n"
        f"selfCheck=no\nselfIP=192.0.2.1\nnameServer=127.0.0.1\nnamePort={name_port}\nnameTimeout=5\n"
        f"probePort={port}\ninterval={INTERVAL:g}\nsyslogSocket=none\n")
    os.chmod(conf, 0o644)
    (tmp / "spdu").mkdir()
    for i, name in enumerate(names):
        (tmp / "spdu" / name).write_text(f"targetIP={address(i)}\n")
    return conf


def probes(spool: Path, n: int) -> int:
    """Every target's probe counter, summed."""
    total = 0
    for i in range(n):
        try:
            total += json.loads((spool / f"t{i}.json").read_text())["counters"]["probes"]
        except (OSError, ValueError, KeyError):
            pass
    return total


def loop(conf: Path, seconds: float, env: dict) -> dict:
    """One `spdu -v cron --for SECONDS`: wall, CPU, peak memory, warnings, exit
    status (69 when the background mail run, logging thousands of transitions,
    did not end with the loop: the next run marks them)."""
    cmd = [str(VENV_BIN / "spdu"), "-v", "-c", str(conf), "cron", "--for", f"{seconds:g}"]
    gnu = os.access(GNU_TIME, os.X_OK)
    argv = [GNU_TIME, "-f", "%M", *cmd] if gnu else cmd
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                         text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    lines = err.splitlines()
    if code not in (0, 69) or not lines[-1].isdigit():
        raise SystemExit(f"spdu cron exited {code}: {err[-3000:]}")
    peak = int(lines[-1]) / 1024 if gnu else usage.ru_maxrss / 1024
    warnings = [line for line in lines if "falling behind" in line]
    worst = max((float(m.group(1)) for w in warnings
                 if (m := re.search(r"up to ([\d.]+) s late", w))), default=0.0)
    done = next((line for line in lines if "cron loop done" in line), "")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak": peak, "code": code,
            "warnings": warnings, "worst": worst, "done": done.split("done: ")[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,1000,3000", help="numbers of targets, comma-separated")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the measured loop")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="length of the settling loop, plus 1 s per 100 targets")
    ap.add_argument("--show-warnings", action="store_true", help="print the loop's warnings")
    args = ap.parse_args()
    env = installed_env()
    schedule = 60 / INTERVAL
    print(f"loop scaling ({machine()}): spdu cron --for {args.seconds:g}, interval"
          f" {INTERVAL:g} s (schedule: {schedule:g} probes per target per minute), one HAProxy")
    print(f"{'targets':>7}  {'probes/target-min':>17}  {'CPU-s/target-min':>16}  {'wall':>7}"
          f"  {'CPU':>7}  {'peak':>9}  {'warnings (worst lag)':>20}")
    with tempfile.TemporaryDirectory() as tmp, \
            KnotServer(Path(tmp) / "knot", records=[("api", "A", "192.0.2.1")]) as knot:
        for n in (int(s) for s in args.sizes.split(",")):
            d = Path(tmp) / str(n)
            d.mkdir()
            port = free_port()
            proxy = HAProxy(d, n, port)
            try:
                conf = site(d, n, knot.port, port)
                loop(conf, args.settle + n / 100, env)  # every target up and in the pool
                before = probes(d / "spool", n)
                m = loop(conf, args.seconds, env)
                made = probes(d / "spool", n) - before
            finally:
                proxy.stop()
            per_target = made / n / (args.seconds / 60)
            cpu_tm = m["cpu"] / n / (args.seconds / 60)
            print(f"{n:>7}  {per_target:9.1f} of {schedule:<5g}  {cpu_tm:16.4f}  {m['wall']:5.1f} s"
                  f"  {m['cpu']:5.1f} s  {m['peak']:5.1f} MiB  {len(m['warnings']):>7}"
                  f" ({m['worst']:.2f} s)" + (f"  exit {m['code']}" if m["code"] else ""),
                  flush=True)
            if args.show_warnings:
                for w in m["warnings"]:
                    print(f"         {w}")
                print(f"         {m['done']}")
            if n == 1000:
                ok = per_target >= 0.95 * schedule and cpu_tm <= GOAL_CPU and m["peak"] <= GOAL_MIB
                print(f"         goal at 1,000 (>= 95% of the schedule, <= {GOAL_CPU} CPU-s per"
                      f" target-minute, <= {GOAL_MIB:g} MiB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
