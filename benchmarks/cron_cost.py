"""What an idle minute of the cron loop costs, next to three processes per tick.

Starts a real knotd and two HTTP status servers on loopback, lets the pool
settle, then measures CPU and peak memory of `spdu cron` (one process looping
probe -> reconcile -> notify every `interval` seconds, nothing to change), and
of one `spdu probe`, `spdu reconcile` and `spdu notify` process each, scaled to
the ticks of one minute. The original bash daemon spent about 0.32 CPU-s a
minute per target (issue 6); the goal is an idle minute of `spdu cron`,
start-up included, that costs at most 0.15 CPU-s per target (issue 14).

Run: .venv/bin/python benchmarks/cron_cost.py [--seconds 60] [--interval 2] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, machine, measure, row  # noqa: E402
from probe_cost import Quiet, Server  # noqa: E402

from tests.dnsservers import KnotServer  # noqa: E402

ORIGINAL_CPU_PER_TARGET_MINUTE = 0.32  # seconds, the bash daemon (issue 6)
GOAL_PER_TARGET_MINUTE = 0.15  # seconds (issue 14): an idle minute, start-up included
TARGETS = ("beta", "gamma")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0,
                    help="length of the measured loop (a shorter one overstates the"
                         " per-minute cost: its start-up is scaled up with it)")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=1,
                    help="measured loops (the median is printed; a shared machine varies)")
    args = ap.parse_args()
    import threading

    servers = []
    for host in ("127.0.0.12", "127.0.0.13"):
        srv = Server((host, 0), Quiet)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    spdu = str(VENV_BIN / "spdu")
    with tempfile.TemporaryDirectory() as tmp:
        knot = KnotServer(Path(tmp) / "knot", records=[])
        try:
            conf = Path(tmp) / "spdu.conf"
            conf.write_text(
                f"domain=domain.tld\ntargets='{' '.join(TARGETS)}'\nspoolDir={tmp}/spool\n"
                f"selfIP=192.0.2.1\nnamePort={knot.port}\ninterval={args.interval:g}\n"
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
            loop = measure([*base, "cron", "--for", f"{args.seconds:g}"], runs=args.runs)
            probe = measure([*base, "probe"], runs=5)
            reconcile = measure([*base, "reconcile"], runs=5)
            notify = measure([*base, "notify"], runs=5)
            unchanged = knot.serial() == serial
        finally:
            knot.stop()
    for srv in servers:
        srv.shutdown()

    ticks = 60 / args.interval
    per_minute = loop["cpu_ms"] / 1000 * 60 / args.seconds
    three = (probe["cpu_ms"] + reconcile["cpu_ms"] + notify["cpu_ms"]) / 1000
    print(f"cron loop cost, 2 targets up, nothing to change, interval {args.interval:g} s"
          f" ({machine()})")
    print(row(f"spdu cron --for {args.seconds:g}", loop))
    print(row("spdu probe (a process)", probe))
    print(row("spdu reconcile (a process)", reconcile))
    print(row("spdu notify (a process)", notify))
    print(f"one process per minute (spdu-cron): {per_minute:.3f} CPU-s a minute")
    print(f"three processes per tick:           {three * ticks:.3f} CPU-s a minute"
          f" ({three * 1000:.0f} ms a tick x {ticks:g} ticks)")
    per_target = per_minute / len(TARGETS)
    print(f"spdu-cron per target:               {per_target:.3f} CPU-s a minute"
          f" -> goal <= {GOAL_PER_TARGET_MINUTE:.2f}:"
          f" {'met' if per_target <= GOAL_PER_TARGET_MINUTE else 'NOT met'}")
    print(f"the original, per target:           {ORIGINAL_CPU_PER_TARGET_MINUTE:.3f}"
          " CPU-s a minute")
    print(f"zone serial unchanged during the idle loop (nothing sent): "
          f"{'yes' if unchanged else 'NO'}")


if __name__ == "__main__":
    main()
