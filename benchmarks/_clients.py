"""benchmarks/failover.py --clients: failover as clients behind real resolvers see it.

The lab of tests/e2e/clientlab.py: the three sites, a parent serving the
lab's root and domain.tld (delegating pool.domain.tld to every site's Knot,
lua.domain.tld to every site's PowerDNS LUA), and a client namespace with
Unbound, BIND and PowerDNS Recursor at their packaged defaults. Clients ask
api.domain.tld (CNAME api.pool: spdu) and api-lua.domain.tld (CNAME api.lua:
PowerDNS's ifurlup, at its defaults) through each resolver every 100 ms,
several clients per resolver and name, each query from a new socket.

For each run, one site (gamma) fails at a random moment of both schedules,
as in the authoritative mode (refused, hang, link; in link the dead site's
Knot and PowerDNS die with it), and the script measures per resolver and
system:

  out   from the failure until no answer any client gets holds the dead
        site's address (and none does for --hold seconds more, and until the
        repair)
  back  from the repair until every answer every client gets holds it again
        (for --hold seconds)

A run whose answers are not settled within --timeout seconds counts as
never (shown as "> TIMEOUT"). p50 and p95 are nearest-rank over the runs.
The goal: p95 <= spdu's own worst case (spdu_cli.health.failover() from its
defaults) + nameTTL + 1 s.
"""

from __future__ import annotations

import math
import random
import sys
import time

from spdu_cli.health import failover
from tests.e2e.clientlab import NAMES, ClientLab
from tests.e2e.netlab import v4

VICTIM = "gamma"
SYSTEMS = {"spdu": "spdu defaults", "pdns": "PowerDNS LUA"}
SPDU_INTERVAL, PDNS_INTERVAL = 2.0, 5.0
NAME_TTL = 5.0  # spdu's default, and the TTL of PowerDNS's LUA record here


def spdu_worst():
    """spdu's own worst cases at its defaults (spdu_cli/config.py KEYS)."""
    return failover(SPDU_INTERVAL, 0.25, 1.5, 1, 2, 2, NAME_TTL, 0.5)


def goal(mode: str) -> tuple[float, float]:
    """(out, back) bounds: spdu's worst case + nameTTL + 1 s."""
    f = spdu_worst()
    out = f.out_refused if mode == "refused" else f.out_hang
    return out + NAME_TTL + 1, f.back + NAME_TTL + 1


def phase() -> float:
    tenths = math.lcm(round(SPDU_INTERVAL * 10), round(PDNS_INTERVAL * 10))
    return random.uniform(0, tenths / 10)


def nearest_rank(values: list[float | None], q: float) -> float | None:
    """The q-quantile by nearest rank; None (never) sorts last."""
    ordered = sorted(values, key=lambda v: math.inf if v is None else v)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def fail(lab: ClientLab, mode: str) -> None:
    site = lab.sites[VICTIM]
    {"refused": site.stop_haproxy, "hang": site.pause_haproxy,
     "link": lambda: site.set_link(False)}[mode]()


def repair(lab: ClientLab, mode: str) -> None:
    site = lab.sites[VICTIM]
    {"refused": site.start_haproxy, "hang": site.resume_haproxy,
     "link": lambda: site.set_link(True)}[mode]()


def one_run(lab: ClientLab, mode: str, hold: float, timeout: float) -> dict:
    clients = lab.clients
    dead = v4(lab.sites[VICTIM].host)
    every = {v4(s.host) for s in lab.sites.values()}
    lab.restore(timeout=60)
    clients.wait_all(lambda got: got == every, time.monotonic(), 60, "the full pool", hold=0)
    time.sleep(phase())
    t0 = time.monotonic()
    fail(lab, mode)

    def without(got):
        return bool(got) and dead not in got

    out = clients.wait_all(without, t0, timeout, f"{VICTIM} out", hold)
    own = lab.sites[VICTIM].answers() if mode != "link" else set()
    time.sleep(phase())
    t1 = time.monotonic()
    for pair, v in out.items():  # an answer with the dead site after it was out: not out
        if v is not None and clients.since_settled(*pair, without, t0 + v):
            out[pair] = None
    failed_out = clients.failures(t0, t1)
    repair(lab, mode)

    def holding(got):
        return got == every

    back = clients.wait_all(holding, t1, timeout, f"{VICTIM} back", hold)
    failed_back = clients.failures(t1)
    return {"out": out, "back": back, "own": own,
            "failed": {p: failed_out[p] + failed_back[p] for p in failed_out}}


