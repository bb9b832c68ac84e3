"""The `spdu probe` step: probe the named targets (confirming a change of state
in the cron loop), apply each result's hysteresis to the target's spool entry,
journal and log a transition, and write the entry back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from spdu_cli import certs, health, maint
from spdu_cli.entry import ResultRecord, iso, result_reason, staleness
from spdu_cli.errors import SpduError
from spdu_cli.health import Health
from spdu_cli.probe.engine import probe
from spdu_cli.probe.rounds import Rounds, certain, probe_rounds
from spdu_cli.probe.spec import ProbeResult, ProbeSpec
from spdu_cli.spool import Spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetReport:
    """What one probe did to one target's spool entry."""

    result: ProbeResult
    health: Health
    transition: dict | None  # the journal entry, when the state changed
    spool_error: str | None = None
    probes: int = 1  # results recorded in this run (more when confirmed at once)

    def to_json(self) -> dict:
        r = self.result
        return {
            "target": r.target,
            "state": self.health.state.value,
            "since": iso(self.health.since),
            "ok": r.ok,
            "status": r.status,
            "latency_ms": r.latency_ms,
            "reason": result_reason(r.ok, r.status, r.error),
            "error": r.error,  # deprecated (see `reason`): removed next release
            "address": r.address,
            "addresses": list(r.addresses),
            "good": self.health.good,
            "bad": self.health.bad,
            "transition": self.transition and {k: v for k, v in self.transition.items()
                                               if k != "clock"},  # the spool's own
            "spool_error": self.spool_error,
        }


def _reason(r: ProbeResult) -> str:
    if r.ok:
        return f"{r.summary} in {r.latency_ms:g} ms"
    return r.error or "failed"


def _rules(cfg, entry, fast: float) -> Rounds:
    """The cron loop's confirmation of one target (see health.confirm_after)."""
    state = {"h": entry.health}
    latencies = [r.latency_ms for r in entry.results if r.ok and r.latency_ms is not None]

    def after(r: ProbeResult) -> float | None:
        h, _ = health.advance(state["h"], r.ok, cfg.probe_rise, cfg.probe_fall, r.at)
        state["h"] = h
        return health.confirm_after(h, r.ok, certain(r), fast)

    def overdue() -> float | None:
        if state["h"].state is health.State.UNKNOWN:
            return None  # the first outcome decides: nothing to confirm
        return health.overdue(latencies, fast)

    return Rounds(after, overdue,
                  lambda: health.overlap(state["h"], cfg.probe_fall, cfg.probe_rise),
                  limit=cfg.probe_fall + cfg.probe_rise + 2)


def run(site, names=(), lock_timeout: float = 5.0, stop=None,
        confirm: bool = False, kept: dict | None = None) -> list[TargetReport]:
    """Probe the named targets (default: all), update their spool entries.
    `stop`: an Event that abandons the probes (ProbeInterrupted, nothing written).
    A transition is logged to syslog as it is journaled (not by the mail run).
    A target whose spool file cannot be read or written gets `spool_error`;
    the others go on.
    `confirm` (the cron loop): a probe that disagrees with the target's state is
    followed by confirming ones within this run (fastInterval apart, sooner for
    a certain failure, overlapping one that hangs), so a change of state is
    settled, and recorded, before the run returns; and a result with the same
    outcome as the last one, changing nothing else, is kept in this process
    (Spool.defer) until staleAfter/2 after the file's last probe: the loop
    writes what is kept when it ends (spool.flush). `kept` (with `confirm`):
    see probe_rounds."""
    cfgs = [site.target(n) for n in site.select(names)]
    warn_unverified(cfgs)
    specs = [ProbeSpec.from_config(c) for c in cfgs]
    if confirm:
        rules = {c.target: r for c, r in zip(cfgs, confirm_rules(site, cfgs))}
        rounds = probe_rounds(specs, rules, stop=stop, kept=kept)
        results = [rounds[c.target] for c in cfgs]
    else:
        results = [[r] for r in probe(specs, stop=stop)]
    return record(site, list(zip(cfgs, results)), lock_timeout, defer=confirm)


def warn_unverified(cfgs) -> None:
    for c in cfgs:
        if c.probe_ssl and not c.probe_verify:
            log.warning(
                "%s: probeVerify=no: the certificate of %s is NOT verified; a wrong or"
                " expired certificate will not mark the target down",
                c.target,
                c.api_name,
            )


def confirm_rules(site, cfgs) -> list[Rounds]:
    """The cron loop's confirmation of each target, from its spool entry as it is."""
    store = Spool(site.spool_dir)
    return [_rules(c, _entry_or_fresh(store, c.target), site.fast_interval) for c in cfgs]


