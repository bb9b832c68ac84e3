"""The quorum (peerQuorum): with three sites or more, a peer that this site
sees down but that the other sites still serve is a broken link, not a dead
site. Pure: the views come in as data (peers.py reads them), the outcome is
a mapping target -> why it is kept, which plan.decide takes: a kept target's
addresses stay in (or come back into) the pool. Nothing here ever removes an
address: a peer that lies can at most keep one in.

The rule. A witness is a site other than this one and the peer, whose view
is fresh and readable; the others count for nothing. This site removes a
peer it sees down at once, as without the quorum. It takes it back (or keeps
it) when, `wait` seconds after it saw it down, a strict majority of the
witnesses still serve it, each without a break since before this site saw it
down; and keeps it while a strict majority of the witnesses serve it.

Why not keep it first and wait (what one would try first): the sites cannot
tell from a view whether the site behind it reaches the peer or keeps it for
the others' sake. When a peer dies for everyone, every site sees it down and
every other site still serving it, each would keep it for the others, and
none would ever remove it. Removing at once and asking the witnesses to go
on serving it for `wait` seconds after that breaks the tie: a witness that
also sees it down removes it within its own failover time, shorter than
`wait`; one that reaches it does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Witness:
    site: str
    fresh: bool  # its view was read lately and well
    serving_since: float | None  # it serves the peer, without a break since then; None: not


def holds(target: str, down_since: float | None, witnesses: Iterable[Witness], sites: int,
          now: float, wait: float, in_pool: bool) -> str | None:
    """Why `target`, which this site sees down since `down_since`, is kept in
    its pool; None: it is not (removed as without the quorum). `sites`: how
    many sites there are, this one and the peer included; `in_pool`: its
    addresses are in this site's pool now."""
    if sites < 3 or down_since is None or now - down_since < wait:
        return None
    seen = [w for w in witnesses if w.fresh and w.site != target]
    if not seen:
        return None  # no view to go by: this site decides alone
    serving = [w for w in seen if w.serving_since is not None]
    # taken back already: kept while a majority serve it; else, served since before
    backing = serving if in_pool else [w for w in serving if w.serving_since <= down_since]
    if 2 * len(backing) <= len(seen):
        return None
    names = ", ".join(w.site for w in backing)
    return (f"down as seen from here, but served by {names} ({len(backing)} of {len(seen)}"
            f" readable site(s)): a broken link, not a dead site; kept (peerQuorum)")
