"""TSIG key settings: the inline `[alg:]name:secret` form and the key files of
BIND (`key "name" { ... };`), Knot (`key:` YAML) and nsupdate's `-y` line.

The secret never appears in a repr, a message or a log line.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from spdu_cli.validate import TSIG_ALGORITHMS

DEFAULT_ALGORITHM = "hmac-sha256"
_KEY_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+")


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str = field(repr=False)  # base64, as every key file format holds it
    source: str = ""

    def describe(self) -> str:
        """What may be shown: never the secret."""
        where = f" from {self.source}" if self.source else ""
        return f"{self.name} ({self.algorithm}){where}"

    def to_json(self) -> dict[str, str | None]:
        """The `tsig` object of every --json output: never the secret."""
        return {"name": self.name, "algorithm": self.algorithm, "source": self.source or None}


def _check(name: str, algorithm: str, secret: str, source: str) -> TsigKey:
    name = name.strip().rstrip(".").lower()
    algorithm = algorithm.strip().lower() or DEFAULT_ALGORITHM
    if algorithm.endswith(".sig-alg.reg.int"):  # the long form BIND also accepts
        algorithm = algorithm.split(".")[0]
    if not _KEY_NAME.fullmatch(name):
        raise ValueError(f"key name {name!r} is not a DNS name")
    if algorithm not in TSIG_ALGORITHMS:
        raise ValueError(
            f"unknown TSIG algorithm {algorithm!r} (expected one of {', '.join(TSIG_ALGORITHMS)})"
        )
    secret = secret.strip()
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the secret of key {name!r} is not valid base64") from None
    if not raw:
        raise ValueError(f"the secret of key {name!r} is empty")
    return TsigKey(name, algorithm, secret, source)


def parse_inline(value: str, source: str = "") -> TsigKey:
    """`[alg:]name:secret`, as `nsupdate -y` and `knsupdate -y` take it."""
    parts = value.strip().split(":")
    if len(parts) == 2:
        return _check(parts[0], DEFAULT_ALGORITHM, parts[1], source)
    if len(parts) == 3:
        return _check(parts[1], parts[0], parts[2], source)
    raise ValueError("expected [algorithm:]name:secret")


_BIND_KEY = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.DOTALL)
_BIND_ITEM = re.compile(r'(algorithm|secret)\s+"?([^";\s]+)"?\s*;')


def parse_file(text: str, source: str = "") -> TsigKey:
    """A key file in BIND, Knot or `-y` line format; the first key is used."""
    stripped = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith(("#", "//"))
    ).strip()
    if not stripped:
        raise ValueError("the key file holds no key")
    m = _BIND_KEY.search(stripped)
    if m:
        items = dict(_BIND_ITEM.findall(m.group(2)))
        if "secret" not in items:
            raise ValueError(f"key {m.group(1)!r} has no secret")
        return _check(m.group(1), items.get("algorithm", ""), items["secret"], source)
    if re.match(r"key\s*:", stripped):
        return _parse_knot(stripped, source)
    if "\n" not in stripped:
        return parse_inline(stripped, source)
    raise ValueError(
        "not a key file: expected BIND's key \"name\" { ... };, Knot's key: section, "
        "or one [algorithm:]name:secret line"
    )


def _parse_knot(text: str, source: str) -> TsigKey:
    items: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"\s*(?:-\s+)?(id|algorithm|secret)\s*:\s*(.*?)\s*$", line)
        if not m:
            continue
        key, value = m.group(1), m.group(2).strip("\"'")
        if key == "id" and "id" in items:
            break  # only the first key of the section
        items[key] = value
    if "id" not in items or "secret" not in items:
        raise ValueError("Knot key: section without id and secret")
    return _check(items["id"], items.get("algorithm", ""), items["secret"], source)
