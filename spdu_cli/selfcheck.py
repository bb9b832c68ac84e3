"""The self-check: this site's own service, probed at selfIP as the pseudo-target
`self`, and what its state means for this site's own addresses in its pool (pure).

When self is down (or in maintenance) and a peer of the pool is up (as this
site sees it: a peer only kept by the quorum, plan.decide's `held`, is not),
selfIP leaves the pool: a site whose service died while its DNS server lives stops
sending clients to it. Otherwise (self up, unknown or stale, or no peer up)
selfIP stays, as it always did (selfCheck=no, the original's behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spdu_cli import validate
from spdu_cli.entry import standing
from spdu_cli.health import State
from spdu_cli.settings import MissingDefault, Setting, System, Values

SELF = "self"  # the pseudo-target's name: in the spool, the journal, status and mail


def judge(view: Any, now: float) -> tuple[State | None, str | None]:
    """Self's state (its plan.TargetView) as decide() takes it, and why it is not taken (a note), or
    (None, None) with the self-check off. A maintenance (`spdu maint self`)
    counts as down; unknown, stale or a selfIP changed since the last probe as
    nothing: selfIP is kept."""
    if view is None:
        return None, None
    kind, stale = standing(view, now)
    if kind == "maint":
        return State.DOWN, None
    if kind == "unknown":
        return None, "state unknown; selfIP is kept in the pool"
    if kind == "stale":
        return None, (f"last probed {stale} (staleAfter={view.stale_after:g}); selfIP is kept"
                      " in the pool")
    if kind == "changed":
        return None, "selfIP changed since the last probe; selfIP is kept until it is probed"
    return view.state, None


KEPT = ("down, but no peer of this pool is up: selfIP is kept (never an empty pool, and"
        " clients are better sent to this site than to none)")


def self_settings(settings: Mapping[str, Setting], system: System) -> dict[str, Setting]:
    """What target self's configuration changes: it probes with the probe settings
    in effect (the main file's, or spdu/self's) at every selfIP address; its host
    name (in mail) is this site's tag."""
    values = Values(settings, None, system)
    out = {"targetIP": values.setting("selfIP")}
    if "targetName" not in settings:
        try:
            out["targetName"] = Setting(validate.hostname(values.get("myTag")))
        except (MissingDefault, ValueError):  # a tag with blanks is no host name
            out["targetName"] = Setting(SELF)
    return out
