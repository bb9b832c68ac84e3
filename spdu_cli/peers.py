"""Peer views: each site's pool RRset, on its own authoritative server, is
what that site thinks. spdu reads them (no key, nothing written), keeps them
in spoolDir/.peers.json, and says where the sites disagree.

A target's server is `targetDNS` when set; else the pool zone's NS set, as
this site's nameServer serves it (secondaries.ns_servers), each NS address
that is one of the target's addresses (targetIP, else those its last probe
checked) being that target's: the original's setup runs knotd beside
HAProxy on every site. This site's own view is its nameServer's pool.

A peer's answer is hostile input: one deadline (nameTimeout) for both
questions, an authoritative NOERROR only, and only the pool name's A/AAAA in
the answer section taken, at most MAX_ADDRESSES of them (A and AAAA together).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass, field

from spdu_cli import peerwait
from spdu_cli.entry import epoch, iso
from spdu_cli.errors import SpduError

log = logging.getLogger(__name__)

VIEWS_NAME = ".peers.json"
VERSION = 1
MAX_ADDRESSES = 64  # more than this in one view: not a pool, the view is unreadable
MAX_STATE = 1 << 20
FRESH = 3.0  # a view last read well more than FRESH x peerInterval (+...) ago is stale
NS_REFRESH = 300.0  # s: the NS set is read again this often


@dataclass(frozen=True)
class Server:
    site: str
    address: str
    port: int
    how: str  # "targetDNS", "NS ns.beta.example.", "nameServer"

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}" if ":" not in self.address else \
            f"[{self.address}]:{self.port}"


@dataclass(frozen=True)
class View:
    addresses: tuple[str, ...] = ()
    error: str | None = None


# -- reading one view -------------------------------------------------------------------


def take(answer, pool_name: str, rdtype: str, room: int = MAX_ADDRESSES) -> list[str]:
    """The pool name's `rdtype` addresses in an answer, nothing else (no CNAME
    followed, no other name, no other section); ValueError when it is not an
    authoritative NOERROR or NXDOMAIN, or holds more than `room` (what is left
    of MAX_ADDRESSES, A and AAAA together)."""
    import dns.flags
    import dns.name
    import dns.rcode
    import dns.rdataclass
    import dns.rdatatype

    rcode = answer.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise ValueError(f"answers {dns.rcode.to_text(rcode)} for {pool_name} {rdtype}")
    if not answer.flags & dns.flags.AA:
        raise ValueError(f"is not authoritative for {pool_name} (no AA flag)")
    name, want = dns.name.from_text(pool_name), dns.rdatatype.from_text(rdtype)
    out = []
    for rrset in answer.answer:
        if rrset.name != name or rrset.rdclass != dns.rdataclass.IN or rrset.rdtype != want:
            continue
        for r in rrset:
            out.append(str(ipaddress.ip_address(r.address)))
            if len(out) > room:
                raise ValueError(f"holds more than {MAX_ADDRESSES} A and AAAA records for"
                                 f" {pool_name}: not a pool")
    return out


def read_view(server: Server, pool_name: str, timeout: float) -> View:
    """One site's pool as its server answers it; any failure is in the View."""
    import dns.exception

    from spdu_cli.secondaries import _ask

    deadline = time.monotonic() + timeout
    found: list[str] = []

    def ask(rdtype: str, share: float = 0.5):  # a lost datagram: a second try, in time
        left = deadline - time.monotonic()
        if left <= 0:
            raise dns.exception.Timeout
        try:
            return _ask(server.address, server.port, pool_name + ".", rdtype, left * share)
        except dns.exception.Timeout:
            if share == 1.0:
                raise
        return ask(rdtype, 1.0)

    try:
        for rdtype in ("A", "AAAA"):
            found += take(ask(rdtype), pool_name + ".", rdtype, MAX_ADDRESSES - len(found))
    except dns.exception.Timeout:
        return View(error=f"no answer from {server.where} within {timeout:g} s")
    except ValueError as e:
        return View(error=f"{server.where} {e}")
    except (OSError, dns.exception.DNSException) as e:
        return View(error=f"{server.where}: {e or type(e).__name__}")
    ip = ipaddress.ip_address
    return View(tuple(sorted(set(found), key=lambda a: (ip(a).version, ip(a)))))


