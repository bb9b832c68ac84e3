"""`spdu keygen`: a fresh TSIG key scoped to this site's pool name.

Writes the secret only to files that exactly the user who needs each one can
read (the key file spdu reads, its one-line twin for knsupdate, and a key file
for the DNS server: Knot's `key:` section, BIND's `key` statement, SQL for
PowerDNS's tsigkeys table) and returns the snippets and commands that load
those files, so the secret never reaches a terminal, scrollback, a command
line or a log.
"""

from __future__ import annotations

import base64
import grp
import os
import pwd
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from spdu_cli.errors import TemporaryFailure, UsageError
from spdu_cli.tsig import DEFAULT_ALGORITHM, TsigKey, parse_inline

SECRET_BYTES = 32  # 256 bits: the length of hmac-sha256's output, as RFC 8945 advises
SERVERS = ("knot", "bind", "pdns")
PDNS_DATABASE = "/var/lib/powerdns/pdns.sqlite3"  # Debian's gsqlite3 example
#: The users Debian's packages run the servers as (knot.service's User=knot,
#: named -u bind, pdns.service's --setuid=pdns); FreeBSD's ports use the same.
SERVER_USERS = {"knot": "knot", "bind": "bind", "pdns": "pdns"}
PROGRAMS = {"knot": "knotd", "bind": "named", "pdns": "pdns_server"}


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@dataclass(frozen=True)
class Owner:
    """Who must read a key file, and the owner, group and mode that let that
    user and no other (root aside) read it."""

    user: str
    uid: int
    gid: int
    mode: int

    def text(self) -> str:
        return f"{_user_name(self.uid)}:{_group_name(self.gid)} {self.mode:04o}"


def _group_is_only(pw: pwd.struct_passwd) -> bool:
    """Whether the user's primary group holds that user alone: then 0640
    with that group is readable by exactly that user, and the user cannot
    rewrite or chmod the file (root owns it)."""
    try:
        members = set(grp.getgrgid(pw.pw_gid).gr_mem) - {pw.pw_name}
    except KeyError:
        return False
    return not members and not any(p.pw_gid == pw.pw_gid and p.pw_name != pw.pw_name
                                   for p in pwd.getpwall())


def owner_for(user: str | None, option: str = "") -> Owner:
    """root:GROUP 0640 when the user's group is theirs alone, else 0600 owned
    by the user; a file for whoever runs keygen is simply 0600 theirs."""
    me = os.geteuid()
    if user is None:
        return Owner(_user_name(me), me, os.getegid(), 0o600)
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"{option} {user}: no such user on this host") from None
    if pw.pw_uid == me:
        return Owner(user, me, os.getegid(), 0o600)
    if pw.pw_uid != 0 and _group_is_only(pw):
        return Owner(user, 0, pw.pw_gid, 0o640)
    return Owner(user, pw.pw_uid, pw.pw_gid, 0o600)


def server_owner(server: str, user: str | None) -> tuple[Owner, str]:
    """The owner of a server's key file: the user named, else the Debian
    user when the host has it, else whoever runs keygen (with a note why)."""
    if user:
        return owner_for(user, f"--{server}-user"), ""
    default = SERVER_USERS[server]
    try:
        pwd.getpwnam(default)
    except KeyError:
        me = owner_for(None)
        return me, (f"no user {default} on this host: the {PROGRAMS[server]} key file is for"
                    f" {me.user}; name the user {PROGRAMS[server]} runs as with --{server}-user")
    return owner_for(default), ""


def server_owners(servers, users: dict[str, str | None]) -> tuple[dict[str, Owner], list[str]]:
    """Each server's owner (server_owner), and the notes to show."""
    found = {s: server_owner(s, users.get(s)) for s in servers}
    return {s: o for s, (o, _) in found.items()}, [n for _, n in found.values() if n]


def knsupdate_file(key_file: str) -> str:
    """The one-line twin of spdu's key file, for `knsupdate -k` (Knot 3.2
    reads only `algorithm:name:secret` there, nsupdate -k only BIND's form)."""
    p = Path(key_file)
    return str(p.with_suffix(".knsupdate") if p.suffix == ".key"
               else p.with_name(p.name + ".knsupdate"))


def line_key_text(key: TsigKey) -> str:
    return f"{key.algorithm}:{key.name}:{key.secret}\n"


def default_name(my_tag: str) -> str:
    """spdu-MYTAG, made a DNS label whatever the tag holds (it may have spaces)."""
    label = re.sub(r"[^a-z0-9-]+", "-", my_tag.lower()).strip("-")[:50] or "site"
    return f"spdu-{label}"


def new_key(name: str) -> TsigKey:
    """A fresh key from the OS's CSPRNG; the name is checked as a DNS name."""
    secret = base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
    try:
        return parse_inline(f"{DEFAULT_ALGORITHM}:{name}:{secret}")
    except ValueError as e:
        raise UsageError(f"--name {name!r}: {e}") from None


