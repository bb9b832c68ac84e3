"""What one idle tick of the cron loop costs, and what each command costs next
to the bare import of the one dependency it cannot avoid.

Starts a real knotd and two HTTP status servers on loopback (the same servers
as probe_cost.py and reconcile_cost.py), lets the pool settle, then:

* the CPU of one idle tick (probe + reconcile, nothing to change, no mail
  pending) inside `spdu cron`: the CPU of a long and a short loop, each a real
  process, the difference divided by the difference of their tick counts (the
  loop logs its ticks), so start-up is not counted;
* the wall time of `spdu probe`, `spdu reconcile` and `spdu notify` (one
  process each, nothing to do) as a ratio to `python -c pass` and to the bare
  import of their unavoidable dependency: nothing beyond the standard library
  for probe (compared with `import requests`, what a probe would cost with
  it), dnspython for reconcile, smtplib and email for notify.

Run: .venv/bin/python benchmarks/tick_cost.py [--runs 15] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, machine, measure, row  # noqa: E402
from probe_cost import Quiet, Server  # noqa: E402

from tests.dnsservers import KnotServer  # noqa: E402

INTERVAL = 1.0  # the loop's interval while measuring (per-tick cost does not depend on it)


def loop_cpu(base: list[str], seconds: float) -> tuple[float, int]:
    """CPU seconds and ticks of one `spdu -v cron --for SECONDS` process."""
    p = subprocess.Popen([*base[:1], "-v", *base[1:], "cron", "--for", f"{seconds:g}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(p.stderr), daemon=True)
    reader.start()
    _, status, usage = os.wait4(p.pid, 0)
    reader.join(5)
    err = "".join(err_lines)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"spdu cron exited {os.waitstatus_to_exitcode(status)}: {err}")
    m = re.search(r"cron loop done: (\d+) ticks?, (\d+) probe runs?, (\d+) reconciles?", err)
    if not m:
        raise SystemExit(f"no tick count in spdu cron's log: {err}")
    if re.search(r"\b(add|delete) api\.", err):
        raise SystemExit(f"the loop was not idle (it changed DNS): {err}")
    return usage.ru_utime + usage.ru_stime, int(m.group(1))


@contextmanager
def idle_site(interval: float = INTERVAL):
    """A site with nothing to do: knotd on loopback, two status servers up and
    already in the pool, their transitions marked, mail configured and nothing
    pending. Yields (spdu command with -c CONF, the KnotServer)."""
    servers = []
    for host in ("127.0.0.12", "127.0.0.13"):
        srv = Server((host, 0), Quiet)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                KnotServer(Path(tmp) / "knot", records=[("api", "A", "192.0.2.1")]) as knot:
            conf = Path(tmp) / "spdu.conf"
            common = (f"domain=domain.tld\ntargets='beta gamma'\nspoolDir={tmp}/spool\n"
                      f"selfCheck=no\nselfIP=192.0.2.1\nnamePort={knot.port}\ninterval={interval:g}\n"
                      "syslogSocket=none\nsmtpRelay=127.0.0.1\nsmtpSSL=no\n")
            conf.write_text(common)
            os.chmod(conf, 0o644)
            (Path(tmp) / "spdu").mkdir()
            for name, srv in zip(("beta", "gamma"), servers):
                host, port = srv.server_address
                (Path(tmp) / "spdu" / name).write_text(f"targetIP={host}\nprobePort={port}\n")
            base = [str(VENV_BIN / "spdu"), "-c", str(conf)]
            # settle: both up and in the pool, the transitions marked (no mailTo yet)
            subprocess.run([*base, "cron", "--for", "3"], check=True)
            conf.write_text(common + "mailTo=ops@domain.tld\n")  # nothing is pending
            yield base, knot
    finally:
        for srv in servers:
            srv.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each command")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the long loop")
    ap.add_argument("--loops", type=int, default=3, help="long/short loop pairs")
    args = ap.parse_args()

    with idle_site() as (base, knot):
        serial = knot.serial()
        per_tick = []
        for _ in range(args.loops):
            cpu_long, ticks_long = loop_cpu(base, args.seconds)
            cpu_short, ticks_short = loop_cpu(base, max(2.0, args.seconds / 5))
            per_tick.append((cpu_long - cpu_short) / (ticks_long - ticks_short))
        bare = measure([sys.executable, "-c", "pass"], args.runs)
        req = measure([sys.executable, "-c", "import requests"], args.runs)
        dnsp = measure([sys.executable, "-c", "import dns.message, dns.query, dns.update"],
                       args.runs)
        mail = measure([sys.executable, "-c", "import smtplib, email"], args.runs)
        probe = measure([*base, "probe", "beta"], args.runs)
        reconcile = measure([*base, "reconcile"], args.runs)
        notify = measure([*base, "notify"], args.runs)
        unchanged = knot.serial() == serial

    tick_ms = statistics.median(per_tick) * 1000
    print(f"idle tick and command cost ({machine()})")
    print(f"one idle tick in spdu cron (2 targets up, probe + reconcile, nothing to change):"
          f" {tick_ms:.1f} CPU ms (median of {args.loops}: "
          + ", ".join(f"{t * 1000:.1f}" for t in per_tick) + ")")
    print(f"  -> an idle minute: {tick_ms * 60 / 2 / 1000:.3f} CPU-s at interval 2,"
          f" {tick_ms * 60 / 1000:.3f} CPU-s at interval 1 (plus one start-up a minute)")
    print(row("python -c pass", bare))
    print(row('python -c "import requests"', req))
    print(row('python -c "import dns.message, dns.query, dns.update"', dnsp))
    print(row('python -c "import smtplib, email"', mail))
    print(row("spdu probe beta (1 target, up)", probe))
    print(row("spdu reconcile (in sync)", reconcile))
    print(row("spdu notify (nothing pending)", notify))
    print("wall-time ratios (command / bare import of its unavoidable dependency):")
    for name, m, dep, dep_name in (
        ("probe", probe, bare, "python -c pass (stdlib only)"),
        ("probe", probe, req, "import requests"),
        ("reconcile", reconcile, dnsp, "import dns.message, dns.query, dns.update"),
        ("notify", notify, mail, "import smtplib, email"),
    ):
        print(f"  spdu {name:<9} / {dep_name:<42} {m['wall_ms'] / dep['wall_ms']:5.2f}")
    print(f"zone serial unchanged while idle (nothing sent): {'yes' if unchanged else 'NO'}")


if __name__ == "__main__":
    main()