def read_all(servers: dict[str, Server], pool_name: str, timeout: float) -> dict[str, View]:
    """Every view at once (a thread each), none waited for longer than `timeout`
    and a moment: a server that hangs costs its own deadline only."""
    out: dict[str, View] = {}
    threads = [threading.Thread(target=lambda s=s: out.__setitem__(
        s.site, read_view(s, pool_name, timeout)), daemon=True) for s in servers.values()]
    for t in threads:
        t.start()
    end = time.monotonic() + timeout + 0.5
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    for name, s in servers.items():
        out.setdefault(name, View(error=f"no answer from {s.where} within {timeout:g} s"))
    return dict(out)


# -- whose server is which --------------------------------------------------------------


@dataclass
class Finder:
    """Each site's server, the NS set read again every NS_REFRESH seconds. A
    failed read keeps the last good set, and is tried again after peerInterval,
    twice as long after each failure in a row, up to NS_REFRESH."""

    ns: list | None = None
    ns_error: str | None = None
    ns_next: float = -1e18  # (monotonic) when the NS set is read next
    ns_failed: int = 0  # failed reads in a row

    def servers(self, site, entries: dict, clock: float) -> tuple[dict[str, Server], dict]:
        """(site -> its server, site -> why none was found)."""
        from spdu_cli.settings import check_value

        cfgs = peer_configs(site)
        first = cfgs[0]
        me = first.my_tag
        found = {me: Server(me, str(first.name_server), first.name_port, "nameServer")}
        missing = {}
        need_ns = []
        for c in cfgs:
            own = check_value("targetDNS", c.settings["targetDNS"])
            if own:
                addr, port = own[0]
                found[c.target] = Server(c.target, addr, port or 53, "targetDNS")
            else:
                need_ns.append(c)
        if need_ns and clock >= self.ns_next:
            from spdu_cli.secondaries import ns_servers

            try:
                self.ns = ns_servers(str(first.name_server), first.name_port, first.pool_zone,
                                     first.name_timeout)
                self.ns_error, self.ns_failed, self.ns_next = None, 0, clock + NS_REFRESH
            except SpduError as e:  # the last good set stays
                self.ns_error, self.ns_failed = e.message, self.ns_failed + 1
                interval = check_value("peerInterval", first.settings["peerInterval"])
                self.ns_next = clock + min(NS_REFRESH, interval * 2 ** min(self.ns_failed - 1,
                                                                           16))
        for c in need_ns:
            mine = {str(ipaddress.ip_address(a)) for a in
                    [*(str(i) for i in c.target_ips), *getattr(entries.get(c.target), "addresses",
                                                               ())]}
            hit = [(n, a) for n, a in (self.ns or []) if a and str(ipaddress.ip_address(a))
                   in mine]
            if hit:
                found[c.target] = Server(c.target, hit[0][1], c.name_port, f"NS {hit[0][0]}")
            else:
                fix = f"set targetDNS in {site.target_dir / c.target}"
                missing[c.target] = f"{self.ns_error}; {fix}" if self.ns is None else (
                    f"no NS of {c.pool_zone} has one of its addresses"
                    f" ({' '.join(sorted(mine)) or 'none known yet'}); {fix}")
        return found, missing


# -- the state kept in the spool ----------------------------------------------------------


