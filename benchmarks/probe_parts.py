"""What an idle probe in the cron loop costs, and what each part of it costs.

N targets up (one HAProxy on N loopback addresses, as in loop_scaling.py),
the pool on a real knotd, settled first. Then, for each code tree given
(`--code DIR`, several for a before/after in the same run, alternating):

* the CPU per probe: a long and a short `spdu cron` loop, each a real
  process, the difference of their CPU divided by the difference of their
  probes (from the spool's counters), so start-up is not counted;
* with `--profile`, the parts: one loop run in this process under cProfile
  with a CPU clock (the loop's thread), the cumulative CPU of each part
  divided by the probes made.

Run: .venv/bin/python benchmarks/probe_parts.py [--targets 50] [--seconds 20]
     [--code /path/to/old/tree --code .] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, installed_env, machine  # noqa: E402
from loop_scaling import HAProxy, probes, site  # noqa: E402

from tests.dnsservers import KnotServer, free_port  # noqa: E402

# part -> the functions whose cumulative time it is (file suffix, function name)
PARTS = {
    "probe (connect, HTTP, h11, the rounds)": [("probe/rounds.py", "probe_rounds")],
    "spool: write (json, temp file, fsync, rename)": [("spool.py", "write")],
    "spool: directory fsync": [("spool.py", "sync_dir")],
    "spool: read in the probe step": [("probe/step.py", "_entry_or_fresh")],
    "spool: lock": [("spool.py", "locked")],
    "tick: config stamp (stat of every file)": [("cycle.py", "get")],
    "tick: spool read for reconcile": [("cycle.py", "_entries")],
    "tick: reconcile.standing": [("cycle.py", "standing")],
    "tick: reconcile (DNS read)": [("cycle.py", "reconcile")],
    "the whole loop": [("cycle.py", "_run")],
}


def cpu_per_probe(code: str, conf: Path, spool: Path, n: int, seconds: float) -> float:
    env = {**installed_env(), "PYTHONPATH": code}
    cmd = [str(VENV_BIN / "spdu"), "-c", str(conf), "cron", "--for"]
    out = []
    for s in (seconds, max(2.0, seconds / 5)):
        before = probes(spool, n)
        p = subprocess.Popen([*cmd, f"{s:g}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"spdu cron ({code}) exited {os.waitstatus_to_exitcode(status)}")
        out.append((usage.ru_utime + usage.ru_stime, probes(spool, n) - before))
    (cpu_long, p_long), (cpu_short, p_short) = out
    return (cpu_long - cpu_short) / (p_long - p_short)


def profile(code: str, conf: Path, spool: Path, n: int, seconds: float) -> None:
    """One loop in a child Python under cProfile (thread CPU clock); prints the parts."""
    script = f"""
import cProfile, pstats, sys, time, json
sys.path.insert(0, {code!r})
from spdu_cli.cli import cli
pr = cProfile.Profile(time.thread_time)
pr.enable()
try:
    cli.main(["-c", {str(conf)!r}, "cron", "--for", "{seconds:g}"], standalone_mode=False)
finally:
    pr.disable()
st = pstats.Stats(pr).stats
print(json.dumps([[f, n, ct] for (f, _l, n), (_cc, _nc, _tt, ct, _c) in st.items()]))
"""
    before = probes(spool, n)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**installed_env(), "PYTHONPATH": code}, check=True)
    made = probes(spool, n) - before
    import json

    rows = json.loads(r.stdout.splitlines()[-1])
    print(f"  parts, CPU per probe ({made} probes, under cProfile: inflated, read the shares):")
    for part, funcs in PARTS.items():
        total = sum(ct for f, name, ct in rows
                    if any(f.endswith(suffix) and name == fn for suffix, fn in funcs))
        print(f"    {part:<48} {total / made * 1000:7.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=50, help="targets up")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the long loop")
    ap.add_argument("--runs", type=int, default=3, help="long/short loop pairs per tree")
    ap.add_argument("--code", action="append", help="code tree to measure (repeatable;"
                    " default: this one)")
    ap.add_argument("--profile", action="store_true", help="also profile the parts")
    args = ap.parse_args()
    trees = [str(Path(c).resolve()) for c in (args.code or [str(ROOT)])]
    n = args.targets
    print(f"idle probe cost ({machine()}): {n} targets up, interval 2 s, one HAProxy")
    with tempfile.TemporaryDirectory() as tmp, \
            KnotServer(Path(tmp) / "knot", records=[("api", "A", "192.0.2.1")]) as knot:
        d = Path(tmp) / "site"
        d.mkdir()
        port = free_port()
        proxy = HAProxy(d, n, port)
        try:
            conf = site(d, n, knot.port, port)
            subprocess.run([str(VENV_BIN / "spdu"), "-c", str(conf), "cron", "--for", "8"],
                           env={**installed_env(), "PYTHONPATH": trees[0]}, check=True,
                           stderr=subprocess.DEVNULL)
            per: dict[str, list[float]] = {t: [] for t in trees}
            for _ in range(args.runs):  # alternating, so both see the same machine
                for t in trees:
                    per[t].append(cpu_per_probe(t, conf, d / "spool", n, args.seconds))
                    time.sleep(0.5)
            for t in trees:
                print(f"{t}: {statistics.median(per[t]) * 1000:.3f} CPU ms per idle probe"
                      f" (median of {args.runs}: "
                      + ", ".join(f"{x * 1000:.3f}" for x in per[t]) + ")")
                if args.profile:
                    profile(t, conf, d / "spool", n, args.seconds)
        finally:
            proxy.stop()


if __name__ == "__main__":
    main()
