"""`spdu probe` of one target, two builds side by side: interleaved runs, so a
busy machine slows both alike.

Each checkout needs its own venv (`sh .ci/setup` in it). Both probe the same
HTTP status server on 127.0.0.1 with probeMatch set (the body is parsed); the
script prints median and minimum CPU and wall time of each.

Run: .venv/bin/python benchmarks/probe_ab.py OLD_CHECKOUT NEW_CHECKOUT [--runs 40]
e.g. git worktree add /tmp/spdu-old ec675e7 && (cd /tmp/spdu-old && sh .ci/setup)
     .venv/bin/python benchmarks/probe_ab.py /tmp/spdu-old .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine
from probe_cost import Quiet, Server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="a checkout of spdu with its .venv")
    ap.add_argument("new", help="another checkout of spdu with its .venv")
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    builds = [Path(args.old).resolve(), Path(args.new).resolve()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for b in builds:  # as installed: byte-compiled once
        subprocess.run([str(b / ".venv/bin/python"), "-m", "compileall", "-q",
                        str(b / "spdu_cli")], check=True)

    srv = Server(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "spdu.conf"
        conf.write_text(f"domain=bench.example\ntargets=t0\nspoolDir={tmp}/spool\n"
                        f"targetIP=127.0.0.1\nprobePort={srv.server_address[1]}\n"
                        "probeMatch=ok\nsyslogSocket=none\n")
        os.chmod(conf, 0o644)
        (Path(tmp) / "spdu").mkdir()
        cpu: dict[Path, list[float]] = {b: [] for b in builds}
        wall: dict[Path, list[float]] = {b: [] for b in builds}
        for i in range(args.runs):
            for b in builds if i % 2 else builds[::-1]:
                t = time.perf_counter()
                p = subprocess.Popen([str(b / ".venv/bin/spdu"), "-c", str(conf), "probe",
                                      "t0"], stdout=subprocess.DEVNULL, env=env)
                _, status, usage = os.wait4(p.pid, 0)
                wall[b].append(time.perf_counter() - t)
                cpu[b].append(usage.ru_utime + usage.ru_stime)
                if os.waitstatus_to_exitcode(status) != 0:
                    raise SystemExit(f"{b}: spdu probe exited {status}")
    srv.shutdown()
    print(f"spdu probe t0, 1 target up, probeMatch set, {args.runs} interleaved runs"
          f" ({machine()})")
    for b in builds:
        print(f"{b!s:<40} cpu median {statistics.median(cpu[b]) * 1000:6.1f} ms"
              f"  min {min(cpu[b]) * 1000:6.1f} ms   wall median"
              f" {statistics.median(wall[b]) * 1000:6.1f} ms  min {min(wall[b]) * 1000:6.1f} ms")


if __name__ == "__main__":
    main()