def load(spool_dir: str) -> dict:
    """spoolDir/.peers.json; empty when missing or damaged (hostile: bounded)."""
    from pathlib import Path

    from spdu_cli.spool import read_file

    path = Path(spool_dir) / VIEWS_NAME
    try:
        data = read_file(path, MAX_STATE)
    except OSError:
        return {}
    seen = _loaded.get(str(path))
    if seen is not None and seen[0] == data:  # the very bytes parsed before (spool._parsed)
        return dict(seen[1])  # (callers set top-level keys only)
    try:
        if len(data) > MAX_STATE:
            raise ValueError("file too large")
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("version") != VERSION or not isinstance(
                d.get("sites"), dict):
            raise ValueError("not a state spdu writes")
        out = clean(d)
    except (ValueError, TypeError, AttributeError, KeyError, OverflowError,
            RecursionError) as e:  # whatever a damaged or hostile file holds
        log.warning("%s is damaged (%s); the peer views start again", path,
                    str(e)[:200] or type(e).__name__)
        out = {}
    _loaded.clear()
    _loaded[str(path)] = (data, out)
    return dict(out)


_loaded: dict[str, tuple] = {}  # path -> (its bytes, its state): keyed by the bytes, as spool.py


def _time(v) -> str | None:
    """An ISO time as spdu writes them, else None."""
    try:
        return v if isinstance(v, str) and len(v) < 40 and epoch(v) is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _text(v) -> str | None:
    return v[:1000] if isinstance(v, str) else None


def _addresses(v) -> list[str] | None:
    """A view's addresses, as read; None when the record is not one spdu wrote
    (cut or mended, it would be another view)."""
    if not isinstance(v, list) or len(v) > MAX_ADDRESSES:
        return None
    try:
        return [str(ipaddress.ip_address(a)) for a in v]
    except (TypeError, ValueError):
        return None


def clean(d: dict) -> dict:
    """The state as written by spdu, whatever the file holds: each field of
    the type it must have, or left out (what cannot be read counts for nothing)."""
    sites = {}
    for name, rec in list(d.get("sites", {}).items())[:256]:
        if not isinstance(name, str) or not isinstance(rec, dict):
            continue
        serving = rec.get("serving") if isinstance(rec.get("serving"), dict) else {}
        sites[name[:64]] = {
            "server": _text(rec.get("server")), "how": _text(rec.get("how")),
            "read_at": _time(rec.get("read_at")), "ok_at": _time(rec.get("ok_at")),
            "since": _time(rec.get("since")), "addresses": _addresses(rec.get("addresses")),
            "error": _text(rec.get("error")) if rec.get("error") is not None else None,
            "serving": {str(o)[:64]: t for o, t in list(serving.items())[:256]
                        if _time(t)}}
        r = sites[name[:64]]
        if r["addresses"] is None or (rec.get("error") is not None and r["error"] is None):
            r.update(error="unreadable record", addresses=[], ok_at=None)  # counts for nothing
    out = {"sites": sites, "self": _text(d.get("self")), "read_at": _time(d.get("read_at")),
           "down": [t for t in d.get("down", []) if isinstance(t, str)][:256]
           if isinstance(d.get("down"), list) else []}
    for key in ("divergence", "held"):
        recs = d.get(key) if isinstance(d.get(key), dict) else {}
        out[key] = {str(k)[:64]: {"since": _time(r.get("since")) or out["read_at"],
                                  "noticed": r.get("noticed") is True,
                                  "text": _text(r.get("text")) or "",
                                  "why": _text(r.get("why")) or ""}
                    for k, r in list(recs.items())[:256] if isinstance(r, dict)}
    return out


def save(spool_dir: str, state: dict) -> None:
    from pathlib import Path

    from spdu_cli.spool import FILE_MODE, atomic_write

    data = json.dumps({**state, "version": VERSION}, indent=1, sort_keys=True).encode()
    atomic_write(Path(spool_dir) / VIEWS_NAME, data + b"\n", FILE_MODE, "peer views",
                 sync=False)


