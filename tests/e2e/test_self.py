"""End to end, the self-check (issue 25, proof a): a site's HAProxy stops while its
knotd lives. Before, its own DNS server went on answering with itself, and every
client whose resolver asked it went to a dead service. Now its own server drops
it as soon as the others do, within the usual failover time that
spdu_cli.health.failover() gives for the settings (netlab.FAST), and takes it
back when HAProxy serves again.
"""

from __future__ import annotations

import json
import time

import pytest

from spdu_cli import config
from spdu_cli.render import failover
from tests.e2e.netlab import SELF, SITES, LabError, run, spdu_command

SLACK = 2.0  # s above the prediction: polling three servers, a loaded CI machine


def watch(lab, victim: str, gone: bool, timeout: float) -> dict[str, float]:
    """Seconds until each site's DNS answers without (`gone`) or with the victim."""
    t0, took = time.monotonic(), {}
    while len(took) < len(SITES):
        for name in SITES:
            if name not in took and (victim in lab.sites[name].answers_sites()) != gone:
                took[name] = time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise LabError(f"after {timeout:g} s, only {sorted(took)} changed: {lab.pool()}\n"
                           f"{lab.logs()}")
        time.sleep(0.02)
    return took


# HAProxy stops (the kernel refuses connections and closes the kept ones), or
# hangs (SIGSTOP: the kernel still accepts, nothing answers); then it is repaired.
FAILURES = {"haproxy-stops": ("stop_haproxy", "start_haproxy", "out_refused"),
            "haproxy-hangs": ("pause_haproxy", "resume_haproxy", "out_hang")}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_site_whose_haproxy_fails_leaves_its_own_pool_too(scenario, failure):
    lab, victim = scenario.lab, "beta"
    fail, repair, case = FAILURES[failure]
    site = lab.sites[victim]
    worst = failover(config.load(str(site.conf)).target(SELF))
    bound = getattr(worst, case)
    getattr(site, fail)()
    out = watch(lab, victim, gone=True, timeout=bound + 15)
    for name, took in out.items():
        assert took <= bound + SLACK, (name, took, worst, out)
    # no site's server sends a client to the dead service; none answers nothing
    for name in SITES:
        got = lab.sites[name].answers_sites()
        assert got == set(SITES) - {victim}, (name, got)
    status = run(site.exec([*spdu_command(), "-c", str(site.conf), "status", "--json"]))
    states = {o["target"]: o["state"] for o in map(json.loads, status.stdout.splitlines())}
    assert states == {SELF: "down", "alpha": "up", "gamma": "up"}, states
    getattr(site, repair)()
    back = watch(lab, victim, gone=False, timeout=worst.back + 15)
    for name, took in back.items():
        assert took <= worst.back + SLACK, (name, took, worst, back)
    assert lab.pool() == lab.full()
    mails = scenario.settle_mail()
    mine = [m.subject for m in mails if m.observer == victim]
    assert mine == ["WARNING: Server self is DOWN.", "NOTICE: Server self is up."], mine
    print(f"{failure}: out of DNS after (s): {out}; back after (s): {back};"
          f" predicted {bound:.2f} / {worst.back:.2f}")


def test_every_haproxy_stops_every_site_keeps_itself(scenario):
    """self down everywhere and every peer down: never an empty pool; each site
    keeps its own address, as the original did."""
    lab = scenario.lab
    for s in lab.sites.values():
        s.stop_haproxy()
    lab.wait_pool({s: {s} for s in SITES}, 20)
    time.sleep(2)  # a few reconcile turns later, still
    assert lab.pool() == {s: {s} for s in SITES}
    for s in lab.sites.values():
        s.start_haproxy()
    lab.wait_pool(lab.full(), 20)
    scenario.settle_mail()
