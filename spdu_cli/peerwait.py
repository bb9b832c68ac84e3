"""peerWait's minimum (pure, from the configuration): a site's worst time out
of DNS (health.failover, the slowest "out" case of any target) plus
peerInterval. The quorum (spdu_cli/quorum.py) removes a peer at once and
takes it back when, peerWait later, the other sites still serve it: a witness
that also sees it down must have removed it by then, and its view been read
again; with a shorter peerWait (0, at worst) a peer dead for everyone is taken
back by every site and kept in every pool. Refused with exit status 78.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spdu_cli import health
from spdu_cli.errors import ConfigError
from spdu_cli.settings import check_value

TargetConfig = Any  # config.TargetConfig (config imports this module)


def failover_of(cfg: TargetConfig) -> health.Failover:
    """health.failover for one target's settings under the cron loop."""
    fast = min(check_value("fastInterval", cfg.settings["fastInterval"]), cfg.interval)
    down = min(check_value("downInterval", cfg.settings["downInterval"]), cfg.interval)
    return health.failover(cfg.interval, fast, cfg.probe_timeout, cfg.probe_retries,
                           cfg.probe_fall, cfg.probe_rise, cfg.name_ttl, down)


@dataclass(frozen=True)
class Floor:
    seconds: float  # peerWait must be at least this
    out: float  # the worst time out of DNS of any target
    target: str  # whose it is
    interval: float  # peerInterval

    def why(self) -> str:
        return (f"{self.out:g} s, target {self.target}'s worst time out of DNS (health.failover),"
                f" plus peerInterval {self.interval:g} s")


def floor(cfgs: Sequence[TargetConfig]) -> Floor | None:
    """peerWait's minimum for these targets (None: no target, no minimum)."""
    peers = [c for c in cfgs if not c.is_self]
    if not peers:
        return None
    worst = max(peers, key=lambda c: _out(failover_of(c)))
    interval = check_value("peerInterval", peers[0].settings["peerInterval"])
    out = _out(failover_of(worst))
    return Floor(round(out + interval, 3), out, worst.target, interval)


def _out(f: health.Failover) -> float:
    return max(f.out_closed, f.out_refused, f.out_hang)


def applies(cfgs: Sequence[TargetConfig]) -> bool:
    """The quorum waits peerWait only with peerViews=yes and peerQuorum=yes, and
    only with three sites or more (two peers: quorum.holds)."""
    peers = [c for c in cfgs if not c.is_self]
    return len(peers) >= 2 and all(check_value(k, peers[0].settings[k])
                                   for k in ("peerViews", "peerQuorum"))


def site_floor(site: Any, shown: Sequence[TargetConfig]) -> Floor | None:
    """The minimum for config show: over every target of the site (those shown
    when another one's file is refused); None when the quorum is off."""
    from spdu_cli.errors import SpduError

    try:
        every = [site.target(n) for n in site.select(())]
    except SpduError:
        every = list(shown)
    return floor(every) if applies(every) else None


def effective(cfgs: Sequence[TargetConfig]) -> float:
    """The peerWait the quorum waits: the value set, or, not set, its default
    raised to the minimum (so that a configuration kept from before, with slow
    probes, is never refused for a key it does not name)."""
    if not cfgs:
        return 0.0
    s = cfgs[0].settings["peerWait"]
    wait = check_value("peerWait", s)
    if s.file or not applies(cfgs):
        return wait
    low = floor(cfgs)
    return wait if low is None else max(wait, low.seconds)


def check(cfgs: Sequence[TargetConfig]) -> None:
    """Refuse (ConfigError, 78) a peerWait set below its minimum while the quorum
    is on (not set, its default is raised to the minimum: effective)."""
    if not cfgs or not cfgs[0].settings["peerWait"].file or not applies(cfgs):
        return
    s = cfgs[0].settings["peerWait"]
    low = floor(cfgs)
    wait = check_value("peerWait", s)
    if low is None or wait >= low.seconds:
        return
    where = s.source
    raise ConfigError(
        f"{where}: peerWait={s.value}: below its minimum of {low.seconds:g} s ({low.why()}):"
        " a peer dead for every site would be taken back, and kept, in every pool",
        f"set peerWait={low.seconds:g} or more (or peerQuorum=no); spdu.conf(5), peerWait",
    )
