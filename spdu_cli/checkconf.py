"""`spdu config check`'s findings beyond a value's own check: unknown keys, a
spool or key file the running user cannot use, a target with no address to
probe, and with --online what the name server says of the zone and the key.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from spdu_cli.config import Site, TargetConfig
from spdu_cli.errors import ExitStatus

RESOLVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Finding:
    """One line: where (file:line key=value, or the server), what is wrong, what to do."""

    where: str
    problem: str
    fix: str
    status: ExitStatus = ExitStatus.CONFIG
    warning: bool = False  # reported, but the check still passes

    def line(self) -> str:
        return f"{self.where}: {self.problem}; {self.fix}" if self.problem else self.where


def _where(cfg_or_site, key: str) -> str:
    s = cfg_or_site.settings[key]
    return f"{s.source}: {key}={s.value}"


# -- what a user may do with a path (mode bits; ACLs are not read) ------------------


def _groups(pw: pwd.struct_passwd) -> set[int]:
    return {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}


def _allowed(st: os.stat_result, uid: int, groups: set[int], bits: int) -> bool:
    if uid == 0:
        return True
    mode = st.st_mode
    if st.st_uid == uid:
        return (mode >> 6) & bits == bits
    if st.st_gid in groups:
        return (mode >> 3) & bits == bits
    return mode & bits == bits


def cannot(user: str, path: str, write: bool) -> str:
    """Why `user` cannot read `path` (or write it, or create it), "" when it can."""
    pw = pwd.getpwnam(user)
    groups = _groups(pw)
    p = Path(path)
    existing = p
    while not existing.exists():
        existing = existing.parent
    for parent in reversed(existing.parents):
        if not _allowed(parent.stat(), pw.pw_uid, groups, 1):
            return f"{user} cannot enter {parent}"
    st = existing.stat()
    if existing != p:
        return "" if _allowed(st, pw.pw_uid, groups, 3) else (
            f"it does not exist and {user} cannot create it in {existing}")
    bits = (3 if write else 5) if stat.S_ISDIR(st.st_mode) else (2 if write else 4)
    return "" if _allowed(st, pw.pw_uid, groups, bits) else (
        f"{user} cannot {'write' if write else 'read'} it")


def user_named(user: str | None) -> str:
    """--as USER, checked; by default whoever runs the check."""
    from spdu_cli.errors import UsageError

    if not user:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        return pwd.getpwnam(user).pw_name
    except KeyError:
        raise UsageError(f"--as {user}: no such user on this host") from None


# -- offline -----------------------------------------------------------------------


def unknown_keys(site: Site) -> list[Finding]:
    out = []
    for u in dict.fromkeys(site.unknown or []):
        if u.helper:
            out.append(Finding(f"{u.path}:{u.line}: {u.key}",
                               f"not a spdu key; kept only as ${u.key} for the lines below",
                               "fine as a shell helper, as the original's files allowed",
                               warning=True))
        else:
            fix = (f"did you mean {u.close}?" if u.close
                   else "remove it (spdu.conf(5) lists every key)")
            out.append(Finding(f"{u.path}:{u.line}: {u.key}", "unknown key", fix))
    return out


def spool(site: Site, user: str) -> list[Finding]:
    """What every run as `user` would refuse: a spoolDir it cannot write, and
    one the spool itself refuses (spool.dir_problem: writable by others,
    another user's, a symbolic link)."""
    from spdu_cli.spool import dir_problem

    d = site.spool_dir
    where = (_where(site, "spoolDir") if "spoolDir" in site.settings
             else f"{site.path}: spoolDir={d} (default)")
    try:
        st = os.lstat(d)
    except OSError:
        st = None  # missing: made by the first run, if the user may (below)
    problem = dir_problem(d, st, pwd.getpwnam(user).pw_uid, True) if st else None
    if problem is not None:
        return [Finding(where, problem.message, problem.hint or "")]
    why = cannot(user, d, write=True)
    if not why:
        return []
    return [Finding(where, why, f"as root: install -d -o {user} -m 0750 {d}")]


def unresolvable(site: Site, cfgs: list[TargetConfig], only_without_file: bool) -> list[Finding]:
    """Targets with no targetIP whose targetName does not resolve: nothing to
    probe. Offline (`only_without_file`), only targets that nothing but
    `targets=` configures, and as a warning: the resolver may be what fails."""
    from spdu_cli.probe.names import resolve

    todo = [c for c in cfgs if not c.target_ips
            and not (only_without_file and len(c.files) > 1)]
    found = resolve([c.target_name for c in todo], RESOLVE_TIMEOUT)
    out = []
    for c in todo:
        if isinstance(found[c.target_name], str):
            own = site.target_dir / c.target
            none = "" if len(c.files) > 1 else f"no {own}, "
            out.append(Finding(f"{site.path}: targets={c.target}",
                               f"{none}no targetIP, and {found[c.target_name]}",
                               f"set targetIP (or targetName) in {own}",
                               warning=only_without_file))
    return out


def key_file(cfg: TargetConfig, user: str) -> list[Finding]:
    path = cfg.settings["tsigKeyFile"].value if "tsigKeyFile" in cfg.settings else ""
    if not path:
        return []
    where = _where(cfg, "tsigKeyFile")
    why = cannot(user, path, write=False)
    if why:
        return [Finding(where, why, f"spdu keygen --spdu-user {user} --force, or as root:"
                                    f" chgrp {user} {path} && chmod 0640 {path}")]
    st = os.stat(path)
    uid = pwd.getpwnam(user).pw_uid
    if st.st_uid not in (0, uid):
        return [Finding(where, f"owned by {pwd.getpwuid(st.st_uid).pw_name}: spdu run as {user}"
                               " refuses it", f"as root: chown root {path}")]
    return []


# -- online ------------------------------------------------------------------------


def _ask(cfg: TargetConfig, message):
    import dns.query

    return dns.query.udp(message, str(cfg.name_server), port=cfg.name_port,
                         timeout=cfg.name_timeout)


def zone(cfg: TargetConfig) -> list[Finding]:
    """The name server answers the zone's SOA authoritatively; its negative TTL
    and the pool's TTL are not longer than nameTTL."""
    import dns.exception
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdatatype

    server = f"nameServer={cfg.name_server} port {cfg.name_port}"
    q = dns.message.make_query(cfg.pool_zone + ".", "SOA")
    q.flags &= ~dns.flags.RD
    try:
        r = _ask(cfg, q)
    except (dns.exception.DNSException, OSError) as e:
        return [Finding(f"{_where(cfg, 'nameServer')}", f"no answer to SOA {cfg.pool_zone}"
                        f" ({e or type(e).__name__})", "start the server, or fix nameServer and"
                        " namePort", ExitStatus.UNAVAILABLE)]
    soa = [rd for rrset in r.answer if rrset.rdtype == dns.rdatatype.SOA for rd in rrset]
    if r.rcode() != dns.rcode.NOERROR or not r.flags & dns.flags.AA or not soa:
        got = dns.rcode.to_text(r.rcode())
        got += "" if r.flags & dns.flags.AA else ", not authoritative"
        return [Finding(f"{_where(cfg, 'poolZone')} on {server}",
                        f"the server does not serve this zone ({got})",
                        "make it a primary of the zone, or fix poolZone/poolName/nameServer")]
    out = []
    ttl = cfg.name_ttl
    minimum = soa[0].minimum
    if minimum > ttl:
        out.append(Finding(f"zone {cfg.pool_zone} on {server}: SOA minimum {minimum}",
                           f"longer than nameTTL={ttl}: resolvers cache a pool without an"
                           f" address family that long",
                           f"set the SOA's last field to {ttl} or less"))
    for rdtype in ("A", "AAAA"):
        q = dns.message.make_query(cfg.pool_name + ".", rdtype)
        q.flags &= ~dns.flags.RD
        try:
            r = _ask(cfg, q)
        except (dns.exception.DNSException, OSError):
            continue
        for rrset in r.answer:
            if rrset.rdtype == dns.rdatatype.from_text(rdtype) and rrset.ttl > ttl:
                out.append(Finding(f"{cfg.pool_name} {rdtype} on {server}: TTL {rrset.ttl}",
                                   f"longer than nameTTL={ttl}: clients keep a dead site"
                                   f" {rrset.ttl} s", f"give the RRset TTL {ttl} in the zone"))
    return out


def key_accepted(cfg: TargetConfig) -> list[Finding]:
    """A signed UPDATE whose prerequisite cannot hold ("the zone's apex does
    not exist", while the server just answered its SOA): the server checks
    the key, and for Knot its ACL, then answers YXDOMAIN; nothing changes."""
    if cfg.tsig is None:
        return []
    import dns.exception
    import dns.rcode
    import dns.tsig
    import dns.update

    from spdu_cli.nameserver import keyring

    u = dns.update.UpdateMessage(cfg.pool_zone + ".", keyring=keyring(cfg.tsig))
    u.absent("@")
    u.delete(cfg.pool_name + ".", "A", "192.0.2.255")  # and would remove no real address
    where = (_where(cfg, "tsigKeyFile") if cfg.settings.get("tsigKeyFile")
             and cfg.settings["tsigKeyFile"].value else _where(cfg, "tsigKey").split("=")[0])
    fix = "install the key on the server and allow it the pool name (spdu keygen prints how)"
    try:
        r = _ask(cfg, u)
    except (dns.tsig.PeerError, dns.tsig.BadSignature) as e:
        return [Finding(where, f"{cfg.name_server} refuses the key {cfg.tsig.name}"
                               f" ({type(e).__name__})", fix)]
    except dns.exception.DNSException as e:  # e.g. an answer without TSIG
        return [Finding(where, f"{cfg.name_server} does not accept the key {cfg.tsig.name}"
                               f" ({e or type(e).__name__})", fix)]
    except OSError as e:
        return [Finding(where, f"{cfg.name_server}: {e.strerror}", "start the server",
                        ExitStatus.UNAVAILABLE)]
    if r.rcode() in (dns.rcode.YXDOMAIN, dns.rcode.NOERROR):
        return []
    return [Finding(where, f"{cfg.name_server} answers a signed UPDATE with"
                           f" {dns.rcode.to_text(r.rcode())} for the key {cfg.tsig.name}", fix)]


def check(site: Site, user: str, online: bool) -> tuple[list[TargetConfig], list[Finding]]:
    """Every value (Site.check), then the findings; the advisories as warnings."""
    from spdu_cli.config import advisories, site_advisories

    cfgs = site.check()
    notes = site_advisories(site) + [w for c in cfgs for w in advisories(c)]
    warned = [Finding(n, "", "", warning=True) for n in dict.fromkeys(notes)]
    return cfgs, warned + run(site, cfgs, user, online)


def run(site: Site, cfgs: list[TargetConfig], user: str, online: bool) -> list[Finding]:
    out = unknown_keys(site) + spool(site, user)
    for c in cfgs:
        out += key_file(c, user)
    out += unresolvable(site, cfgs, only_without_file=not online)
    if online:
        seen = set()
        for c in cfgs:
            k = (str(c.name_server), c.name_port, c.pool_zone, c.pool_name,
                 c.tsig and c.tsig.name)
            if k in seen:
                continue
            seen.add(k)
            found = zone(c)
            out += found
            if not any(f.status == ExitStatus.UNAVAILABLE for f in found):
                out += key_accepted(c)
    return list(dict.fromkeys(out))


def status(findings: list[Finding]) -> ExitStatus:
    """78 for any configuration finding, else 69 for a server not reached, else 0."""
    bad = {f.status for f in findings if not f.warning}
    if ExitStatus.CONFIG in bad:
        return ExitStatus.CONFIG
    return ExitStatus.UNAVAILABLE if bad else ExitStatus.OK
