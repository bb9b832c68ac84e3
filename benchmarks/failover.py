"""Failover and recovery time on a real multi-site network, spdu and PowerDNS side by side.

Three sites in Linux network namespaces (tests/e2e/netlab.py), each with Knot,
HAProxy and spdu's cron loop. Each surviving site also runs PowerDNS
Authoritative 4.7 (pdns_server, bind backend, on 127.0.0.1:5300 in the site's
namespace) answering the same pool name from a LUA record,

    api IN LUA A "ifurlup('http://api.domain.tld/status',
                          {{'192.0.2.1', '192.0.2.2', '192.0.2.3'}}, {selector='all'})"

at PowerDNS's defaults (a check of every address every 5 s,
lua-health-checks-interval; 2 s timeout), against the same HAProxy backends.
For each run, one site fails at a random moment of both schedules:

  refused  HAProxy stopped: new connections refused (and the connection spdu
           kept from its last good probe closed by the kernel at once)
  hang     HAProxy SIGSTOPped: connections accepted, never answered
  link     the site's network link down: nothing answers, not even its kernel
           (a host that dies; --mode link, not run by default)

and the script measures for both systems on that same failure:

  out   from the failure until no surviving site's DNS answers the dead site
  back  from the repair until every surviving site's DNS answers it again

A watcher in each surviving site's namespace (benchmarks/_dnswatch.py) asks
both of its servers for the pool name's A RRset every --poll seconds (0.05)
and timestamps each change. It prints min / median / max over the runs, next
to the worst case that spdu_cli.health.failover() predicts from spdu's
settings (and PowerDNS's from its interval and timeout). Flap summaries are
off (flapCount=0), so repeated failures are not held back as flapping; that
changes mail only, not DNS.

With --clients, what clients behind real resolvers see instead
(benchmarks/_clients.py, the lab of tests/e2e/clientlab.py: a parent zone
delegating the pool to every site's Knot and a second pool to a PowerDNS LUA
on every site; Unbound, BIND and PowerDNS Recursor at their Debian defaults;
refused, hang and link by default, p50 / p95 per resolver).

Needs root (ip netns), knot, haproxy, pdns-server and pdns-backend-bind (and
unbound, bind9, pdns-recursor for --clients). Run:
    .venv/bin/python benchmarks/failover.py [--runs 7] [--profile default fast]
    .venv/bin/python benchmarks/failover.py --clients --runs 7
    .venv/bin/python benchmarks/failover.py --profile quorum-off quorum-on --mode refused link
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

from spdu_cli.health import failover  # noqa: E402
from tests.dnsservers import as_user, give_to, write_pdns_lua  # noqa: E402
from tests.e2e.netlab import POOL, SITES, ZONE, Lab, LabError, Proc, run, user_of, v4, which  # noqa: E402

#: Settings written to every site's spdu.conf; keys not named keep spdu's defaults.
PROFILES = {
    # spdu's defaults: interval 2, fastInterval 0.25, downInterval 0.5, probeTimeout 1.5,
    # probeRetries 1, probeFall 2, probeRise 2 (spdu_cli/config.py KEYS)
    "default": {"flapCount": "0"},
    # the fastest we call safe: probe every second; a try may take 1 s (a status
    # answered by HAProxy itself is 2 round trips, < 0.7 s even across the world),
    # and fall/rise stay 2, so one lost packet or one slow answer changes nothing.
    "fast": {"flapCount": "0", "interval": "1", "probeTimeout": "1"},
    # the defaults with and without the quorum (peerQuorum; spdu_cli/quorum.py): a site
    # that dies for everyone must leave as fast with it as without
    "quorum-on": {"flapCount": "0", "peerQuorum": "yes"},
    "quorum-off": {"flapCount": "0", "peerQuorum": "no"},
}
EFFECTIVE = {"interval": 2.0, "fastInterval": 0.25, "downInterval": 0.5, "probeTimeout": 1.5,
             "probeRetries": 1, "probeFall": 2, "probeRise": 2, "nameTTL": 5}

#: PowerDNS 4.7's defaults: lua-health-checks-interval, and ifurlup's timeout option.
PDNS_INTERVAL = 5.0
PDNS_TIMEOUT = 2.0
PDNS_PORT = 5300
STATUS_URL = "http://api.domain.tld/status"  # what spdu probes too (probePath=status)

VICTIM = "gamma"
SPDU, PDNS = "spdu", "pdns"  # the watcher's labels for each site's two servers


def survivors() -> list[str]:
    return [s for s in SITES if s != VICTIM]


def predicted(settings: dict[str, str]):
    eff = {k: float(settings.get(k, v)) for k, v in EFFECTIVE.items()}
    interval = eff["interval"]
    return failover(interval, min(eff["fastInterval"], interval), eff["probeTimeout"],
                    int(eff["probeRetries"]), int(eff["probeFall"]), int(eff["probeRise"]),
                    eff["nameTTL"], min(eff["downInterval"], interval))


def start_pdns(lab: Lab, name: str) -> Proc:
    """pdns_server with the LUA ifurlup record, in site `name`'s namespace."""
    site = lab.sites[name]
    socket_dir = lab.rundir / f"{name}-pdns"  # short: the control socket's path
    socket_dir.mkdir(parents=True, exist_ok=True)
    give_to("pdns", socket_dir)  # run as Debian's unit runs it, as the pdns user
    conf = write_pdns_lua(lab.rundir / f"{name}-pdns-conf", "127.0.0.1", PDNS_PORT, STATUS_URL,
                          [v4(lab.sites[s].host) for s in SITES], zone=ZONE,
                          socket_dir=str(socket_dir))
    argv = as_user("pdns", [which("pdns_server"), f"--config-dir={conf}"], low_ports=True)
    proc = Proc(f"{name}/pdns", site.exec(argv), site.dir / "pdns.log")
    deadline = time.monotonic() + 15
    while True:
        r = run(site.exec(["kdig", "@127.0.0.1", "-p", str(PDNS_PORT), "+short", "+time=1",
                           "+retry=0", ZONE, "SOA"]), check=False)
        if r.returncode == 0 and r.stdout.strip():
            if (user := user_of(proc)) != "pdns":
                raise LabError(f"{name}: pdns_server runs as {user}, not pdns")
            return proc
        if not proc.alive or time.monotonic() > deadline:
            proc.stop()
            raise LabError(f"{name}: pdns_server did not answer SOA {ZONE}:\n"
                           f"{proc.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


class Watch:
    """The answers of every survivor's Knot (spdu) and PowerDNS as they change,
    from one _dnswatch.py per survivor's namespace."""

    def __init__(self, lab: Lab, poll: float):
        self.lab = lab
        self.lock = threading.Lock()
        # (site, system) -> [(monotonic time, sites answered or None for no answer)]
        self.events: dict[tuple[str, str], list[tuple[float, frozenset[str] | None]]] = {
            (s, system): [] for s in survivors() for system in (SPDU, PDNS)}
        self.procs = []
        by_address = {a: s.name for s in lab.sites.values() for a in s.addresses}
        for name in survivors():
            argv = lab.sites[name].exec([
                sys.executable, str(Path(__file__).with_name("_dnswatch.py")), str(poll), POOL,
                f"{SPDU}=127.0.0.1:53", f"{PDNS}=127.0.0.1:{PDNS_PORT}"])
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, start_new_session=True)
            self.procs.append(p)
            threading.Thread(target=self._read, args=(name, p, by_address), daemon=True).start()

    def _read(self, site: str, p: subprocess.Popen, by_address: dict[str, str]) -> None:
        for line in p.stdout:
            t, system, got = line.split()
            sites = None if got == "?" else frozenset(
                by_address.get(a, a) for a in got.split(",") if a != "-")
            with self.lock:
                self.events[(site, system)].append((float(t), sites))

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(5)

    def entered(self, system: str, want, since: float) -> float | None:
        """Seconds from `since` until every survivor's `system` answered a set of
        sites for which want(set) holds, and still does; None while one does not."""
        times = []
        with self.lock:
            for name in survivors():
                history = self.events[(name, system)]
                if not history or history[-1][1] is None or not want(history[-1][1]):
                    return None
                times.append(history[-1][0])
        return max(0.0, max(times) - since)

    def wait(self, want, since: float, timeout: float, what: str) -> dict[str, float]:
        """Seconds until `want` holds for each system (both waited for)."""
        got: dict[str, float | None] = {SPDU: None, PDNS: None}
        while None in got.values():
            for system in got:
                if got[system] is None:
                    got[system] = self.entered(system, want, since)
            if time.monotonic() - since > timeout:
                late = [s for s, v in got.items() if v is None]
                raise LabError(f"timed out after {timeout:g} s waiting for {what} ({late});"
                               f" last answers {self.last()}\n{self.lab.logs()}")
            time.sleep(0.05)
        return got  # type: ignore[return-value]

    def last(self) -> dict[str, str]:
        with self.lock:
            return {f"{s}/{system}": "?" if not h or h[-1][1] is None
                    else " ".join(sorted(h[-1][1])) or "-"
                    for (s, system), h in self.events.items()}


