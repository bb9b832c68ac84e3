"""Failover and recovery time on a real multi-site network (tests/e2e/netlab.py).

Three sites in Linux network namespaces, each with Knot, HAProxy and spdu's
cron loop. For each run, one site fails (HAProxy stopped: connections refused;
or HAProxy stopped with SIGSTOP: connections accepted, never answered) at a
random moment of the probe schedule, and the script measures:

  out   from the failure until no surviving site's DNS answers the dead site
  back  from the repair until every surviving site's DNS answers it again

polling each site's DNS (`ip netns exec SITE kdig @127.0.0.1`) every ~20 ms,
for spdu's default settings and for the fastest settings we call safe, and
prints min / median / max over the runs, next to the worst case that
spdu_cli.health.failover() predicts from the settings. Flap summaries are off
(flapCount=0), so repeated failures are not held back as flapping; that
changes mail only, not DNS.

Needs root (ip netns). Run:
    .venv/bin/python benchmarks/failover.py [--runs 5] [--profile default fast]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402
from tests.e2e.netlab import SITES, Lab  # noqa: E402

from spdu_cli.health import failover  # noqa: E402

#: Settings written to every site's spdu.conf; keys not named keep spdu's defaults.
PROFILES = {
    # spdu's defaults: interval 2, fastInterval 0.5, probeTimeout 2, probeRetries 1,
    # probeFall 2, probeRise 2 (spdu_cli/config.py KEYS)
    "default": {"flapCount": "0"},
    # the fastest we call safe: probe every second; a try may take 1 s (a status
    # answered by HAProxy itself is 2 round trips, < 0.7 s even across the world),
    # and fall/rise stay 2, so one lost packet or one slow answer changes nothing.
    "fast": {"flapCount": "0", "interval": "1", "fastInterval": "0.5", "probeTimeout": "1"},
}
EFFECTIVE = {"interval": 2.0, "fastInterval": 0.5, "probeTimeout": 2.0, "probeRetries": 1,
             "probeFall": 2, "probeRise": 2, "nameTTL": 5}

VICTIM = "gamma"


def survivors() -> list[str]:
    return [s for s in SITES if s != VICTIM]


def predicted(settings: dict[str, str]):
    eff = {k: float(settings.get(k, v)) for k, v in EFFECTIVE.items()}
    return failover(eff["interval"], eff["fastInterval"], eff["probeTimeout"],
                    int(eff["probeRetries"]), int(eff["probeFall"]), int(eff["probeRise"]),
                    eff["nameTTL"])


def one_run(lab: Lab, mode: str, interval: float) -> tuple[float, float]:
    site = lab.sites[VICTIM]
    lab.restore(timeout=60)
    time.sleep(random.uniform(0, interval))  # a random moment of the probe schedule
    t0 = time.monotonic()
    if mode == "refused":
        site.stop_haproxy()
    else:
        site.pause_haproxy()
    out_expect = {s: set(SITES) - {VICTIM} for s in survivors()}
    lab.wait_pool(out_expect, 60, poll=0.02)
    out = time.monotonic() - t0
    time.sleep(random.uniform(0, interval))
    t1 = time.monotonic()
    if mode == "refused":
        site.start_haproxy()
    else:
        site.resume_haproxy()
    lab.wait_pool({s: set(SITES) for s in survivors()}, 60, poll=0.02)
    return out, time.monotonic() - t1


def fmt(values: list[float]) -> str:
    return (f"{min(values):5.2f} / {statistics.median(values):5.2f} / {max(values):5.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", nargs="+", choices=sorted(PROFILES), default=["default", "fast"])
    ap.add_argument("--mode", nargs="+", choices=["refused", "hang"], default=["refused", "hang"])
    args = ap.parse_args()

    rows = []
    for name in args.profile:
        settings = PROFILES[name]
        interval = float(settings.get("interval", EFFECTIVE["interval"]))
        with Lab(settings=settings) as lab:
            lab.wait_pool(lab.full(), 60)
            for mode in args.mode:
                outs, backs = [], []
                for i in range(args.runs):
                    out, back = one_run(lab, mode, interval)
                    outs.append(out)
                    backs.append(back)
                    print(f"  {name:7} {mode:7} run {i + 1}: out {out:5.2f} s, back {back:5.2f} s",
                          file=sys.stderr)
                rows.append((name, mode, outs, backs, predicted(settings)))

    print(f"failover on 3 namespaced sites (Knot + HAProxy + spdu cron each), victim {VICTIM},"
          f" {args.runs} runs ({machine()})")
    for name in args.profile:
        shown = {**{k: str(v) for k, v in EFFECTIVE.items() if k != "nameTTL"},
                 **{k: v for k, v in PROFILES[name].items() if k != "flapCount"}}
        print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    print(f"{'settings':8} {'failure':8} {'out of DNS min/median/max':28} {'worst':>6}"
          f"   {'back in DNS min/median/max':28} {'worst':>6}")
    for name, mode, outs, backs, pred in rows:
        worst_out = pred.out_refused if mode == "refused" else pred.out_hang
        print(f"{name:8} {mode:8} {fmt(outs):28} {worst_out:5.1f}s   {fmt(backs):28}"
              f" {pred.back:5.1f}s")
    print("worst: spdu_cli.health.failover() from the settings, before a reconcile's"
          " milliseconds; clients see the change up to nameTTL (5 s) later")


if __name__ == "__main__":
    main()
