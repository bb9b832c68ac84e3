"""`spdu keygen`: a fresh TSIG key scoped to this site's pool name.

Writes the secret only to files of mode 0600 (the key file spdu reads, and a
key file for the DNS server: Knot's `key:` section, BIND's `key` statement,
SQL for PowerDNS's tsigkeys table) and returns the snippets and commands that
load those files, so the secret never reaches a terminal, scrollback, a
command line or a log.
"""

from __future__ import annotations

import base64
import os
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

    def knot_snippet(self) -> str:
        names = ", ".join(f"{p.name}." for p in self.pools)
        zones = sorted({p.zone for p in self.pools})
        lines = [
            "# Knot DNS (knot.conf): the key for spdu on this site, allowed to change only",
            f"# {names} A and AAAA. {self.server_files['knot']} holds the secret:",
            "# keep it mode 0600, owned by the user knotd runs as.",
            f"include: {self.server_files['knot']}",
            "acl:",
            f"  - id: {self.key.name}",
            f"    key: {self.key.name}",
            "    action: update",
            "    update-owner: name",
            "    update-owner-match: equal",
            f"    update-owner-name: [{names}]",
            "    update-type: [A, AAAA]",
            "# and add the ACL to the pool zone's own acl list:",
        ]
        for zone in zones:
            lines += ["#   zone:", f"#     - domain: {zone}",
                      f"#       acl: [..., {self.key.name}]"]
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
            f"# {sql} holds the secret (keep it 0600) as rows of",
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
            "// keep it mode 0600 (or 0640, group bind).",
            f'include "{self.server_files["bind"]}";',
        ]
        for zone in sorted({p.zone for p in self.pools}):
            grants = [p for p in self.pools if p.zone == zone]
            lines += [f'// in zone "{zone}" {{ ... }}, replacing any allow-update:',
                      "    update-policy {"]
            lines += [f'        grant "{self.key.name}" name {p.name}. A AAAA;' for p in grants]
            lines += ["    };"]
        return "\n".join(lines) + "\n"


def write_private(path: str, text: str, force: bool) -> None:
    """Write a secret file of mode 0600 atomically; refuse to replace one
    without `force`. Never follows a symlink planted at `path`."""
    p = Path(path)
    if (p.exists() or p.is_symlink()) and not force:
        raise UsageError(f"{path} exists; refusing to overwrite it",
                         "use --force to replace the key (the old key stops working)")
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    except OSError as e:
        raise TemporaryFailure(f"cannot write {path}: {e.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, text.encode())
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


def generate(name: str, key_file: str, server_dir: str, servers: tuple[str, ...],
             pools: list[Pool], force: bool = False) -> Generated:
    """Make the key, write spdu's key file and the servers' key files, all 0600."""
    key = new_key(name)
    files = {s: str(Path(server_dir) / server_file_name(s, key)) for s in servers}
    targets = [(key_file, bind_key_text(key))]
    targets += [(files[s], server_key_text(s, key)) for s in servers]
    if not force:  # check all before writing any: no half-made set of files
        for path, _ in targets:
            if os.path.lexists(path):
                raise UsageError(f"{path} exists; refusing to overwrite it",
                                 "use --force to replace the key (the old key stops working)")
    for path, text in targets:
        write_private(path, text, force)
    return Generated(key, key_file, files, pools)