def phase(spdu_interval: float) -> float:
    """A random moment of both schedules: uniform over a common period of both."""
    tenths = math.lcm(round(spdu_interval * 10), round(PDNS_INTERVAL * 10))
    return random.uniform(0, tenths / 10)


def one_run(lab: Lab, watch: Watch, mode: str, interval: float) -> tuple[dict, dict]:
    site = lab.sites[VICTIM]
    lab.restore(timeout=60)
    watch.wait(lambda sites: sites == set(SITES), time.monotonic(), 60, "the full pool")
    time.sleep(phase(interval))
    t0 = time.monotonic()
    if mode == "refused":
        site.stop_haproxy()
    elif mode == "link":
        site.set_link(False)
    else:
        site.pause_haproxy()
    out = watch.wait(lambda sites: bool(sites) and VICTIM not in sites, t0, 60,
                     f"{VICTIM} out of DNS")
    time.sleep(phase(interval))
    t1 = time.monotonic()
    if mode == "refused":
        site.start_haproxy()
    elif mode == "link":
        site.set_link(True)
    else:
        site.resume_haproxy()
    back = watch.wait(lambda sites: sites == set(SITES), t1, 60, f"{VICTIM} back in DNS")
    return out, back


def fmt(values: list[float]) -> str:
    return (f"{min(values):5.2f} / {statistics.median(values):5.2f} / {max(values):5.2f} s")


