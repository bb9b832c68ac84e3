"""Where spdu's files are, and which of them it trusts: the constants and
checks that spdu-cron's light first step (cronstart) and the configuration
loader share. Nothing here imports more than the standard library's os.
"""

from __future__ import annotations

import os
import stat

CONFIG_ENV = "SPDU_CONFIG"
DEFAULT_CONFIG = "/usr/local/etc/spdu.conf"
DEFAULT_SPOOL_DIR = "/var/spool/spdu"
MAX_CONFIG = 1 << 20  # bytes: a larger configuration file is refused


def trusted_file(st: os.stat_result, euid: int) -> bool:
    """A file spdu trusts: regular, owned by root or whoever runs spdu, and
    writable by no one else (config.read_safe_file says why one is not)."""
    return (stat.S_ISREG(st.st_mode) and st.st_uid in (0, euid)
            and not st.st_mode & 0o022)


def absolute_path(value: str) -> str:
    """The check of spoolDir and the other paths (validate, config.KEYS)."""
    if not value.startswith("/"):
        raise ValueError("not an absolute path")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ValueError("control character in path")
    return value