def merge(state: dict, views: dict[str, View], servers: dict[str, Server],
          missing: dict[str, str], me: str, now: float) -> dict:
    """The new state: each site's view, since when it serves what it serves,
    when it was last read well."""
    old = state.get("sites") or {}
    sites = {}
    for name in sorted({*servers, *missing}):
        was = old.get(name) if isinstance(old.get(name), dict) else {}
        s = servers.get(name)
        v = views.get(name, View(error=missing.get(name, "not read")))
        rec = {"server": s.where if s else None, "how": s.how if s else None,
               "read_at": iso(now), "error": v.error,
               "addresses": list(v.addresses) if v.error is None else was.get("addresses", []),
               "ok_at": iso(now) if v.error is None else was.get("ok_at"),
               "since": was.get("since"), "serving": was.get("serving") or {}}
        if v.error is None and (was.get("addresses") != list(v.addresses)
                                or was.get("ok_at") is None):
            rec["since"] = iso(now)
        sites[name] = rec
    return {**state, "self": me, "read_at": iso(now), "sites": sites}


def fresh_for(interval: float, timeout: float) -> float:
    """How old a view may be and count: FRESH reads, each of which may take
    its deadline (a peer that hangs delays the others' next read)."""
    return FRESH * interval + timeout + 1.0


def fresh(rec: dict, now: float, bound: float) -> bool:
    """A view read well at most `bound` seconds ago: its last good addresses
    count until then, whatever the reads since (one lost datagram drops no
    view); a read "in the future" (the clock stepped back) is stale."""
    if not isinstance(rec, dict):
        return False
    try:
        ok = epoch(rec.get("ok_at"))
    except (TypeError, ValueError, OverflowError):
        return False
    return ok is not None and -1.0 <= now - ok <= bound


def owners(site, entries: dict) -> dict[str, set[str]]:
    """Each site's addresses: this one's selfIP, each target's targetIP or probed ones."""
    cfgs = peer_configs(site)
    out = {cfgs[0].my_tag: {str(i) for i in cfgs[0].self_ips}}
    for c in cfgs:
        got = {str(i) for i in c.target_ips} or set(getattr(entries.get(c.target), "addresses",
                                                            ()) or ())
        out[c.target] = {str(ipaddress.ip_address(a)) for a in got}
    return out


def matrix(state: dict, owned: dict[str, set[str]], now: float, bound: float) -> dict:
    """owner -> {"serve": [sites], "not": [sites], "unreadable": [sites]}."""
    sites = sorted((state.get("sites") or {}).items())
    readable = [(n, set(r.get("addresses") or ())) for n, r in sites if fresh(r, now, bound)]
    unreadable = [n for n, r in sites if not fresh(r, now, bound)]
    return {owner: {"serve": [n for n, got in readable if addrs & got],
                    "not": [n for n, got in readable if not addrs & got],
                    "unreadable": list(unreadable)}
            for owner, addrs in owned.items()}


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def split_text(owner: str, row: dict, seconds: float) -> str:
    serve, not_ = row["serve"], row["not"]
    return (f"{_names(serve)} serve{'s' if len(serve) == 1 else ''} {owner};"
            f" {_names(not_)} do{'es' if len(not_) == 1 else ''} not, for {seconds:.0f} s")


def divergence(state: dict, m: dict, now: float, after: float) -> list:
    """Note in `state` since when each owner's sites disagree; the notices
    (key, level, Problem) of a split that lasted `after` s (once) and of its end."""
    from spdu_cli.trouble import Problem

    was = state.get("divergence") if isinstance(state.get("divergence"), dict) else {}
    now_split, out = {}, []
    for owner, row in m.items():
        key = f"peers {owner}"
        old = was.get(owner) if isinstance(was.get(owner), dict) else {}
        if row["serve"] and row["not"]:
            since = epoch(old.get("since")) if old.get("since") else now
            rec = {"since": iso(since), "noticed": bool(old.get("noticed")),
                   "text": split_text(owner, row, now - since)}
            if after and not rec["noticed"] and now - since >= after:
                rec["noticed"] = True
                out.append((key, "WARNING", Problem(
                    f"The sites disagree about {owner}: {rec['text']}. Each site's DNS"
                    " answers a share of the clients, so they get different pools. A broken"
                    " link between two sites, a site whose view is wrong, or a peer that lies"
                    " (it can only keep an address in); `spdu status --peers` shows the"
                    " matrix.", False, f"the sites disagree about {owner}")))
            now_split[owner] = rec
        elif old.get("noticed"):
            out.append((key, "NOTICE", Problem(
                f"The sites disagreed about {owner}: {old.get('text')}", False,
                f"the sites disagree about {owner}")))
    state["divergence"] = now_split
    return out