def command_line() -> str:
    return shlex.join([sys.executable if not sys.executable.startswith(str(ROOT))
                       else str(Path(sys.executable).relative_to(ROOT)),
                       "benchmarks/failover.py", *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--profile", nargs="+", choices=sorted(PROFILES), default=["default", "fast"],
                    help="spdu's settings; PowerDNS runs at its defaults beside each")
    ap.add_argument("--mode", nargs="+", choices=["refused", "hang", "link"],
                    default=["refused", "hang"])
    ap.add_argument("--poll", type=float, default=0.05,
                    help="seconds between two questions to each server (default 0.05)")
    ap.add_argument("--clients", action="store_true",
                    help="measure what clients behind Unbound, BIND and PowerDNS Recursor see"
                    " (benchmarks/_clients.py; spdu at its defaults, --profile not used)")
    ap.add_argument("--per-name", type=int, default=4,
                    help="--clients: clients per resolver and name (default 4)")
    ap.add_argument("--hold", type=float, default=10.0,
                    help="--clients: seconds without a contrary answer that settle a change"
                    " (default 10)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="--clients: seconds after which a change never came (default 30)")
    args = ap.parse_args()
    try:
        which("pdns_server")
    except LabError:
        sys.exit("failover.py: pdns_server not found: install pdns-server and pdns-backend-bind"
                 " (.ci/setup does)")
    if args.clients:
        import _clients

        if "--mode" not in sys.argv:
            args.mode = ["refused", "hang", "link"]
        _clients.main(args, command_line(), machine())
        return

    rows = []  # (profile, mode, {system: (outs, backs)})
    for name in args.profile:
        settings = PROFILES[name]
        interval = float(settings.get("interval", EFFECTIVE["interval"]))
        with Lab(settings=settings) as lab:
            pdns = [start_pdns(lab, s) for s in survivors()]
            watch = Watch(lab, args.poll)
            try:
                for mode in args.mode:
                    times = {SPDU: ([], []), PDNS: ([], [])}
                    for i in range(args.runs):
                        out, back = one_run(lab, watch, mode, interval)
                        for system in times:
                            times[system][0].append(out[system])
                            times[system][1].append(back[system])
                        print(f"  {name:7} {mode:7} run {i + 1}: spdu out {out[SPDU]:5.2f} s,"
                              f" back {back[SPDU]:5.2f} s; PowerDNS out {out[PDNS]:5.2f} s,"
                              f" back {back[PDNS]:5.2f} s", file=sys.stderr)
                    rows.append((name, mode, times))
            finally:
                watch.stop()
                for p in pdns:
                    p.stop()

    command = command_line()
    print(f"failover on 3 namespaced sites (Knot + HAProxy + spdu cron each; PowerDNS beside"
          f" Knot in each survivor), victim {VICTIM}, {args.runs} runs, DNS polled every"
          f" {args.poll:g} s ({machine()})")
    for name in args.profile:
        shown = {**{k: str(v) for k, v in EFFECTIVE.items() if k != "nameTTL"},
                 **{k: v for k, v in PROFILES[name].items() if k != "flapCount"}}
        print(f"  spdu {name}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    print(f"  PowerDNS 4.7 defaults: LUA ifurlup, selector='all', lua-health-checks-interval="
          f"{PDNS_INTERVAL:g}, timeout={PDNS_TIMEOUT:g}; measured on the same failures as"
          f" the spdu row above it")
    print(f"{'failure':8} {'system':18} {'out of DNS min/median/max':28} {'worst':>6}"
          f"   {'back in DNS min/median/max':28} {'worst':>6}")
    for mode in args.mode:
        for name, row_mode, times in rows:
            if row_mode != mode:
                continue
            pred = predicted(PROFILES[name])
            # refused: the worst case without the kept connection (out_refused); with it,
            # pred.out_closed
            worst = {SPDU: (pred.out_refused if mode == "refused" else pred.out_hang, pred.back),
                     PDNS: (PDNS_INTERVAL + (PDNS_TIMEOUT if mode != "refused" else 0),
                            PDNS_INTERVAL)}
            for system, label in ((SPDU, f"spdu {name}"), (PDNS, "PowerDNS defaults")):
                outs, backs = times[system]
                w_out, w_back = worst[system]
                print(f"{mode:8} {label:18} {fmt(outs):28} {w_out:5.1f}s   {fmt(backs):28}"
                      f" {w_back:5.1f}s")
    print("worst: spdu's from spdu_cli.health.failover() and the settings, PowerDNS's from"
          " its interval and timeout, before the DNS change's milliseconds; clients see the"
          " change up to the TTL (5 s) later")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