def record(site, probed: list[tuple], lock_timeout: float = 5.0,
           defer: bool = False) -> list[TargetReport]:
    """Apply each (target's configuration, its results) to its spool entry,
    under one hold of the spool lock; journal and log each transition. `defer`
    (the cron loop): a routine result is kept in memory (Spool.defer)."""
    store = Spool(site.spool_dir)
    reports = []
    journal_log = None
    with store.locked(lock_timeout):
        for cfg, rs in probed:
            try:
                entry = store.read(cfg.target)
            except SpduError as e:  # unreadable: rewriting it would lose what it holds
                log.error("%s", e)
                reports.append(TargetReport(rs[-1], Health(), None, str(e)))
                continue
            journal, before = None, _durable(entry)
            for r in rs:
                journal = _record(entry, cfg, r) or journal
            if journal is not None:
                if journal_log is None:
                    from spdu_cli.journal import JournalLog

                    journal_log = JournalLog(site.syslog_socket)
                journal_log(cfg, entry)
            error = None
            # in the loop, a result like the last one is written every staleAfter/2 at least
            if (defer and journal is None and _durable(entry) == before
                    and store.defer(entry, cfg.stale_after / 2)):
                reports.append(TargetReport(rs[-1], entry.health, None, None, len(rs)))
                continue
            try:
                store.write(entry)
            except SpduError as e:  # one target's failed write must not stop the others
                log.error("%s", e)
                error = str(e)
            reports.append(TargetReport(rs[-1], entry.health, journal, error, len(rs)))
    if journal_log is not None:
        journal_log.close()
    return reports


def _durable(entry) -> tuple:
    """What a probe result must not change without being written at once: the
    state and since, the addresses, the journal, maintenance, and the outcome
    of the last result (a first failure of an up target is written)."""
    last = entry.results[-1].ok if entry.results else None
    return (entry.health.state, entry.health.since, tuple(entry.addresses),
            tuple(entry.retired), entry.url, entry.next_id, len(entry.journal), entry.maint,
            last, last is not None and all(r.ok is last for r in entry.results[-2:]))


def _entry_or_fresh(store: Spool, target: str):
    """The entry the confirmation starts from; a fresh one when it cannot be read
    (the write phase reports that, and leaves the file alone)."""
    try:
        return store.read(target)
    except SpduError:
        from spdu_cli.entry import SpoolEntry

        return SpoolEntry(target)


def _record(entry, cfg, r: ProbeResult) -> dict | None:
    """Apply one result to a spool entry; the journal entry it added, if any."""
    ended = maint.expire(entry, r.at)
    before = entry.health
    moved = r.ok is not None and entry.readdress(list(r.addresses))
    if moved:
        # New addresses have earned nothing yet: this probe decides their state
        # at once, so an address that never answered is never added to the pool.
        log.warning("%s: its addresses changed to %s; the old ones (%s) leave the"
                    " pool", cfg.target, " ".join(r.addresses), " ".join(entry.retired))
    h, t = health.advance(
        health.Health() if moved else before, r.ok, cfg.probe_rise, cfg.probe_fall,
        r.at, _reason(r),
    )
    if moved and before.state is not health.State.UNKNOWN:
        h, t = health.carried_over(before, h, t)
    entry.health = h
    entry.url = cfg.probe_url
    if r.ok is not None:
        entry.checked = r.at
    entry.record(ResultRecord(r.at, r.ok, r.address, r.status, r.latency_ms, r.error))
    certs.record(entry, cfg, r)
    entry.counters["probes"] += 1
    entry.counters["probe_failures"] += r.ok is False
    if t and entry.maint is not None:  # the way back from maint is journaled then
        log.info("%s: %s -> %s during maintenance: %s", cfg.target, t.old, t.new, t.reason)
        t = None
    if t:
        log.info("%s: %s -> %s: %s", cfg.target, t.old.value, t.new.value, t.reason,
                 extra={"transition": True})  # syslog has the journal's own line
    return entry.add_transition(t) if t else ended


def stale(site, names=(), now: float | None = None) -> list[str]:
    """The named targets (default: all) that reconcile would leave as they are
    for want of a fresh probe: never probed, state unknown, or last probed more
    than staleAfter ago (or in the future)."""
    now = time.time() if now is None else now
    store = Spool(site.spool_dir)
    out = []
    for c in (site.target(n) for n in site.select(names)):
        try:
            entry = store.read(c.target)
        except SpduError:
            continue  # unreadable: probing would not rewrite it either
        if (entry.health.state is health.State.UNKNOWN
                or staleness(entry.checked, now, c.stale_after) is not None):
            out.append(c.target)
    return out


def run_stale(site, names=(), lock_timeout: float = 5.0) -> list[TargetReport]:
    """Probe first what reconcile could not judge (`--probe`); the others are left."""
    targets = stale(site, names)
    if targets:
        log.info("probing first (stale or never probed): %s", " ".join(targets))
    return run(site, targets, lock_timeout=lock_timeout) if targets else []


def clear_maint(site, target: str, probe_after: bool = False,
                lock_timeout: float = 5.0) -> maint.Outcome:
    """`spdu maint --clear [--probe]`: end the maintenance; with `probe_after`,
    probe the target at once when its last probe is stale, so the next
    reconcile can put it back; the outcome's state is the one afterwards."""
    out = maint.clear(site, target, lock_timeout=lock_timeout)
    reports = run_stale(site, [target], lock_timeout=lock_timeout) if probe_after else []
    return dataclasses.replace(out, state=reports[0].health.state.value) if reports else out

