"""Make the pool RRset on this site's own DNS server match the spool.

For each pool: read its A and AAAA RRsets straight from the authoritative
server, build a Plan (the minimal diff, as data), then render it (nsupdate
script, JSON) or send it as one RFC 2136 UPDATE whose prerequisites pin the
RRsets to what was read, so a concurrent writer is never overwritten blindly.
The decision itself (`decide`) and the Plan are in spdu_cli.plan; the
exchanges with the server in spdu_cli.nameserver; this module is the step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

from spdu_cli import signatures
from spdu_cli.config import TargetConfig
from spdu_cli.entry import SpoolEntry, canon, iso, staleness
from spdu_cli.errors import ServiceUnavailable, SpduError, TemporaryFailure
from spdu_cli.nameserver import PrerequisiteFailed, keyring, read_current, read_dnskey, send
from spdu_cli.plan import (
    RDTYPES,
    Change,
    Decision,
    Plan,
    Pool,
    PoolKey,
    TargetView,
    decide,
    pools,
    zones,
)
from spdu_cli.spool import Spool

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # re-read and retry when a prerequisite fails (a concurrent writer)
SERIALS_KEPT = 16  # per pool, the serials of the last UPDATEs (for status --dns)
DNS_KEPT = 16  # per transition, the latest DNS changes noted for it (journal `dns`)


# -- the `spdu reconcile` step -----------------------------------------------------------


def _view(c: TargetConfig, entry: SpoolEntry) -> TargetView:
    return TargetView(
        c.target,
        entry.health.state,
        tuple(entry.addresses),
        entry.checked,
        tuple(str(ip) for ip in c.target_ips),
        c.name_ttl,
        c.stale_after,
        entry.maint.until if entry.maint else None,
        tuple(entry.retired),
    )


def _views(pool: Pool, entries: dict[str, SpoolEntry]) -> list[TargetView]:
    return [_view(c, entries[c.target]) for c in pool.targets]


def standing(site, entries: dict[str, SpoolEntry], now: float) -> tuple:
    """All that decide() makes of the configured targets' spool entries at
    `now`, as one comparable value (probe times only as fresh or stale, a
    maintenance as on or over). While it stays equal, pools that DNS agreed
    with still agree, unless someone else changed DNS: the cron loop then
    reads DNS less often (cycle.DRIFT_CHECK)."""
    out = []
    for name in site.targets:
        c = site.target(name)
        v = _view(c, entries[name])
        # decide() takes addresses as sets: a name that resolves in turns is no change
        out.append((replace(v, addresses=tuple(sorted(v.addresses)), checked=None,
                            configured=tuple(sorted(v.configured)), maint_until=None,
                            retired=tuple(sorted(v.retired))),
                    staleness(v.checked, now, v.stale_after) is None,
                    v.maint_until is not None and now < v.maint_until))
    return tuple(out)


def _plan(pool: Pool, entries: dict[str, SpoolEntry], attempt: int,
          prune: bool = False) -> Plan:
    """Read the pool's RRsets and decide."""
    answers: dict = {}
    current = read_current(pool, answers)
    from spdu_cli.peers import held  # the quorum (peerQuorum): peers kept for the others

    own = pool.self_check
    now = time.time()
    decision = decide(
        current["A"] + current["AAAA"], _views(pool, entries), pool.self_ips,
        pool.self_ttl, now, prune=prune,
        self_view=_view(own, entries[own.target]) if own and own.target in entries else None,
        held=held(pool.targets, entries, set(current["A"] + current["AAAA"]), now),
    )
    for note in decision.notes:
        log.debug("%s: %s", pool.key.name, note)
    if decision.blocked:  # the cron loop meets it every tick: once, then every few minutes
        line = f"{pool.key.name} on {pool.key.where}: {decision.blocked}"
        log.log(_once(line, logging.ERROR, BLOCKED_REMIND), "%s", line)
    signed = pool.tsig.describe() if pool.tsig else None
    return Plan(pool.key, signed, current, decision, attempts=attempt,
                tsig=pool.tsig.to_json() if pool.tsig else None,
                dnssec=signatures.seen(answers))


