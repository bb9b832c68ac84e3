"""The lookup of the targets' names, for targets without targetIP: every name
at once, none allowed to hold up the probes longer than a probe would take.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterable

from spdu_cli.probe.spec import ProbeSpec
from spdu_cli.validate import host_ip

RESOLVE_TIMEOUT = 5.0


def resolve(names: Iterable[str], timeout: float) -> dict[str, tuple[str, ...] | str]:
    """name -> its IPv4/IPv6 addresses, or an error text. getaddrinfo cannot be
    cancelled, so each lookup runs in a daemon thread that we stop waiting for."""
    out: dict[str, tuple[str, ...] | str] = {}
    threads = [threading.Thread(target=lambda n=n: out.__setitem__(n, lookup(n)), daemon=True)
               for n in set(names)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for name in set(names):
        out.setdefault(name, f"cannot resolve {name}: timed out after {timeout:g} s")
    return out


def lookup(name: str) -> tuple[str, ...] | str:
    """One name's usable addresses, or why there are none (blocking: getaddrinfo)."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        return f"cannot resolve {name}: {getattr(e, 'strerror', None) or e}"
    return usable(name, [str(i[4][0]) for i in infos])


def usable(name: str, found: list[str]) -> tuple[str, ...] | str:
    """What a name resolved to, as targetIP would take it (see validate.host_ip:
    an IPv4-mapped address is its IPv4 address); an error text when none of them
    is one host's address (a resolver that answers 0.0.0.0 for a blocked name)."""
    good: list[str] = []
    bad: list[str] = []
    for a in found:
        try:
            good.append(str(host_ip(ipaddress.ip_address(a.partition("%")[0]))))
        except ValueError:
            bad.append(a)
    if good:
        return tuple(dict.fromkeys(good))
    return f"{name} resolves only to {', '.join(dict.fromkeys(bad))}: not one host's address"


def addresses_of(specs: list[ProbeSpec]) -> dict[str, tuple[str, ...] | str]:
    """target -> the addresses to probe, or why there are none."""
    need = [s for s in specs if not s.addresses]
    # A slow resolver must not hold up the probes more than a probe would take.
    budget = min(RESOLVE_TIMEOUT, max((s.timeout for s in need), default=0))
    resolved = resolve([s.resolve_name for s in need], budget) if need else {}
    out: dict[str, tuple[str, ...] | str] = {}
    for s in specs:
        addrs = s.addresses or resolved[s.resolve_name]
        out[s.target] = addrs or f"{s.resolve_name} has no address"
    return out
