"""Mutation testing of the decision core: would the tests notice this bug?

Each mutant below is one deliberate, plausible bug in health.py, plan.py
(decide), nameserver.py and reconcile.py (the read, the UPDATE), spool.py and
entry.py, notify/ and journal.py (selection, marking, the webhook's POST),
cycle.py and handover.py (the loop's schedule, the hand-over), probe/ (the
rounds, the kept connection) or secondaries.py (status --dns), applied to a
copy of the tree in a temporary directory; the fast tests that cover that
code run against the copy (PYTHONPATH points at it, bytecode off) under a
per-mutant timeout. A mutant
is killed when they fail (or time out), survives when they pass. The working
tree is never touched.

Why a curated list and not mutmut or cosmic-ray: those generate hundreds of
operator swaps, most of them in messages and logging, and take hours against
tests that start real servers; a list of bugs someone could actually write
(an off-by-one at a window's end, a lost fsync, a dropped prerequisite) runs
in minutes, offline, and every survivor is worth a test. Mutants that change
no behaviour are marked `equivalent` with the reason, and listed as such.
A snippet that no longer matches the source (the code moved) is reported as
stale, so the list is kept in step with the code.

Run: .venv/bin/python benchmarks/mutants.py [--jobs 1] [--timeout 180]
         [--only TEXT] [--issue N] [--list]
Exit 0 when the kill rate is at least --min-rate (95 %) and every mutant
named in an issue (its `issue` field: #17, #28) is killed; 1 otherwise; 2 when
the list or the baseline is broken.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

# The fast tests for each part of the core (real servers where the code talks
# to them: knotd for the UPDATE, aiosmtpd for marking; no test_cycle processes).
HEALTH = ["tests/test_health.py", "tests/test_cycle_loop.py", "tests/test_confirm.py",
          "tests/test_cycle.py::test_suspect_targets_are_probed_again_sooner",
          "tests/test_reconcile.py::test_a_changed_target_ip_replaces_the_old_address"]
DECIDE = ["tests/test_decide.py", "tests/test_maint.py", "tests/test_reconcile.py"]
RECONCILE = ["tests/test_reconcile.py", "tests/test_maint.py"]
SPOOL = ["tests/test_spool.py", "tests/test_maint.py", "tests/test_hardening.py",
         "tests/test_reconcile.py::test_a_changed_target_ip_replaces_the_old_address"]
NOTIFY = ["tests/test_notify.py", "tests/test_maint.py"]
KEPT = ["tests/test_kept.py"]
FOLLOW = ["tests/test_follow.py"]
WEBHOOK = ["tests/test_webhook.py", "tests/test_notify.py"]
SECONDARIES = ["tests/test_secondaries.py", "tests/test_status.py"]
CYCLE = ["tests/test_cycle_loop.py",
         "tests/test_cycle.py::test_suspect_targets_are_probed_again_sooner",
         "tests/test_confirm.py::test_the_cron_schedule_probes_a_down_target_every_down_interval"]


@dataclass(frozen=True)
class Mutant:
    module: str  # under spdu_cli/
    bug: str  # what would ship
    old: str  # must occur exactly once in the module
    new: str
    tests: tuple[str, ...]
    issue: int = 0  # the issue that names it (then it must be killed); 0: none
    equivalent: str = ""  # why no behaviour changes (then it is expected to survive)


def m(module, bug, old, new, tests, **kw) -> Mutant:
    return Mutant(module, bug, old, new, tuple(tests), **kw)


KEYS_USERS = ["tests/test_keygen_users.py", "tests/test_keygen.py"]
CHECK = ["tests/test_config_check.py"]
DELIVERY = ["tests/test_faults_delivery.py", "tests/test_notify.py", "tests/test_webhook.py"]
DNSFAULTS = ["tests/test_faults_dns.py", "tests/test_reconcile.py", "tests/test_decide.py"]
DAY1 = ["tests/test_notify.py", "tests/test_maint.py", "tests/test_cli_notify.py"]
PROBE = ["tests/test_hostile.py", "tests/test_probe.py", "tests/test_cli_probe.py",
         "tests/test_config.py"]


LAG = ["tests/test_lag.py", "tests/test_spool.py"]


MUTANTS = [
    # -- health.py: hysteresis ------------------------------------------------------------
    m("health.py", "an inconclusive probe counts as a failure",
      "    if ok is None:\n        return h, None\n", "    if ok is None:\n        ok = False\n",
      HEALTH),
    m("health.py", "a good probe does not reset the failure count",
      "(h.good + 1, 0) if ok", "(h.good + 1, h.bad) if ok", HEALTH),
    m("health.py", "a failed probe does not reset the success count",
      "else (0, h.bad + 1)", "else (h.good, h.bad + 1)", HEALTH),
    m("health.py", "down after fall+1 failures", "bad >= fall", "bad > fall", HEALTH),
    m("health.py", "up after rise+1 successes", "good >= rise", "good > rise", HEALTH),
    m("health.py", "a first failure makes a new target up",
      "new = State.UP if ok else State.DOWN", "new = State.UP", HEALTH),
    m("health.py", "`since` not moved on a transition",
      "return Health(new, now, good, bad)", "return Health(new, h.since, good, bad)", HEALTH),
    m("health.py", "a transition says it came from unknown",
      "Transition(h.state, new, now, reason)", "Transition(State.UNKNOWN, new, now, reason)",
      HEALTH),
    m("health.py", "a down target counts as suspect (fast re-probes of dead sites)",
      "(h.state is State.DOWN and h.good > 0)", "(h.state is State.DOWN)", HEALTH),
    m("health.py", "a down target that answers is not suspect (a repair waits downInterval)",
      "(h.state is State.DOWN and h.good > 0)", "False", HEALTH),
    m("health.py", "suspect only after two failures",
      "(h.state is State.UP and h.bad > 0)", "(h.state is State.UP and h.bad > 1)",
      HEALTH),
    m("health.py", "a certain failure is confirmed only after fastInterval",
      "return CERTAIN_GAP if certain and not ok else fast", "return fast", HEALTH),
    m("health.py", "an answer from a down target is not confirmed in the same run",
      "or (h.state is State.UP) == ok:", "or not ok or h.state is State.UP:", HEALTH),
    m("health.py", "a failure of an up target is not confirmed in the same run",
      "or (h.state is State.UP) == ok:", "or ok or h.state is State.DOWN:", HEALTH),
    m("health.py", "a hung down target's probes do not overlap (its resume waits fastInterval)",
      "return max(1, min(MAX_OVERLAP, rise - h.good))", "return 1", HEALTH),
    m("health.py", "no overlapping probe beside one that hangs",
      "return max(1, min(MAX_OVERLAP, fall - h.bad))", "return 1", HEALTH),
    m("health.py", "overlapping probes are not bounded by MAX_OVERLAP",
      "return max(1, min(MAX_OVERLAP, fall - h.bad))", "return max(1, fall - h.bad)", HEALTH),
    m("health.py", "a readdressed target with an unchanged state gets its `since` reset",
      "return replace(h, since=before.since), None", "return h, None", HEALTH, issue=17),
    m("health.py", "a readdressed target's transition says it came from unknown",
      "return h, replace(t, old=before.state) if t else None", "return h, t", HEALTH),

    # -- plan.py: decide ---------------------------------------------------------------------
    m("plan.py", "an added target's record gets selfIP's TTL, not its own nameTTL",
      "present.setdefault(a, (t.ttl, t.target))", "present.setdefault(a, (self_ttl, t.target))",
      DECIDE, issue=17),
    m("plan.py", "the end of a maintenance window is off by one comparison (decide)",
      "now < t.maint_until", "now <= t.maint_until", DECIDE, issue=17),
    m("plan.py", "retired addresses are never removed",
      "for a in t.retired:", "for a in ():", DECIDE),
    m("plan.py", "maintenance removes only probed addresses, not configured ones",
      "sorted({canon(a) for a in t.addresses + t.configured})",
      "sorted({canon(a) for a in t.addresses})", DECIDE),
    m("plan.py", "a target of unknown state is judged (removed)",
      "        if t.state is State.UNKNOWN:\n", "        if False:\n", DECIDE),
    m("entry.py", "stale targets are judged", "    if age > limit:\n", "    if False:\n",
      DECIDE + ["tests/test_spool.py"]),
    m("entry.py", "a probe time in the future is trusted (the clock was stepped back)",
      "    if age < -CLOCK_SLACK:\n", "    if False:\n",
      DECIDE + ["tests/test_spool.py", "tests/test_faults.py"]),
    m("plan.py", "a changed targetIP is judged by the old probe",
      "if t.configured and {canon(a) for a in t.configured} != probed:", "if False:", DECIDE),
    m("plan.py", "up and unknown are one",
      "            if t.state is State.UP:\n", "            if t.state is not State.DOWN:\n",
      DECIDE, equivalent="unknown targets have left the loop above (`continue`), so the"
      " states that reach this line are up and down only"),
    m("plan.py", "addresses already present are added again (an UPDATE every run)",
      "for a, (ttl, who) in sorted(present.items()) if a not in current",
      "for a, (ttl, who) in sorted(present.items())", DECIDE),
    m("plan.py", "down wins over up and selfIP for a shared address",
      "if a in current and a not in present", "if a in current", DECIDE),
    m("plan.py", "deletes of addresses that are not there",
      "if a in current and a not in present", "if a not in present", DECIDE),
    m("plan.py", "the pool may be emptied",
      "if changes and not after:", "if False:", DECIDE),

    # -- nameserver.py, reconcile.py: reading the zone, building and sending the UPDATE -------
    m("nameserver.py", "an answer without the AA bit is taken as the zone's data",
      "rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and not answer.flags & dns.flags.AA",
      "False", RECONCILE, issue=17),
    m("nameserver.py", "REFUSED to the query is 69, not a configuration error (78)",
      "if rcode == dns.rcode.REFUSED or (", "if (", RECONCILE),
    m("nameserver.py", "the query asks for recursion",
      "        q.flags &= ~dns.flags.RD  # never recursion: the zone's own data\n", "", RECONCILE,
      equivalent="an authoritative server answers its own zone with AA whatever RD says;"
      " a server that would recurse is refused by the AA check (a killed mutant above)"),
    m("nameserver.py", "the query goes over TCP (a server that is down reads as refusing)",
      "answer = _exchange(pool, q, what, tcp=False)", "answer = _exchange(pool, q, what)",
      RECONCILE),
    m("reconcile.py", "one retry fewer against a concurrent writer",
      "MAX_ATTEMPTS = 3", "MAX_ATTEMPTS = 2", RECONCILE, issue=17),
    m("reconcile.py", "one retry more against a concurrent writer",
      "MAX_ATTEMPTS = 3", "MAX_ATTEMPTS = 4", RECONCILE),
    m("reconcile.py", "the last try is never made",
      "range(1, MAX_ATTEMPTS + 1)", "range(1, MAX_ATTEMPTS)", RECONCILE),
    m("nameserver.py", "the prerequisite pins only that the RRset exists, not its addresses",
      'u.present(name, dns.rdataset.from_text("IN", rdtype, 0, *addrs))',
      "u.present(name, rdtype)", RECONCILE),
    m("nameserver.py", "an empty RRset is not pinned as empty",
      "                u.absent(name, rdtype)\n", "                pass\n", RECONCILE),
    m("nameserver.py", "a delete removes the whole RRset",
      "u.delete(name, c.rdtype, c.address)", "u.delete(name, c.rdtype)", RECONCILE),
    m("nameserver.py", "the UPDATE is not signed",
      "    if pool.tsig:\n        u.use_tsig(keyring(pool.tsig))\n", "", RECONCILE),
    m("nameserver.py", "NXRRSET (a prerequisite failed) is not a race",
      "if rcode in (dns.rcode.YXRRSET, dns.rcode.NXRRSET,", "if rcode in (dns.rcode.YXRRSET,",
      RECONCILE),
    m("reconcile.py", "--dry-run sends", "if dry_run or not items:", "if not items:", RECONCILE),
    m("reconcile.py", "a sent plan is not marked sent (the change goes unrecorded)",
      "            plan.sent = True\n", "            pass\n", RECONCILE),
    m("reconcile.py", "a removal for maintenance is not recorded for the mail",
      '{"add": ("up",), "delete": ("down", "maint")}', '{"add": ("up",), "delete": ("down",)}',
      RECONCILE),
    m("reconcile.py", "a change is recorded on a later transition",
      "        if latest.get(\"to\") not in wanted:", "        if False:", RECONCILE),
    m("reconcile.py", "retired addresses are never forgotten",
      "still = [a for a in entry.retired if canon(a) in after]", "still = entry.retired",
      RECONCILE),

    # -- spool.py, entry.py -----------------------------------------------------------------
    m("spool.py", "no fsync before the rename of a spool file",
      "            os.fsync(fd)\n", "            pass\n", SPOOL, issue=17),
    m("spool.py", "no fsync of the directory after the rename",
      "        os.fsync(dfd)\n", "        pass\n", SPOOL),
    m("spool.py", "the file mode is mkstemp's 0600, not 0640",
      "            os.fchmod(fd, mode)\n", "", SPOOL),
    m("entry.py", "an address that comes back to a target stays in `retired`",
      "keep = [a for a in self.retired if a not in addresses and a not in gone]",
      "keep = [a for a in self.retired if a not in gone]", SPOOL, issue=17),
    m("entry.py", "a second move forgets the first one's old addresses",
      "self.retired = (keep + gone)[-MAX_RETIRED:]", "self.retired = gone", SPOOL),
    m("entry.py", "the first probe of a target counts as a change of address",
      "if not old or set(old) == set(addresses):", "if set(old) == set(addresses):", SPOOL),
    m("entry.py", "the end of a maintenance window is off by one comparison (expiry)",
      "return now < self.until", "return now <= self.until", SPOOL, issue=17),
    m("entry.py", "a new transition is born notified",
      '            "notified": False,\n', '            "notified": True,\n', SPOOL + NOTIFY),
    m("entry.py", "the journal bound drops pending transitions first",
      'done = next((e for e in self.journal if e.get("notified")), None)',
      "done = self.journal[0]", SPOOL),
    m("entry.py", "one probe result too many is kept",
      "del self.results[:-MAX_RESULTS]", "del self.results[:-MAX_RESULTS - 1]", SPOOL),
    m("entry.py", "a damaged next_id makes ids repeat",
      'next_id=max([count(d, "next_id", 1)] + [count(e, "id") + 1 for e in journal]),',
      'next_id=count(d, "next_id", 1),', SPOOL),
    m("spool.py", "a corrupt file is overwritten without a copy",
      "        if entry.fresh:\n            self._keep_corrupt(path, entry.target)\n", "", SPOOL),
    m("spool.py", "the spool lock is shared",
      "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
      "fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)",
      SPOOL),
    m("spool.py", "a world-writable spool directory is accepted",
      "        if mode & 0o002:\n", "        if False:\n", SPOOL),

    # -- notify/, journal.py: which transitions go in which mail, and marking ----------------
    m("notify/outbox.py", "after a flap summary, the held changes go out one mail each",
      "held_since_last = last is not None and pending[0].at < last + view.flap_window",
      "held_since_last = False", NOTIFY, issue=17),
    m("notify/outbox.py", "flapping already at flapCount changes",
      "if len(recent) > view.flap_count or held_since_last:",
      "if len(recent) >= view.flap_count or held_since_last:", NOTIFY),
    m("journal.py", "a summary is held a moment past its window",
      "if last is not None and now < last + self.flap_window:",
      "if last is not None and now <= last + self.flap_window:", NOTIFY),
    m("notify/outbox.py", "changes after a summary are not held",
      "        return Held(view, pending, due)\n",
      "        pass\n", NOTIFY),
    m("notify/outbox.py", "only pending changes count towards flapping",
      "recent = [c for c in view.journal if", "recent = [c for c in pending if", NOTIFY),
    m("journal.py", "any mailed change counts as a flap summary",
      "c.notified_at for c in self.journal if c.flap and c.notified_at",
      "c.notified_at for c in self.journal if c.notified_at", NOTIFY),
    m("notify/outbox.py", "a digest is not in the order things happened",
      "tuple(sorted(ns, key=order))", "tuple(ns)", NOTIFY),
    m("notify/mail.py", "the Message-ID ignores its timestamp (reused after a spool reset)",
      'f"{t}:{c.id}:{c.stamp}"', 'f"{t}:{c.id}"', NOTIFY, issue=17),
    m("notify/step.py", "a mail the relay did not take is marked notified",
      '"mail_id"] = None\n            continue\n', '"mail_id"] = None\n', NOTIFY),
    m("notify/marks.py", "without mailTo, transitions are never marked",
      "found + (0 if entry.fresh else _settle(entry, v, now))", "found", NOTIFY),
    m("notify/marks.py", "marking matches the id only (a reset journal gets marked)",
      'fields = updates.get((e.get("id"), str(e.get("at"))))',
      'fields = next((f for (i, _), f in updates.items() if i == e.get("id")), None)', NOTIFY),
    m("notify/marks.py", "marks are written to an entry that could not be read",
      "found = 0 if entry.fresh else _mark(entry, updates)\n            if found < len(updates):"
      "\n                log.warning(\"%s: the spool entry changed meanwhile; %d transition(s)"
      " not\"\n                            \" found to mark\", v.target,",
      "found = _mark(entry, updates)\n            if found < len(updates):"
      "\n                log.warning(\"%s: the spool entry changed meanwhile; %d transition(s)"
      " not\"\n                            \" found to mark\", v.target,",
      NOTIFY, equivalent="an entry that could not be read is a fresh one with an empty"
      " journal: _mark finds nothing and nothing is written either way"),
    m("journal.py", "each pending transition goes to syslog on every run",
      "            if c.logged:\n                continue\n", "", NOTIFY),

    # -- cycle.py: the loop's schedule ------------------------------------------------------
    m("cycle.py", "DNS updated only at the next tick after a transition",
      "if (changed or now >= self.next_reconcile", "if (now >= self.next_reconcile", CYCLE,
      issue=17),
    m("cycle.py", "a failed probe run is retried at once, every tick (a busy loop)",
      "            for t in due:\n                self.schedule.due_at[t] = now + site.interval\n",
      "", CYCLE, issue=17),
    m("cycle.py", "reconcile on every tick with no sleep",
      "self.next_reconcile = now + site.interval", "self.next_reconcile = now", CYCLE,
      issue=17),
    m("cycle.py", "a failed mail run is reported as success and not retried",
      "        if outcome.errors:\n", "        if False:\n", CYCLE, issue=17),
    m("cycle.py", "a second mail run starts while one is still going (duplicate mails)",
      "if self.mailer is not None and self.mailer.is_alive():", "if False:", CYCLE, issue=17),
    m("cycle.py", "a held flap summary is never sent by the loop",
      "        if outcome.plan.held:", "        if False:", CYCLE, issue=17),
    m("cycle.py", "a mail run that raised is not retried",
      "            log.error(\"notify: %s\", e)\n"
      "            self.tally.failed(\"notify\", e.exit_status, e)\n"
      "            self.next_notify = self.clock() + NOTIFY_RETRY\n",
      "            log.error(\"notify: %s\", e)\n"
      "            self.tally.failed(\"notify\", e.exit_status, e)\n",
      CYCLE),
    m("cycle.py", "a transition of one target is hidden by the next target's report",
      "changed |= rep.transition is not None", "changed = rep.transition is not None", CYCLE),
    m("cycle.py", "a pool that failed is not an error at the end",
      "            if p.error:\n", "            if False:\n", CYCLE),
    m("cycle.py", "a suspect target waits a whole interval (no fastInterval)",
      "self.due_at[target] = now + fast", "self.due_at[target] = now + interval", CYCLE),
    m("cycle.py", "probes not aligned to the wall clock (each site its own phase)",
      "self.due_at[target] = now + wait if offset is None else aligned(now, wait, offset)",
      "self.due_at[target] = now + wait", KEPT),
    m("cycle.py", "aligned probes may come right after the last one (no half-period floor)",
      "    if nxt - wall < period / 2:\n        nxt += period\n", "", KEPT),
    m("cycle.py", "a closed kept connection is not heard (the loop only sleeps)",
      "        if not self.kept:\n            self.stop.wait(seconds)\n            return False\n",
      "        self.stop.wait(seconds)\n        return False\n", KEPT),
    m("cycle.py", "a peer that closes idle connections is probed early every time",
      "                    self.kept.spurious(target)", "                    pass", KEPT),
    m("probe/http.py", "a connection the peer will close is kept (an early probe each interval)",
      "            if name == b\"connection\" and b\"close\" in (t.strip() for t in"
      " value.lower().split(b\",\")):\n                self.reusable = False  # a token of the"
      " list, as h11 reads it\n            elif", "            if", KEPT),
    m("health.py", "the overlap waits for the median latency (a resumed hang delays it)",
      "[len(latencies_ms) // 4]", "[len(latencies_ms) // 2]", HEALTH),
    m("cycle.py", "a down target waits a whole interval (no downInterval)",
      "wait = down if h.state", "wait = interval if h.state", CYCLE),
    m("cycle.py", "a target never probed is never due",
      "self.due_at.get(t, now) <= now", "self.due_at.get(t, now) < now", CYCLE),
    m("cycle.py", "the loop wakes for reconcile and mail only, not for a due probe",
      "due = min(self.schedule.next(site.targets, now + site.interval),",
      "due = min(now + site.interval,", CYCLE),
    m("cycle.py", "a transition made outside the loop is never mailed by it",
      "            changed |= _pending(site, entries)\n", "            pass\n", CYCLE),
    # -- cycle.py, handover.py, cronstart.py: one loop minute after minute (--follow) -------
    m("cycle.py", "a --follow loop ends with its minute (each minute a new process, a gap)",
      "                if not self.follow or now >= end + handover.GRACE:",
      "                if True:", FOLLOW),
    m("cycle.py", "a --follow loop never ends when cron stops",
      "                if not self.follow or now >= end + handover.GRACE:",
      "                if not self.follow:", FOLLOW),
    m("cycle.py", "a note from the loop's own start counts as the next minute's copy",
      "after = end + self.wall() - now - self.seconds / 2", "after = 0", FOLLOW),
    m("cycle.py", "the note is not taken (its copy waits out its 6 s)",
      "                    handover.take(site.spool_dir)\n", "", FOLLOW),
    m("cycle.py", "an upgraded spdu keeps running the old code for up to an hour",
      "        if _code_stamp() != code:\n"
      "            log.info(\"spdu was changed on disk (an upgrade?); a new",
      "        if False:\n            log.info(\"spdu was changed on disk (an upgrade?); a new",
      FOLLOW),
    m("cycle.py", "a run of an hour without --follow keeps running an upgraded spdu's old code",
      "                if _code_stamp() != code:\n                    log.info(\"spdu was changed",
      "                if False:\n                    log.info(\"spdu was changed", FOLLOW),
    m("cycle.py", "a note found when the loop stops is dropped (its copy is gone: a lost minute)",
      "                if handover.asked(site.spool_dir, after=after):",
      "                if (not self.follow or self._may_go_on(site, now - start, code))"
      " and handover.asked(site.spool_dir, after=after):", FOLLOW),
    m("cycle.py", "a --follow loop's minutes do not end on the wall clock's",
      "        end = (aligned(start, self.seconds, self.wall() - start) if self.follow\n"
      "               else start + self.seconds)", "        end = start + self.seconds", FOLLOW),
    m("cycle.py", "a loop runs on past MAX_RUN",
      "        if age + self.seconds > MAX_RUN:", "        if False:", FOLLOW),
    m("cycle.py", "the lock's mtime is not moved on with the minute (copies wait each time)",
      "                    end += self.seconds\n                    self._publish(end)\n",
      "                    end += self.seconds\n", FOLLOW),
    m("paths.py", "a copy trusts a configuration writable by others",
      "and not st.st_mode & 0o022)", ")", FOLLOW),
    m("cronstart.py", "a copy reads spoolDir from a $reference it cannot resolve",
      "        return \"\\0\"  # refused below", "        return \"\"  # refused below", FOLLOW),
    m("handover.py", "a copy near the loop's minute end exits at once (the loop may end:"
      " a lost minute)",
      "    if noted and now + 1.0 < end - MARGIN:", "    if noted:", FOLLOW),
    m("handover.py", "a copy that could not leave its note exits (the loop ends: a lost minute)",
      "    if not noted:\n        wait = max(wait, end + GRACE + 1.0 - now)\n", "", FOLLOW),
    m("handover.py", "a stuck loop is not reported",
      "    if now > end + STUCK and not _moving(directory):", "    if False:", FOLLOW),
    m("handover.py", "a copy whose loop ended does not loop itself",
      "        if try_lock(fd):\n            return False\n", "", FOLLOW),
    m("cycle.py", "a mail run at every start, with nothing pending",
      "        if not _pending(site):\n            self.next_notify = None\n", "", CYCLE),

    # -- issue #28: the seventeen the suite let through, in the issue's order -----------------
    m("notify/webhook.py", "a POST abandoned at its deadline counts as accepted (never delivered)",
      "                self._abandoned = True\n                self.error = ServiceUnavailable(",
      "                self._abandoned = True\n                _ = ServiceUnavailable(",
      WEBHOOK, issue=28),
    m("journal.py", "with mail configured, a change is notified once mailed (a webhook down"
      " then never gets it)",
      "return ({MAIL} if self.mail else set()) | {w.channel for w in self.webhooks}",
      "return {MAIL} if self.mail else {w.channel for w in self.webhooks}", WEBHOOK, issue=28),
    m("notify/outbox.py", "a transition a mail may already have carried (mail_id) joins a new"
      " digest as well (sent twice, under two Message-IDs)",
      "fresh = tuple(c for c in pending if not c.repeat)", "fresh = pending", NOTIFY,
      issue=28),
    m("notify/mail.py", "a mail that failed after DATA (maybe delivered) counts as surely not"
      " sent (re-sent under a new Message-ID)",
      'err.maybe_sent = during[0] == "while sending the mail"', "err.maybe_sent = False",
      NOTIFY, issue=28),
    m("notify/webhook.py", "the webhook session trusts the environment (~/.netrc replaces the"
      " bearer token)",
      "        s.trust_env = False  # no ~/.netrc", "        s.trust_env = True  # no ~/.netrc",
      WEBHOOK, issue=28),
    m("cycle.py", "SIGTERM does not wake a loop waiting on kept connections (it ends at its"
      " next tick)",
      '                os.write(self.wake[1], b"\\0")', "                pass", KEPT, issue=28),
    m("cycle.py", "the loop's exit status is the least serious failure (78 reported as 69)",
      "        return max((s for s in self.latest.values() if s), default=None)",
      "        return min((s for s in self.latest.values() if s), default=None)", CYCLE,
      issue=28),
    m("cycle.py", "a mail run's status is its last error, not its most serious",
      "worst = max(outcome.errors, key=lambda e: e.exit_status)",
      "worst = outcome.errors[-1]", CYCLE),
    m("cycle.py", "\"DNS already agrees\" compares the addresses only, not the configuration"
      " (a changed selfIP waits for the drift check)",
      "standing[0] is agreed[0] and standing[1] == agreed[1]", "standing[1] == agreed[1]",
      CYCLE, issue=28),
    m("cycle.py", "the wall-clock alignment's offset has the wrong sign (sites probe a peer"
      " at different moments)",
      "        offset = self.wall() - self.clock()\n",
      "        offset = self.clock() - self.wall()\n",
      CYCLE, issue=28),
    m("handover.py", "a copy that could not leave its note exits at its first poll (the loop"
      " ends with its minute: the next has no loop)",
      "        if noted and not os.path.lexists(note):", "        if not os.path.lexists(note):",
      FOLLOW, issue=28),
    m("probe/rounds.py", "a refused address does not decide the round (it waits probeTimeout for"
      " a hung one beside it)",
      "        if r.ok and not all(j in tg.results for j in jobs):",
      "        if not all(j in tg.results for j in jobs):",
      ["tests/test_confirm.py", "tests/test_probe.py", "tests/test_kept.py"], issue=28),
    m("probe/kept.py", "no cap on what a kept connection may bring (a peer that streams wakes"
      " the loop for every segment)",
      "        return False if self.read[sock.fileno()] <= KEPT_DISCARD else None",
      "        return False", KEPT, issue=28),
    m("probe/kept.py", "a kept connection that brings a byte is let go (its peer's death is"
      " not heard)",
      "            if verdict is not False:  # closed, or let go",
      "            if verdict is not None:  # closed, or let go", KEPT),
    m("entry.py", "a probe exactly staleAfter old counts as stale", "    if age > limit:\n",
      "    if age >= limit:\n", DECIDE + ["tests/test_spool.py"], issue=28),
    m("entry.py", "the journal keeps one transition fewer than MAX_JOURNAL",
      "        while len(self.journal) > MAX_JOURNAL:",
      "        while len(self.journal) >= MAX_JOURNAL:",
      SPOOL, issue=28),
    m("spool.py", "the parse cache hands out its own entry (a caller's unwritten changes"
      " reach later reads)",
      "            return seen[1].copy(seen[2])", "            return seen[1]", SPOOL, issue=28),
    m("spool.py", "the first read of a file hands out the entry the cache keeps",
      "        return entry.copy(journal)\n", "        return entry\n", SPOOL),
    m("secondaries.py", "status --dns takes a non-authoritative (cached) SOA answer as the"
      " secondary's zone",
      "if soa.rcode() != dns.rcode.NOERROR or not soa.flags & dns.flags.AA:",
      "if soa.rcode() != dns.rcode.NOERROR:", SECONDARIES, issue=28),
    m("secondaries.py", "a secondaryServers entry without @PORT gets no port",
      "found = [(None, addr, p or DNS_PORT) for addr, p in configured]",
      "found = [(None, addr, p) for addr, p in configured]", SECONDARIES, issue=28),
    m("secondaries.py", "a secondaryServers entry without @PORT is asked on namePort, not 53",
      "found = [(None, addr, p or DNS_PORT) for addr, p in configured]",
      "found = [(None, addr, p or port) for addr, p in configured]", SECONDARIES),

    # -- what issues 23, 24 and 27 changed: the bugs their authors feared most --------------
    m("keygen.py", "a key file goes to a group that holds other users too",
      "return not members and not any", "return not members or not any", KEYS_USERS),
    m("checkconf.py", "one of the group's permission bits is taken for all it needs",
      "(mode >> 3) & bits == bits", "(mode >> 3) & bits", CHECK),
    m("checkconf.py", "an SOA minimum equal to nameTTL is a finding",
      "if minimum > ttl", "if minimum >= ttl", CHECK),
    m("safefile.py", "a configuration directory the group can write is accepted",
      "if stat.S_ISDIR(st.st_mode) and mode & 0o022:",
      "if stat.S_ISDIR(st.st_mode) and mode & 0o002:",
      ["tests/test_config_check.py", "tests/test_config.py"]),
    m("journal.py", "discovery counts as a flap",
      'return self.old != "unknown" and "maint" not in (self.old, self.new)',
      'return "maint" not in (self.old, self.new)', DAY1),
    m("notify/outbox.py", "maintenance counts towards flapCount",
      "<= end and c.is_flap]", "<= end]", DAY1),
    m("probe/step.py", "reconcile --probe probes only the targets that are both unknown and stale",
      "or staleness(entry.checked, now, c.stale_after) is not None",
      "and staleness(entry.checked, now, c.stale_after) is not None",
      ["tests/test_maint.py", "tests/test_reconcile.py"]),
    m("notify/step.py", "a 5xx recipient is kept pending forever, a 4xx one given up",
      'reply.startswith("4")', 'reply.startswith("5")', DELIVERY),
    m("notify/step.py", "a mail refused outright on a repeat joins a digest to everyone",
      'if not getattr(e, "maybe_sent", False) and len(d.to) == len(d.mail.config.to):',
      'if not getattr(e, "maybe_sent", False):', DELIVERY),
    m("reconcile.py", "a delete the server did not apply goes unnoticed",
      'if (c.address in after.get(c.rdtype, [])) != (c.action == "add")',
      'if c.action == "add" and c.address not in after.get(c.rdtype, [])', DNSFAULTS),
    m("reconcile.py", "a transition's dns list keeps the oldest entries, not the latest",
      'del latest["dns"][:-DNS_KEPT]', 'del latest["dns"][DNS_KEPT:]', DNSFAULTS),
    m("nameserver.py", "another type's records under the pool name are taken as the RRset",
      "(rrset.name, rrset.rdclass, rrset.rdtype) != (q.name, q.rdclass, q.rdtype)",
      "rrset.name != q.name", DNSFAULTS),
    m("probe/http.py", "every read of a body counts towards the chunk cap",
      "self.chunks += chunk_start", "self.chunks += 1", PROBE),
    m("validate.py", "an IPv4-mapped address is published as AAAA",
      "if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:",
      "if False:", PROBE),
    m("spool.py", "a routine result kept in memory is never written before the loop ends",
      "entry.checked - seen[1].checked >= max_age", "entry.checked - entry.checked >= max_age",
      LAG),
    m("spool.py", "a read in the loop does not see the results kept in memory",
      "seen = _unwritten.get(key) or _parsed.get(key)", "seen = _parsed.get(key)", LAG),
    m("probe/step.py", "a first failure is kept in memory like a routine result",
      "            last, last is not None and all(r.ok is last for r in entry.results[-2:]))",
      "            last is not None and all(r.ok is last for r in entry.results[-2:]))", LAG),
    m("lag.py", "the lag warning comes every tick once the first minute is over",
      "while self.due <= now:", "if self.due <= now:", LAG),
    m("lag.py", "a probe run on time counts as late",
      "if late > tolerance(interval):", "if late >= 0:", LAG),
]


PRISTINE: dict[str, str] = {}  # module -> its text, read from the first copy


@dataclass
class Outcome:
    mutant: Mutant
    verdict: str  # killed, survived, timeout, stale, error
    seconds: float
    detail: str = ""


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in ("spdu_cli", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("man", "cron"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)


def env_for(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)  # ahead of the editable install of the working tree
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a same-size mutant must never meet a stale .pyc
    return env


def pytest(tree: Path, tests, timeout: float) -> tuple[int | None, str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "--no-header",
           *tests]
    try:
        p = subprocess.run(cmd, cwd=tree, env=env_for(tree), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, ""
    return p.returncode, p.stdout + p.stderr


def check_copy(tree: Path) -> None:
    """The copy, not the working tree, is what the tests import."""
    out = subprocess.run([sys.executable, "-c", "import spdu_cli; print(spdu_cli.__file__)"],
                         cwd=tree, env=env_for(tree), capture_output=True, text=True)
    if not out.stdout.strip().startswith(str(tree)):
        raise SystemExit(f"mutants: the tests would import {out.stdout.strip() or out.stderr}"
                         f", not the copy in {tree}")


def run_one(mutant: Mutant, tree: Path, timeout: float) -> Outcome:
    path = tree / "spdu_cli" / mutant.module
    pristine = PRISTINE.setdefault(mutant.module, path.read_text())  # as copied at the start
    if pristine.count(mutant.old) != 1:
        return Outcome(mutant, "stale", 0.0,
                       f"the snippet occurs {pristine.count(mutant.old)} times, not once")
    t0 = time.monotonic()
    path.write_text(pristine.replace(mutant.old, mutant.new))
    try:
        code, out = pytest(tree, mutant.tests, timeout)
    finally:
        path.write_text(pristine)
    took = time.monotonic() - t0
    if code is None:
        return Outcome(mutant, "timeout", took, f"no verdict within {timeout:g} s")
    if code == 0:
        return Outcome(mutant, "survived", took)
    if code in (1, 2):  # failed tests, or the mutant broke collection (an import error)
        lines = out.splitlines()
        failed = [ln for ln in lines if ln.startswith("FAILED ")] or [
            ln for ln in lines if ln.startswith("ERROR tests/")]
        return Outcome(mutant, "killed", took, failed[0] if failed else "")
    return Outcome(mutant, "error", took, f"pytest exited {code}:\n{out[-2000:]}")


def section(title: str, rows: list[Outcome], how) -> None:
    if rows:
        print(f"\n{title}")
    for r in rows:
        print(f"  {r.mutant.module}: {r.mutant.bug}\n{how(r.mutant)}")


def summary(results: list[Outcome], min_rate: float) -> int:
    equivalent = [r for r in results if r.mutant.equivalent and r.verdict == "survived"]
    counted = [r for r in results if r not in equivalent]
    killed = [r for r in counted if r.verdict in ("killed", "timeout")]
    survivors = [r for r in counted if r.verdict == "survived"]
    broken = [r for r in counted if r.verdict in ("stale", "error")]
    named = [r for r in results if r.mutant.issue]
    rate = 100.0 * len(killed) / len(counted) if counted else 0.0
    print()
    print(f"mutants: {len(results)}; killed {len(killed)} of the {len(counted)} that change"
          f" behaviour: kill rate {rate:.1f} % (minimum {min_rate:g} %);"
          f" {len(equivalent)} equivalent; {len(broken)} stale or broken")
    for n in sorted({r.mutant.issue for r in named}):
        of = [r for r in named if r.mutant.issue == n]
        print(f"named in issue #{n}: {sum(r.verdict in ('killed', 'timeout') for r in of)} of"
              f" {len(of)} killed")
    section("SURVIVORS (a test is missing):", survivors,
            lambda mu: f"    - {mu.old!r}\n    + {mu.new!r}")
    section("EQUIVALENT (no behaviour changes; expected to survive):", equivalent,
            lambda mu: f"    why: {mu.equivalent}")
    wrongly = [r for r in results if r.mutant.equivalent and r.verdict in ("killed", "timeout")]
    for r in wrongly:
        print(f"\nNOTE: {r.mutant.module}: '{r.mutant.bug}' is marked equivalent but was"
              f" killed ({r.detail}): drop the mark or fix the test")
    if broken:
        print("\nSTALE OR BROKEN (update the list in benchmarks/mutants.py):")
        for r in broken:
            print(f"  {r.mutant.module}: {r.mutant.bug}: {r.verdict}: {r.detail}")
        return 2
    if rate < min_rate or any(r.verdict not in ("killed", "timeout") for r in named) or wrongly:
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=1,
                    help="mutants run at once, each in its own copy (default 1)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds per mutant before it counts as killed by timeout")
    ap.add_argument("--only", default="",
                    help="run only the mutants whose module or bug contains this text")
    ap.add_argument("--issue", type=int, default=0,
                    help="run only the mutants named in this issue")
    ap.add_argument("--min-rate", type=float, default=95.0, help="kill rate to pass, in %%")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args()
    chosen = [mu for mu in MUTANTS if (args.only in mu.module or args.only in mu.bug)
              and (not args.issue or mu.issue == args.issue)]
    if not chosen:  # else pytest, given no test, would run the whole suite
        print(f"mutants: none matches --only {args.only!r}"
              f"{f' --issue {args.issue}' if args.issue else ''}", file=sys.stderr)
        return 2
    if args.list:
        for mu in chosen:
            flags = (f" [issue #{mu.issue}]" if mu.issue
                     else " [equivalent]" if mu.equivalent else "")
            print(f"{mu.module}: {mu.bug}{flags}")
        return 0
    print(f"mutation testing of the decision core: {len(chosen)} mutants; {machine()}")
    with tempfile.TemporaryDirectory(prefix="spdu-mutants-") as tmp:
        os.chmod(tmp, 0o755)  # tests run spdu as knot, bind, pdns: they read the copy too
        trees = []
        for i in range(max(1, args.jobs)):
            tree = Path(tmp) / f"tree{i}"
            copy_tree(tree)
            trees.append(tree)
        check_copy(trees[0])
        baseline = sorted({t for mu in chosen for t in mu.tests})
        code, out = pytest(trees[0], baseline, args.timeout * 3)
        if code != 0:
            print(f"the tests fail without any mutant (exit {code}); fix them first:\n"
                  f"{out[-3000:]}")
            return 2
        print(f"baseline: {len(baseline)} test selections pass unmutated")
        free = list(trees)
        results: list[Outcome] = []

        def work(mu: Mutant) -> Outcome:
            tree = free.pop()
            try:
                return run_one(mu, tree, args.timeout)
            finally:
                free.append(tree)

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(trees)) as pool:
            for r in pool.map(work, chosen):
                results.append(r)
                extra = f"\n{'':18}{r.detail[:150]}" if r.detail else ""
                print(f"{r.verdict.upper():9} {r.seconds:6.1f} s  {r.mutant.module}:"
                      f" {r.mutant.bug}{extra}", flush=True)
        print(f"\n{len(results)} mutants in {time.monotonic() - t0:.0f} s")
    return summary(results, args.min_rate)


if __name__ == "__main__":
    sys.exit(main())