def reconcile_zone(group: list[Pool], entries: dict[str, SpoolEntry],
                   dry_run: bool, prune: bool = False) -> list[Plan]:
    """Read and decide each pool of one zone, then (unless dry-run) send all
    their changes as one UPDATE, re-reading when a concurrent writer changed
    the RRsets in between."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        plans = [_plan(pool, entries, attempt, prune) for pool in group]
        items = [(pool, plan) for pool, plan in zip(group, plans) if plan.changes]
        if dry_run or not items:
            return plans
        try:
            send(items)
        except PrerequisiteFailed as e:
            names = ", ".join(p.key.name for p, _ in items)
            log.warning("%s on %s changed while spdu was updating it (%s); reading it again",
                        names, group[0].key.where, e)
            continue
        for pool, plan in items:
            verify(pool, plan)
            if plan.dnssec and plan.dnssec.problem:  # made, but clients would not take it
                plan.error = invalid(pool, plan.dnssec.problem)
                log.error("%s", plan.error)
        # The serial the UPDATE made: status --dns tells from it since when a
        # secondary that has not caught up has lagged.
        from spdu_cli.secondaries import serial_of

        k = group[0].key
        serial = serial_of(k.server, k.port, k.zone, group[0].timeout, keyring(group[0].tsig))
        for pool, plan in items:
            plan.sent = True
            plan.serial_after = serial
            for c in plan.changes:
                who = c.target or ("no target (--prune)" if c.pruned else "selfIP")
                log.info("%s: %s %s %s on %s", who, c.action, pool.key.name, c.address,
                         pool.key.where)
        return plans
    names = ", ".join(p.key.name for p in group)
    raise TemporaryFailure(
        f"{names} on {group[0].key.where} kept changing under spdu ({MAX_ATTEMPTS} tries)",
        "another writer is updating the same RRset; try again",
    )


class NotApplied(ServiceUnavailable):
    """The server answered NOERROR to an UPDATE, and the RRset read after it
    shows the change was not made."""


REMIND = 600.0  # s: a server that keeps not applying is said so again this often
BLOCKED_REMIND = 300.0  # s: the same for a change that would empty the pool
_said: dict[str, float] = {}  # in this process (the cron loop): message -> when it was logged


def _level(e: SpduError) -> int:
    """ERROR; for NotApplied, which the cron loop meets on every tick, once per
    process and message, and again every REMIND seconds (else DEBUG)."""
    if isinstance(e, NotApplied):  # one server and pool: whichever change it dropped
        return _once(str(e), logging.ERROR, key=str(e).partition(" but did not apply")[0])
    return logging.ERROR


def _once(message: str, level: int, every: float = REMIND, key: str | None = None) -> int:
    """`level` the first time this process logs `message` (or one of the same
    `key`) and every `every` seconds after; DEBUG in between."""
    key = message if key is None else key
    now, last = time.monotonic(), _said.get(key)
    if last is not None and now - last < every:
        return logging.DEBUG
    _said[key] = now
    return level


def unmanaged_warnings(plans: list[Plan], left: set[str] = frozenset()) -> list[str]:
    """One line per pool holding addresses that are neither selfIP nor any
    target's (a target removed from targets=, or one added by hand): spdu
    leaves them there; `spdu reconcile --prune` removes them."""
    out = []
    for p in plans:
        extra = [a for a in p.decision.unmanaged if canon(a) not in left]
        if p.error is None and extra:
            one = len(extra) == 1
            it, its = ("it", "its") if one else ("them", "their")
            out.append(
                f"{p.pool.name} on {p.pool.where} holds {' '.join(extra)}, which"
                f" {'is' if one else 'are'} neither selfIP nor the address of a target in"
                f" targets=: spdu leaves {it} there, even when {its} site is down;"
                f" `spdu reconcile --prune` removes {it}")
    return out


def verify(pool: Pool, plan: Plan) -> None:
    """Read the RRsets again after a NOERROR: a server (or something in front of
    it) that says NOERROR and applies nothing must not pass for a change made.
    In a signed zone the changed RRsets' signatures are checked too (in
    plan.dnssec), read again until they are good for nameTimeout at most: an
    online signer may sign the change a moment after it answered."""
    signed = bool(plan.dnssec and plan.dnssec.signed)
    deadline, pause = time.monotonic() + pool.timeout, 0.02
    while True:
        answers: dict = {}
        after = read_current(pool, answers)
        missing = [c for c in plan.changes
                   if (c.address in after.get(c.rdtype, [])) != (c.action == "add")]
        seen = signatures.seen(answers)
        signed = signed or seen.signed
        if not signed:
            break  # unsigned: one read, as it always was
        if not missing:
            # A and AAAA both: a change to one changes the other's proof of absence
            plan.dnssec = check(pool, answers, RDTYPES, seen)
            if plan.dnssec.problem is None or signatures.EXPIRING in plan.dnssec.problem:
                return  # good; or freshly signed and still too short-lived: no use waiting
        if time.monotonic() + pause > deadline:
            break
        time.sleep(pause)
        pause = min(2 * pause, 0.25)
    if not missing:
        return
    c = missing[0]
    did = (f"{c.address} is not in {pool.key.name} {c.rdtype}" if c.action == "add"
           else f"{c.address} is still in {pool.key.name} {c.rdtype}")
    more = f" (and {len(missing) - 1} more change(s))" if len(missing) > 1 else ""
    raise NotApplied(
        f"DNS server {pool.key.where} answered NOERROR to the update of {pool.key.name}"
        f" but did not apply it: read again, {did}{more}",
        "is nameServer the zone's primary, and not a secondary or a proxy that drops"
        " updates? see the server's log",
    )


class InvalidSignatures(ServiceUnavailable):
    """A change spdu made in a signed zone is served with signatures that do
    not validate, or that expire within twice the TTL of what they cover."""


def invalid(pool: Pool, why: str) -> InvalidSignatures:
    return invalid_for(pool.key, why)


def invalid_for(k: PoolKey, why: str) -> InvalidSignatures:
    if signatures.DENIAL in why:
        hint = (f"validating resolvers answer SERVFAIL for that type of {k.name}: PowerDNS"
                " drops a name from a stored NSEC or NSEC3 chain when an UPDATE only removes"
                f" records; `pdnsutil rectify-zone {k.zone}` and `pdns_control purge"
                f" {k.zone}$` repair it, NSEC3 narrow mode"
                f" (`pdnsutil set-nsec3 {k.zone} '1 0 0 -' narrow`, then rectify-zone)"
                " prevents it")
    elif signatures.EXPIRING in why:
        hint = ("the server must sign again sooner before signatures expire (Knot:"
                " rrsig-refresh, BIND: signatures-refresh), or nameTTL be lower")
    else:
        hint = ("validating resolvers answer SERVFAIL for what does not validate: see the"
                " server's log; is its online signing on and are its keys usable? (Knot:"
                " dnssec-signing, BIND: dnssec-policy with inline-signing, PowerDNS:"
                " pdnsutil secure-zone)")
    return InvalidSignatures(
        f"DNS server {k.where} signs zone {k.zone}, and after the update of {k.name}: {why}",
        hint)


def check(pool: Pool, answers: dict, rdtypes, seen: signatures.Signatures,
          ) -> signatures.Signatures:
    """`seen` (signed answers), checked with the zone's DNSKEY RRset read
    from the same server; not checked (a warning) where dnspython cannot."""
    dnskey = read_dnskey(pool)
    try:
        why = signatures.problem(pool.key.zone, pool.key.name, rdtypes, answers,
                                 dnskey, time.time())
    except signatures.CannotValidate as e:
        line = (f"{pool.key.name} on {pool.key.where} is signed (DNSSEC), but spdu cannot"
                f" check its signatures: {e}; install spdu's dnssec extra"
                " (pip install 'spdu[dnssec]', which brings the cryptography dnspython needs)")
        log.log(_once(line, logging.WARNING), "%s", line)
        return seen
    return replace(seen, checked=True, problem=why)


def recheck(pool: Pool, plan: Plan) -> None:
    """While a DNSSEC problem of this pool stands (noted by an earlier run),
    each run checks its signatures again, so that its end is noticed too."""
    answers: dict = {}
    read_current(pool, answers)
    seen = signatures.seen(answers)
    plan.dnssec = (check(pool, answers, RDTYPES, seen) if seen.signed
                   else replace(seen, checked=True))  # no longer signed: nothing to fail
    if plan.dnssec.problem:
        line = f"{invalid(pool, plan.dnssec.problem)} (still)"
        log.log(_once(line, logging.WARNING), "%s", line)


def record(store: Spool, plan: Plan, now: float) -> None:
    """Note each change in the target's latest transition, for the mail."""
    by_target: dict[str, list[Change]] = {}
    for c in plan.changes:
        if c.target:
            by_target.setdefault(c.target, []).append(c)
    for target, changes in by_target.items():
        entry = store.read(target)
        if entry.fresh or not entry.journal:
            continue
        latest = entry.journal[-1]
        wanted = {"add": ("up",), "delete": ("down", "maint")}[changes[0].action]
        if latest.get("to") not in wanted:  # it moved on since: not this transition's doing
            continue
        latest.setdefault("dns", []).extend(
            {
                "at": iso(now),
                "action": c.action,
                "address": c.address,
                "rrset": f"{plan.pool.name} {c.rdtype}",
                "server": f"{plan.pool.server}:{plan.pool.port}",
            }
            for c in changes
        )
        del latest["dns"][:-DNS_KEPT]  # bounded, whatever happens to DNS
        store.write(entry)