def bind_key_text(key: TsigKey) -> str:
    return (f'key "{key.name}" {{\n\talgorithm {key.algorithm};\n'
            f'\tsecret "{key.secret}";\n}};\n')


def knot_key_text(key: TsigKey) -> str:
    return (f"key:\n  - id: {key.name}\n    algorithm: {key.algorithm}\n"
            f"    secret: {key.secret}\n")


def pdns_key_sql(key: TsigKey) -> str:
    """The rows `pdnsutil import-tsig-key` would store, for the generic SQL
    backends (gsqlite3, gmysql, gpgsql share the tsigkeys table). The name and
    secret are checked (a DNS name, base64): nothing in them needs quoting."""
    return ("-- spdu's TSIG key for PowerDNS: load it into the backend's database.\n"
            "BEGIN;\n"
            f"DELETE FROM tsigkeys WHERE name = '{key.name}';\n"
            "INSERT INTO tsigkeys (name, algorithm, secret)"
            f" VALUES ('{key.name}', '{key.algorithm}', '{key.secret}');\n"
            "COMMIT;\n")


def server_key_text(server: str, key: TsigKey) -> str:
    return {"knot": knot_key_text, "bind": bind_key_text, "pdns": pdns_key_sql}[server](key)


def server_file_name(server: str, key: TsigKey) -> str:
    return f"{key.name}.pdns.sql" if server == "pdns" else f"{key.name}.{server}.key"


@dataclass(frozen=True)
class Pool:
    name: str  # the pool name whose A/AAAA RRsets the key may change
    zone: str