def show(v: float | None, timeout: float) -> str:
    return f"> {timeout:g} s" if v is None else f"{v:.2f} s"


def main(args, command: str, machine: str) -> None:
    results = {}  # mode -> [run]
    with ClientLab() as lab:
        lab.start_clients(per_name=args.per_name, poll=0.1)
        for mode in args.mode:
            results[mode] = []
            for i in range(args.runs):
                r = one_run(lab, mode, args.hold, args.timeout)
                results[mode].append(r)
                print(f"  {mode:7} run {i + 1}: " + "; ".join(
                    f"{res}/{sys_} out {show(r['out'][(res, sys_)], args.timeout)}"
                    f" back {show(r['back'][(res, sys_)], args.timeout)}"
                    f" failed {r['failed'][(res, sys_)]}"
                    for res in lab.resolvers for sys_ in NAMES), flush=True,
                      file=sys.stderr)
        resolvers = lab.resolvers
    f = spdu_worst()
    print(f"client-side failover: 3 namespaced sites, victim {VICTIM}; resolvers Unbound 1.17,"
          f" BIND 9.18, PowerDNS Recursor 4.8 at their Debian defaults, recursing from the"
          f" lab's root; {args.per_name} clients per resolver and name asking every 0.1 s;"
          f" {args.runs} runs; settled = {args.hold:g} s without a contrary answer"
          f" ({machine})")
    print(f"  spdu defaults: worst out {f.out_refused:g} s refused, {f.out_hang:g} s hang/link,"
          f" back {f.back:g} s (health.failover()), nameTTL {NAME_TTL:g}; PowerDNS 4.7 LUA"
          f" ifurlup at its defaults (interval 5 s, timeout 2 s), TTL 5")
    print(f"{'failure':8} {'resolver':9} {'system':14} {'out p50':>9} {'out p95':>9}"
          f" {'back p50':>9} {'back p95':>9} {'failed':>6}  goal (p95 <= spdu + TTL + 1 s)")
    for mode, runs in results.items():
        g_out, g_back = goal(mode)
        for res in resolvers:
            for sys_ in NAMES:
                outs = [r["out"][(res, sys_)] for r in runs]
                backs = [r["back"][(res, sys_)] for r in runs]
                failed = sum(r["failed"][(res, sys_)] for r in runs)
                p95o, p95b = nearest_rank(outs, 0.95), nearest_rank(backs, 0.95)
                ok = (p95o is not None and p95o <= g_out and p95b is not None
                      and p95b <= g_back)
                print(f"{mode:8} {res:9} {SYSTEMS[sys_]:14}"
                      f" {show(nearest_rank(outs, 0.5), args.timeout):>9}"
                      f" {show(p95o, args.timeout):>9}"
                      f" {show(nearest_rank(backs, 0.5), args.timeout):>9}"
                      f" {show(p95b, args.timeout):>9} {failed:>6}"
                      f"  out <= {g_out:g} s, back <= {g_back:g} s: {'met' if ok else 'NOT met'}")
        owns = {" ".join(sorted(r["own"])) for r in runs if r["own"]}
        if owns:
            print(f"  {mode}: the dead site's own Knot answered {' | '.join(sorted(owns))}"
                  f" during the failure (with selfCheck=no it keeps its own address, selfIP)")
    print("failed: answers that were SERVFAIL or another error rcode, or none within 2 s,"
          " over all runs and clients; p50/p95 nearest-rank")
    print(f"> {args.timeout:g} s: not settled ({args.hold:g} s in a row with the change) within"
          f" {args.timeout:g} s of the failure or the repair")
    print(f"command: {command}")