def run(site, dry_run: bool = False, lock_timeout: float = 5.0,
        prune: bool = False) -> list[Plan]:
    """Reconcile every pool of the configured targets. A failing pool does not
    stop the others: its Plan carries the error. Addresses of no target are
    named in a warning (see unmanaged_warnings), and removed only with `prune`."""
    cfgs = [site.target(n) for n in site.select(())]
    store = Spool(site.spool_dir)
    store.check_dir(writing=not dry_run)  # the rule of every command, before anything is sent
    entries, unreadable = {}, []
    for c in cfgs:
        try:
            entries[c.target] = store.read(c.target)
        except TemporaryFailure as e:  # that target is unknown; the others go on
            log.error("%s; %s is left as it is", e, c.target)
            entries[c.target], unreadable = SpoolEntry(c.target), unreadable + [e]
    left = set()  # the addresses of a target whose file is refused: left as they are
    for name in getattr(site, "broken", {}):
        try:
            left.update(canon(a) for a in store.read(name).addresses)
        except SpduError:
            pass
    plans = []
    members: dict[int, list[str]] = {}  # id(plan) -> its pool's targets
    done: dict[str, set[str]] = {}  # target -> the addresses its pool holds now
    standing = None  # the reconcile record, read once a signed pool is met
    for group in zones(pools(cfgs)):
        try:
            got = reconcile_zone(group, entries, dry_run, prune)
        except SpduError as e:
            log.log(_level(e), "%s", e)
            got = [Plan(pool.key, None, {}, Decision((), (), None), error=e) for pool in group]
        for pool, plan in zip(group, got):
            if (not dry_run and not plan.sent and plan.error is None and plan.dnssec
                    and plan.dnssec.signed):
                standing = store.read_reconcile() if standing is None else standing
                if (standing.get(pool_id(pool.key)) or {}).get("dnssec_problem"):
                    try:
                        recheck(pool, plan)
                    except SpduError as e:  # the next run checks again
                        log.warning("%s", e)
            plans.append(plan)
            members[id(plan)] = [c.target for c in pool.targets + [pool.self_check] if c]
            if not prune:
                for line in unmanaged_warnings([plan], left):
                    log.log(_once(line, logging.WARNING), "%s", line)
            after = plan.after()
            if after is not None:
                done.update({c.target: after for c in pool.targets})
    if dry_run:
        if unreadable:
            raise unreadable[0]
        return plans
    now = time.time()
    notices = []
    try:
        with store.locked(lock_timeout):
            for p in plans:
                if p.sent:
                    record(store, p, now)
                elif p.error is None and p.after() is not None:
                    record_found(store, p, members.get(id(p), []), now)
            forget_retired(store, {t: a for t, a in done.items() if entries[t].retired})
            notices = note_runs(store, plans, now)
            from spdu_cli import flipflop  # the same change made again and again

            notices += flipflop.note(site.spool_dir, plans, entries, now)
    except SpduError as e:
        if any(p.sent for p in plans):
            raise
        log.warning("%s (the reconcile record in the spool is not updated)", e)
    if notices:
        from spdu_cli import trouble

        for key, level, problem in notices:
            trouble.post(key, level, problem)
    if unreadable:
        raise unreadable[0]
    return plans