# -- one round, as the loop does it ------------------------------------------------------


def peer_configs(site) -> list:
    """The configured targets that are other sites: not `self` (the self-check's
    pseudo-target, this site's own service, whose view is this site's)."""
    return [c for c in (site.target(t) for t in site.targets) if not c.is_self]


def entries_of(site) -> dict:
    """The targets' spool entries that can be read (the others: unknown)."""
    from spdu_cli.spool import Spool

    store, out = Spool(site.spool_dir), {}
    for t in site.targets:
        try:
            out[t] = store.read(t)
        except SpduError:
            pass
    return out


def settings(site) -> dict:
    from spdu_cli.settings import KEYS, Setting, check_value

    def get(key):
        return check_value(key, site.settings.get(key, Setting(_default(KEYS[key]))))

    out = {k: get(k) for k in ("peerViews", "peerInterval", "peerDivergence", "peerQuorum",
                               "peerWait")}
    cfgs = peer_configs(site)
    timeout = cfgs[0].name_timeout if cfgs else 0.0
    out["fresh"] = fresh_for(out["peerInterval"], timeout)
    return out


def _default(key) -> str:
    return key.default if isinstance(key.default, str) else ""


def refresh(site, finder: Finder, clock: float, now: float | None = None) -> dict:
    """Read every view once, note it in the spool with the disagreements, and
    post their notices (trouble.post); the new state."""
    from spdu_cli import trouble

    conf = settings(site)
    entries = entries_of(site)
    servers, missing = finder.servers(site, entries, clock)
    first = peer_configs(site)[0]
    views = read_all(servers, first.pool_name, first.name_timeout)
    now = time.time() if now is None else now  # when they were read
    state = merge(load(site.spool_dir), views, servers, missing, first.my_tag, now)
    owned = owners(site, entries)
    note_serving(state, owned, now)
    m = matrix(state, owned, now, conf["fresh"])
    notices = divergence(state, m, now, conf["peerDivergence"])
    mine = set((state["sites"].get(first.my_tag) or {}).get("addresses") or ())
    kept = held(peer_configs(site), entries, mine, now, state)
    notices += note_held(state, kept, first.my_tag, now)
    from spdu_cli.health import State

    # the quorum may change what DNS should hold only for a peer seen down here, and
    # only while another site's view counts
    witness = any(fresh(r, now, conf["fresh"]) for n, r in state["sites"].items()
                  if n != first.my_tag)
    state["down"] = sorted(t for t, e in entries.items()
                           if witness and e.health.state is State.DOWN)
    for key, level, problem in notices:
        log.warning("%s", problem.text)
        trouble.post(key, level, problem)
    try:
        save(site.spool_dir, state)
    except SpduError as e:
        log.warning("%s", e)
    return state


@dataclass
class Watch:
    """The cron loop's reads of the peer views: in a thread of their own
    (background.Worker), at most every peerInterval, never holding up a probe."""

    wake: object
    finder: Finder = field(default_factory=Finder)
    next_at: float = 0.0
    worker: object = None

    def step(self, loop, site, now: float) -> None:
        try:
            conf = settings(site)
        except (SpduError, AttributeError, TypeError):  # refused, or no configuration
            return
        if not conf["peerViews"] or not peer_configs(site):
            return
        if self.worker is None:
            from spdu_cli.background import Worker

            self.worker = Worker(lambda s, c: refresh(s, self.finder, c), "spdu-peers",
                                 self.wake)
        for state, _args in self.worker.take():
            if state is not None and conf["peerQuorum"] and (state.get("down")
                                                             or state.get("held")):
                loop.next_reconcile = min(loop.next_reconcile, now)  # the quorum may change
        if now >= self.next_at and not self.worker.busy:
            self.next_at = now + conf["peerInterval"]
            self.worker.request(site, now)