@dataclass
class Generated:
    key: TsigKey = field(repr=False)
    key_file: str  # the file spdu reads (tsigKeyFile)
    server_files: dict[str, str]  # "knot"/"bind" -> the file the server includes
    pools: list[Pool]
    placed: list[Placed] = field(default_factory=list)

    def report(self) -> list[str]:
        """For stderr: each file with its owner, group and mode, and whom it is
        for; when not root, the chown/chmod that root must run."""
        me = owner_for(None).user
        lines = [f"spdu: wrote the key {self.key.name}:"]
        for p in self.placed:
            state = p.owner.text() if p.applied else f"0600 {me}'s for now"
            lines.append(f"spdu:   {p.path} ({state}, for {p.owner.user})")
        pending = [p.fix() for p in self.placed if not p.applied]
        if pending:
            lines.append("spdu: not run as root, so these files are yours alone; as root, run:")
            lines += [f"  {fix}" for fix in pending]
        return lines

    def mode_of(self, server: str) -> str:
        """How the server's file was left, for the snippet's comment."""
        for p in self.placed:
            if p.path == self.server_files[server]:
                how = p.owner.text() if p.applied else f"to be {p.owner.text()} (see stderr)"
                return f"{how}, readable by {p.owner.user}"
        return "mode 0600"

    def knot_snippet(self) -> str:
        names = ", ".join(f"{p.name}." for p in self.pools)
        zones = sorted({p.zone for p in self.pools})
        lines = [
            "# Knot DNS (knot.conf): the key for spdu on this site, allowed to change only",
            f"# {names} A and AAAA. {self.server_files['knot']} holds the secret:",
            f"# {self.mode_of('knot')}.",
            f"include: {self.server_files['knot']}",
            "acl:",
            f"  - id: {self.key.name}",
            f"    key: {self.key.name}",
            "    action: update",
            "    update-owner: name",
            "    update-owner-match: equal",
            f"    update-owner-name: [{names}]",
            "    update-type: [A, AAAA]",
            "# Put the lines above before knot.conf's zone: section (an acl must come",
            "# before the zone that names it). Then make the key the pool zone's only",
            "# update ACL: an address-only one left beside it (spdu-local: anyone on",
            "# 127.0.0.1) would still let an unsigned update in.",
        ]
        for zone in zones:
            lines += ["#   zone:", f"#     - domain: {zone}",
                      f"#       acl: [{self.key.name}]"]
        return "\n".join(lines) + "\n"

    def pdns_snippet(self, database: str = PDNS_DATABASE) -> str:
        """Commands to run as they are: load the key from its file (never as an
        argument: `pdnsutil import-tsig-key` takes the secret on its command
        line, where ps shows it), then name it in each pool zone's metadata."""
        sql = self.server_files["pdns"]
        zones = sorted({p.zone for p in self.pools})
        names = ", ".join(p.name for p in self.pools)
        lines = [
            "# PowerDNS Authoritative (generic SQL backend): the key for spdu on this site.",
            f"# {sql} holds the secret ({self.mode_of('pdns')}) as rows of",
            "# the backend's tsigkeys table: what pdnsutil import-tsig-key stores,",
            "# without the secret on a command line.",
            "# gsqlite3 (as below); gmysql: mysql pdns < FILE; gpgsql: psql pdns < FILE.",
            f"sqlite3 {database} < {sql}",
        ]
        lines += [f"pdnsutil set-meta {zone} TSIG-ALLOW-DNSUPDATE {self.key.name}"
                  for zone in zones]
        lines += [
            "# (set-meta replaces any other key named there; add-meta keeps them.) pdns.conf",
            "# needs dnsupdate=yes, and updates must also come from an address in",
            "# allow-dnsupdate-from (default 127.0.0.0/8) or the zone's ALLOW-DNSUPDATE-FROM.",
            "#",
            "# What this key can do: PowerDNS cannot limit a key to a name or a type.",
            f"# It may change EVERY record of {', '.join(zones)} (other names, other",
            f"# types, the NS set), not only {names} A and AAAA.",
            "# To narrow it, keep the pool in a zone of its own that holds only its SOA,",
            "# NS and the pool names (pool.domain.tld in spdu's usual setup), or write",
            "# a lua-dnsupdate-policy-script",
            "# (it replaces every other update check of that server: see PowerDNS's",
            "# \"Dynamic DNS Update\" documentation).",
        ]
        return "\n".join(lines) + "\n"

    def bind_snippet(self) -> str:
        lines = [
            "// BIND (named.conf): the key for spdu on this site, allowed to change only",
            f"// the pool name's A and AAAA. {self.server_files['bind']} holds the secret:",
            f"// {self.mode_of('bind')}.",
            f'include "{self.server_files["bind"]}";',
        ]
        for zone in sorted({p.zone for p in self.pools}):
            grants = [p for p in self.pools if p.zone == zone]
            lines += [f'// in zone "{zone}" {{ ... }}, replacing any allow-update:',
                      "    update-policy {"]
            lines += [f'        grant "{self.key.name}" name {p.name}. A AAAA;' for p in grants]
            lines += ["    };"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Placed:
    """A key file written, and whether its owner and mode are what it needs."""

    path: str
    owner: Owner
    applied: bool  # False: not root, so it is still 0600 and keygen's user's

    def fix(self) -> str:
        """The commands that give the file its owner and mode, for root to run."""
        o = self.owner
        who = f"{_user_name(o.uid)}:{_group_name(o.gid)}"
        return f"chown {who} {self.path} && chmod {o.mode:04o} {self.path}"


def _can_own(owner: Owner) -> bool:
    if os.geteuid() == 0:
        return True
    return owner.uid == os.geteuid() and owner.gid in (os.getegid(), *os.getgroups())


def write_private(path: str, text: str, force: bool, owner: Owner | None = None) -> Placed:
    """Write a secret file atomically, 0600 until it is complete, then given
    `owner`'s owner, group and mode when this process may (root); refuse to
    replace a file without `force`. Never follows a symlink planted at `path`."""
    owner = owner or owner_for(None)
    applied = _can_own(owner)
    p = Path(path)
    if (p.exists() or p.is_symlink()) and not force:
        raise UsageError(f"{path} exists; refusing to overwrite it",
                         "use --force to replace the key (the old key stops working)")
    try:
        # 0755: each file guards itself; the server's user must reach its own file
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    except OSError as e:
        raise TemporaryFailure(f"cannot write {path}: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode())
            if applied:
                if (owner.uid, owner.gid) != (os.geteuid(), os.getegid()):
                    os.fchown(fd, owner.uid, owner.gid)
                os.fchmod(fd, owner.mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)  # fails if the path appeared meanwhile: never clobbers
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise UsageError(f"{path} exists; refusing to overwrite it", "use --force") from None
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TemporaryFailure(f"cannot write {path}: {e.strerror}") from None
    return Placed(path, owner, applied)


def generate(name: str, key_file: str, server_dir: str, servers: tuple[str, ...],
             pools: list[Pool], force: bool = False, spdu_owner: Owner | None = None,
             server_owners: dict[str, Owner] | None = None) -> Generated:
    """Make the key; write spdu's key file and its knsupdate twin for
    `spdu_owner`, and each server's key file for that server's owner."""
    key = new_key(name)
    spdu_owner = spdu_owner or owner_for(None)
    owners = server_owners or {}
    files = {s: str(Path(server_dir) / server_file_name(s, key)) for s in servers}
    targets = [(key_file, bind_key_text(key), spdu_owner),
               (knsupdate_file(key_file), line_key_text(key), spdu_owner)]
    targets += [(files[s], server_key_text(s, key), owners.get(s) or owner_for(None))
                for s in servers]
    if not force:  # check all before writing any: no half-made set of files
        for path, _, _ in targets:
            if os.path.lexists(path):
                raise UsageError(f"{path} exists; refusing to overwrite it",
                                 "use --force to replace the key (the old key stops working)")
    placed = [write_private(path, text, force, owner) for path, text, owner in targets]
    return Generated(key, key_file, files, pools, placed)