def record_found(store: Spool, plan: Plan, targets: list[str], now: float) -> None:
    """A pool that needed no change: a target's latest transition with nothing
    recorded whose addresses DNS already shows as it wants (its UPDATE went
    through, but spdu died or lost the answer before recording it) records
    that, so its mail does not say DNS has not been changed."""
    after = plan.after()
    for target in targets:
        entry = store.read(target)
        if entry.fresh or not entry.journal or not entry.addresses:
            continue
        latest = entry.journal[-1]
        if latest.get("dns") or latest.get("notified"):
            continue
        want = {"up": "present", "down": "absent", "maint": "absent"}.get(latest.get("to"))
        mine = [canon(a) for a in entry.addresses]
        if want is None or (want == "present") != all(a in after for a in mine) or (
                want == "absent" and any(a in after for a in mine)):
            continue
        latest["dns"] = [{"at": iso(now), "action": want, "address": a,
                          "rrset": f"{plan.pool.name} {'AAAA' if ':' in a else 'A'}",
                          "server": f"{plan.pool.server}:{plan.pool.port}"} for a in mine]
        store.write(entry)


def forget_retired(store: Spool, pool_now: dict[str, set[str]]) -> None:
    """Drop from each target's `retired` the addresses its pool no longer holds."""
    for target, after in pool_now.items():
        entry = store.read(target)
        still = [a for a in entry.retired if canon(a) in after]
        if still != entry.retired and not entry.fresh:
            entry.retired = still
            store.write(entry)