# -- the quorum's input -----------------------------------------------------------------


def note_serving(state: dict, owned: dict[str, set[str]], now: float) -> None:
    """Since when each view serves each site without a break (a view not read
    well this time keeps what it had, and counts for nothing while stale)."""
    for rec in state["sites"].values():
        was = rec.get("serving") if isinstance(rec.get("serving"), dict) else {}
        if rec.get("error") is not None or rec.get("read_at") != iso(now):
            rec["serving"] = was
            continue
        got = set(rec.get("addresses") or ())
        rec["serving"] = {o: was.get(o) or iso(now) for o, a in sorted(owned.items())
                          if a & got}


def held(cfgs, entries: dict, current: set[str], now: float,
         state: dict | None = None) -> dict[str, str]:
    """The targets of one pool that the quorum keeps in it -> why (plan.decide's
    `held`), from the views in the spool; none with peerQuorum=no. Fails safe:
    whatever goes wrong, none (the quorum only ever keeps an address in)."""
    try:
        return _held(cfgs, entries, current, now, state)
    except Exception as e:  # noqa: BLE001 - reconcile goes on as without the quorum
        log.warning("the quorum keeps no peer in this time: %s: %s", type(e).__name__,
                    str(e)[:200])
        return {}


def _held(cfgs, entries: dict, current: set[str], now: float, state: dict | None) -> dict:
    from spdu_cli.health import State
    from spdu_cli.quorum import Witness, holds
    from spdu_cli.settings import check_value

    if not cfgs:
        return {}
    first = cfgs[0]
    if not check_value("peerQuorum", first.settings["peerQuorum"]):
        return {}
    state = load(first.spool_dir) if state is None else state
    sites = state.get("sites") or {}
    bound = fresh_for(check_value("peerInterval", first.settings["peerInterval"]),
                      first.name_timeout)
    wait = None  # peerwait.effective, worked out only when a target is down
    # only a fresh view counts (quorum.holds): the others are not even looked at
    readable = [(name, rec.get("serving") or {}) for name, rec in sites.items()
                if name != state.get("self") and fresh(rec, now, bound)]
    out = {}
    for c in cfgs:
        e = entries.get(c.target)
        if not readable or e is None or e.health.state is not State.DOWN:
            continue
        mine = {str(ipaddress.ip_address(a)) for a in
                [*e.addresses, *(str(i) for i in c.target_ips)]}
        witnesses = [Witness(name, True, epoch(serving[c.target]) if serving.get(c.target)
                             else None) for name, serving in readable if name != c.target]
        if wait is None:
            wait = peerwait.effective(cfgs)
        why = holds(c.target, e.health.since, witnesses, len(sites), now, wait,
                    bool(mine & {str(ipaddress.ip_address(a)) for a in current}))
        if why:
            out[c.target] = why
    return out


def note_held(state: dict, kept: dict[str, str], me: str, now: float) -> list:
    """The notices of a peer the quorum began or stopped keeping, once each."""
    from spdu_cli.trouble import Problem

    was = state.get("held") if isinstance(state.get("held"), dict) else {}
    out = []
    for target, why in kept.items():
        if target not in was:
            out.append((f"quorum {target}", "WARNING", Problem(
                f"{me} sees {target} down, and keeps it in its pool: {why}. If {target} is"
                " dead, a site that serves it has a view that is wrong or a loop that"
                " stopped.", False, f"{target} is kept in by the quorum")))
    for target in was:
        if target not in kept:
            out.append((f"quorum {target}", "NOTICE", Problem(
                f"{me} no longer keeps {target} for the other sites", False,
                f"{target} is kept in by the quorum")))
    state["held"] = {t: {"why": why, "since": (was.get(t) or {}).get("since") or iso(now)}
                     for t, why in kept.items()}
    return out
