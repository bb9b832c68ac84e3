"""`spdu status --peers` and the metrics of the peer views: what the cron
loop last read (spdu_cli/peers.py), or, when no loop has lately, the views
read now (nothing written).
"""

from __future__ import annotations

import time

from spdu_cli.entry import epoch, iso
from spdu_cli.errors import SpduError
from spdu_cli.peers import (
    Finder,
    entries_of,
    fresh,
    load,
    matrix,
    merge,
    owners,
    peer_configs,
    read_all,
    settings,
    split_text,
)
from spdu_cli.selfcheck import SELF


def report(site, now: float | None = None, only: tuple[str, ...] = ()) -> dict:
    """The matrix for `spdu status --peers`: from the loop's state in the spool
    when it is fresh, else read now (nothing written). `only`: targets named
    (2 for an unknown one): what the views say of them alone."""
    from spdu_cli.errors import ConfigError

    now = time.time() if now is None else now
    named = set(site.select(only)) if only else None  # no targets: 78, as every command
    site.select(())
    if not peer_configs(site):
        raise ConfigError(f"no peer in targets= of {site.path}: there is no view to show",
                          'add targets="beta gamma"')
    conf = settings(site)
    entries = entries_of(site)
    state, source = load(site.spool_dir), "loop"
    first = peer_configs(site)[0]
    if not conf["peerViews"]:  # none read, none shown: only this site's flip-flops
        state, source = {"self": first.my_tag}, "off"
    elif not _lately(state, now, conf["fresh"]):
        servers, missing = Finder().servers(site, entries, time.monotonic())
        views = read_all(servers, first.pool_name, first.name_timeout)
        # the loop's kept peers and splits are as old as its last read: not carried
        state = merge({}, views, servers, missing, first.my_tag, now)
        source = "read now"
    configured = {state.get("self") or first.my_tag, *(c.target for c in peer_configs(site))}
    state = {**state, "sites": {n: r for n, r in (state.get("sites") or {}).items()
                                if n in configured}}
    owned = owners(site, entries)
    if named is not None:  # target self: this site, under its own name
        named = {first.my_tag if n == SELF else n for n in named}
        owned = {o: a for o, a in owned.items() if o in named}
    m = matrix(state, owned, now, conf["fresh"])
    splits = []
    for owner, row in m.items():
        if row["serve"] and row["not"]:
            rec = (state.get("divergence") or {}).get(owner) or {}
            if not isinstance(rec, dict) or not rec.get("since"):  # read now: since when?
                splits.append({"owner": owner, "since": None, "seconds": None,
                               "serve": row["serve"], "not": row["not"],
                               "text": split_text(owner, row, 0).rsplit(", for ", 1)[0]
                               + ", for how long is not known (views read now)"})
                continue
            since = epoch(rec["since"])
            splits.append({"owner": owner, "since": iso(since), "seconds": round(now - since, 1),
                           "serve": row["serve"], "not": row["not"],
                           "text": split_text(owner, row, now - since)})
    sites = {}
    for name, rec in sorted(state["sites"].items()):
        serves = sorted(o for o, addrs in owned.items()
                        if addrs & set(rec.get("addresses") or ()))
        sites[name] = {"server": rec.get("server"), "how": rec.get("how"),
                       "addresses": rec.get("addresses") or [], "serves": serves,
                       "since": rec.get("since"), "read_at": rec.get("read_at"),
                       "fresh": fresh(rec, now, conf["fresh"]),
                       "error": rec.get("error")}
    return {"self": state.get("self"), "source": source, "read_at": state.get("read_at"),
            "sites": sites, "owners": sorted(owned), "matrix": m, "splits": splits,
            "flipflops": flipflops(site.spool_dir, now),
            "held": {t: h.get("why") for t, h in (state.get("held") or {}).items()
                     if isinstance(h, dict) and t in configured
                     and (named is None or t in named)}}


def _lately(state: dict, now: float, bound: float) -> bool:
    """The loop read the views at most `bound` seconds ago (and not in the future:
    a clock stepped back makes the loop's state as old as unknown; a second of
    leeway)."""
    try:
        read = epoch(state.get("read_at")) if state.get("read_at") else None
    except (TypeError, ValueError):
        return False
    return read is not None and -1.0 <= now - read <= bound


def flipflops(spool_dir: str, now: float) -> list:
    """The changes this site keeps making again (spdu_cli.flipflop), when any."""
    from spdu_cli import flipflop

    return flipflop.standing(spool_dir, now)


def metrics(out, site, entries: dict, now: float) -> None:
    """The peer views in the metrics file (metrics.Exposition), from the spool."""
    state = load(site.spool_dir)
    if not state.get("sites") or not peer_configs(site):
        return
    try:
        bound = settings(site)["fresh"]
        owned = owners(site, entries)
    except (SpduError, ValueError):
        return
    configured = {state.get("self"), *(c.target for c in peer_configs(site))}
    sites = {n: r for n, r in state["sites"].items() if n in configured}
    out.family("spdu_peer_view_readable", "gauge",
               "1 when the site's view (its pool on its own DNS server) was read lately.",
               [({"site": n}, int(fresh(r, now, bound))) for n, r in sorted(sites.items())])
    out.family("spdu_peer_serves", "gauge",
               "1 when the site's view holds an address of `serves` (a site), else 0.",
               [({"site": n, "serves": o}, int(bool(a & set(r.get("addresses") or ()))))
                for n, r in sorted(sites.items()) if fresh(r, now, bound)
                for o, a in sorted(owned.items())])
    split = state.get("divergence") or {}
    out.family("spdu_peer_split_seconds", "gauge",
               "How long the sites' views have disagreed about `serves` (a site).",
               [({"serves": o}, round(now - (epoch(r.get("since")) or now), 1))
                for o, r in sorted(split.items()) if isinstance(r, dict) and o in owned])


