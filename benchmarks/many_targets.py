"""What a site with thousands of targets costs: `spdu config check` and one
tick of the cron loop, each a real process, for growing numbers of targets.

Each target has its own file (spdu/tN with its targetIP, 127.1.x.y) as the
original's users wrote them; the probes go to a port where nothing listens
(connection refused at once), the pool lives on a real knotd on loopback, and
no mail is configured. One tick is its three steps, each a process: `spdu
probe` (every target, its spool file written), `spdu reconcile` (nothing to
change: every target is down and out of the pool) and `spdu notify` (the
transitions marked). Time that grows faster than the number of targets is the
thing to look for.

Run: .venv/bin/python benchmarks/many_targets.py [--sizes 1000,2000,4000,10000] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, machine  # noqa: E402

from tests.dnsservers import KnotServer, free_port  # noqa: E402


def site(tmp: Path, n: int, name_port: int) -> Path:
    """A configuration of `n` targets under `tmp`; returns the main file."""
    tmp.mkdir()
    conf = tmp / "spdu.conf"
    names = [f"t{i}" for i in range(n)]
    conf.write_text(
        f"domain=domain.tld\ntargets='{' '.join(names)}'\nspoolDir={tmp}/spool\n"
        f"selfCheck=no\nselfIP=192.0.2.1\nnamePort={name_port}\nprobePort={free_port()}\n"
        "probeTimeout=5\nsyslogSocket=none\npeerWait=15\n")  # >= 7.25 s out + peerInterval
    os.chmod(conf, 0o644)
    (tmp / "spdu").mkdir()
    for i, name in enumerate(names):
        (tmp / "spdu" / name).write_text(f"targetIP=127.1.{i // 250}.{i % 250 + 1}\n")
    return conf


def timed(cmd: list[str], runs: int, ok=(0,)) -> float:
    """The best wall time of `runs` runs, in seconds (the command must exit in `ok`)."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        best = min(best, time.perf_counter() - t)
        if p.returncode not in ok:
            raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-2000:]}")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,2000,4000,10000",
                    help="numbers of targets, comma-separated")
    ap.add_argument("--runs", type=int, default=1, help="runs of each command (best is shown)")
    ap.add_argument("--no-tick", action="store_true", help="config check only")
    args = ap.parse_args()
    spdu = str(VENV_BIN / "spdu")
    print(f"many targets ({machine()}); best of {args.runs}")
    print(f"{'targets':>8}  {'config check':>12}  {'probe':>8}  {'reconcile':>9}  {'notify':>8}"
          f"  {'one tick':>9}")
    with tempfile.TemporaryDirectory() as tmp, \
            KnotServer(Path(tmp) / "knot", records=[("api", "A", "192.0.2.1")]) as knot:
        for n in (int(s) for s in args.sizes.split(",")):
            conf = site(Path(tmp) / str(n), n, knot.port)
            base = [spdu, "-c", str(conf)]
            check = timed([*base, "config", "check"], args.runs)
            if args.no_tick:
                print(f"{n:>8}  {check:10.2f} s", flush=True)
                continue
            steps = [timed([*base, "probe"], args.runs, ok=(1,)),  # every target is down
                     timed([*base, "reconcile"], args.runs), timed([*base, "notify"], args.runs)]
            print(f"{n:>8}  {check:10.2f} s  {steps[0]:6.2f} s  {steps[1]:7.2f} s"
                  f"  {steps[2]:6.2f} s"
                  f"  {sum(steps):7.2f} s", flush=True)
        if knot.query("api.pool.domain.tld", "A") != ["192.0.2.1"]:
            raise SystemExit("the pool changed: it should hold selfIP only")


if __name__ == "__main__":
    main()
