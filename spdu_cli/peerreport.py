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


def report(site, now: float | None = None) -> dict:
    """The matrix for `spdu status --peers`: from the loop's state in the spool
    when it is fresh, else read now (nothing written)."""
    now = time.time() if now is None else now
    site.select(())  # no targets: 78, as every command
    if not peer_configs(site):
        from spdu_cli.errors import ConfigError

        raise ConfigError(f"no peer in targets= of {site.path}: there is no view to show",
                          'add targets="beta gamma"')
    conf = settings(site)
    entries = entries_of(site)
    state, source = load(site.spool_dir), "loop"
    read = epoch(state.get("read_at")) if state.get("read_at") else None
    if read is None or now - read > conf["fresh"]:
        first = peer_configs(site)[0]
        servers, missing = Finder().servers(site, entries, time.monotonic())
        views = read_all(servers, first.pool_name, first.name_timeout)
        state = merge(state, views, servers, missing, first.my_tag, now)
        source = "read now"
    owned = owners(site, entries)
    m = matrix(state, owned, now, conf["fresh"])
    splits = []
    for owner, row in m.items():
        if row["serve"] and row["not"]:
            rec = (state.get("divergence") or {}).get(owner) or {}
            since = epoch(rec["since"]) if rec.get("since") else now
            splits.append({"owner": owner, "since": iso(since), "seconds": round(now - since, 1),
                           "serve": row["serve"], "not": row["not"],
                           "text": split_text(owner, row, now - since)})
    sites = {}
    for name, rec in sorted((state.get("sites") or {}).items()):
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
                     if isinstance(h, dict)}}


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
    sites = state["sites"]
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
                for o, r in sorted(split.items()) if isinstance(r, dict)])


