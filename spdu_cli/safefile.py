"""Files spdu trusts: owned by root or whoever runs spdu, writable by no one
else, regular, bounded in size, UTF-8; a file holding a secret is readable by
no one else either. Checked on the open descriptor, never on the path.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from spdu_cli.errors import ConfigError
from spdu_cli.paths import CONFIG_ENV as ENV_VAR
from spdu_cli.paths import MAX_CONFIG as MAX_FILE_SIZE
from spdu_cli.paths import trusted_file


@dataclass(frozen=True)
class SafeFile:
    path: str
    text: str
    mode: int


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_directory(path: str) -> None:
    """Refuse a configuration directory that group or others can write, as
    sshd's StrictModes does: whoever can write it can rename spdu's files
    away and put links to other files in their place."""
    try:
        st = os.stat(path)
    except OSError:
        return  # a missing file in it is reported by its own read
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode) and mode & 0o022:
        who = " and ".join(w for w, b in (("group", 0o020), ("others", 0o002)) if mode & b)
        raise ConfigError(
            f"refusing configuration directory {path}: mode {mode:04o}, writable by {who},"
            " who could replace the files in it",
            f"chmod go-w {path}",
        )


def read_safe_file(path: str, what: str = "configuration file",
                   missing: str | None = None) -> SafeFile:
    """Read a file that spdu trusts: owned by root or us, writable by no one else.

    The checks are made on the open descriptor, so the file cannot be swapped
    between check and read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        hint = (f"create it, or select another with --config FILE or {ENV_VAR}=FILE"
                if what == "configuration file" else missing)
        raise ConfigError(f"{what} {path} does not exist", hint) from None
    except PermissionError:
        raise ConfigError(
            f"cannot read {what} {path}: permission denied",
            "run spdu as the user that owns it, or root",
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot open {what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        foreign = st.st_uid not in (0, os.geteuid())
        if not trusted_file(st, os.geteuid()):
            allowed = ("root" if os.geteuid() == 0
                       else f"root or {_owner(os.geteuid())} (who runs spdu)")
            why = []
            if foreign:
                why.append(f"it must be owned by {allowed}")
            if mode & 0o022:
                who = " and ".join(w for w, b in (("group", 0o020), ("others", 0o002)) if mode & b)
                why.append(f"it is writable by {who}")
            fix = ([f"chown root {path}"] if foreign else []) + (
                [f"chmod go-w {path}"] if mode & 0o022 else [])
            raise ConfigError(
                f"refusing unsafe {what} {path}: owned by {_owner(st.st_uid)},"
                f" mode {mode:04o}; {' and '.join(why)}",
                " && ".join(fix),
            )
        if st.st_size > MAX_FILE_SIZE:
            raise ConfigError(f"{what} {path} is larger than {MAX_FILE_SIZE} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    return SafeFile(path, text, mode)


def require_private(file: SafeFile, secret: str) -> None:
    if file.mode & 0o004:
        raise ConfigError(
            f"refusing {file.path}: it holds a secret ({secret}) but is readable by others "
            f"(mode {file.mode:04o})",
            f"chmod o-r {file.path}",
        )