def pool_id(key: PoolKey) -> str:
    return f"{key.name} {key.server}:{key.port}"


def note_runs(store: Spool, plans: list[Plan], now: float) -> list:
    """Keep, per pool, the time of the last successful run, how many UPDATEs
    were sent, when the last ones made which serial, and a DNSSEC problem
    while it stands (spoolDir/.reconcile.json), for the metrics and status
    --dns. Returns the notices to send: a DNSSEC problem that began or ended."""
    pools = store.read_reconcile()
    notices = []
    before = json.dumps(pools, sort_keys=True)
    for p in plans:
        rec = pools.setdefault(pool_id(p.pool), {
            "pool": p.pool.name, "server": f"{p.pool.server}:{p.pool.port}",
            "last_success": None, "updates": 0,
        })
        if p.error is None:
            rec["last_success"] = iso(now)
        rec["updates"] = int(rec.get("updates", 0)) + p.sent
        if p.sent and p.serial_after is not None:
            rec["serials"] = (list(rec.get("serials") or []) + [[iso(now), p.serial_after]])[
                -SERIALS_KEPT:]
        notices += note_signatures(rec, p, now)
    if json.dumps(pools, sort_keys=True) != before:  # nothing new: no write, no fsync
        store.write_reconcile(pools)
    return notices


def note_signatures(rec: dict, p: Plan, now: float) -> list:
    """A DNSSEC problem of the pool is noted in its record `rec` while it
    stands: the notice that it began, once, and the notice that it is over
    once its signatures were checked good again (or the zone is no longer
    signed). The notices of trouble.py, through every channel."""
    d, was = p.dnssec, rec.get("dnssec_problem")
    if d is None or (p.error is not None and not d.problem):  # not read: nothing is known
        return []
    if d.checked and d.problem:
        text = str(p.error) if p.error else str(invalid_for(p.pool, d.problem))
        since = was.get("since") if isinstance(was, dict) else None
        rec["dnssec_problem"] = {"text": text, "since": since or iso(now)}
        return [] if was and not _unsaid(was) else [_notice("WARNING", p, text)]
    if was and (d.checked or not d.signed):
        del rec["dnssec_problem"]
        if _unsaid(was):  # its WARNING never went out: nor does the word that it is over
            return []
        return [_notice("NOTICE", p, was.get("text", "") if isinstance(was, dict) else "")]
    return []


NOTICE_KEY = "dnssec "  # a DNSSEC notice's key: this, then the pool's id


def _unsaid(was) -> bool:
    return isinstance(was, dict) and was.get("unsaid") is True


def send_notices_by_hand(site, lock_timeout: float) -> None:
    """`spdu reconcile` by hand: the DNSSEC notices it posted go out now, once
    (trouble.send_posted); a WARNING no channel took is recorded as not said
    (unnote), and said to stderr."""
    from spdu_cli import trouble

    for n in trouble.send_posted(site):
        if n.level == "WARNING" and unnote(Spool(site.spool_dir), n.key, lock_timeout):
            log.error("the notice %r went out through no channel; the next run says it again",
                      n.problem.notice)


def unnote(store: Spool, key: str, lock_timeout: float) -> bool:
    """A DNSSEC problem's WARNING (`key`, as _notice makes it) that went out
    through no channel: the problem stays recorded (each run checks it again)
    as not said yet, so that the next run that finds it standing (the cron
    loop's, which tries a notice again) says it. False when it was not
    recorded, or the spool could not be written."""
    name = key.removeprefix(NOTICE_KEY)
    try:
        with store.locked(lock_timeout):
            pools = store.read_reconcile()
            was = pools.get(name, {}).get("dnssec_problem") if name != key else None
            if not isinstance(was, dict):
                return False
            was["unsaid"] = True
            store.write_reconcile(pools)
    except SpduError as e:
        log.warning("%s (the DNSSEC problem stays recorded as said)", e)
        return False
    return True


def _notice(level: str, p: Plan, text: str) -> tuple:
    from spdu_cli.trouble import Problem

    return (f"{NOTICE_KEY}{pool_id(p.pool)}", level,
            Problem(text, False, f"bad DNSSEC signatures in {p.pool.name} on {p.pool.where}"))
