"""Exit codes and the domain exceptions that map to them.

Core modules raise these; the CLI's single error boundary turns each into one
stderr line and its exit code.
"""

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    TARGET_DOWN = 1  # probe only: a probed target is not up
    USAGE = 2
    UNAVAILABLE = 69  # a needed service (DNS server, SMTP relay) could not be reached
    SOFTWARE = 70  # a bug in spdu: rerun with --debug and report it
    TEMPFAIL = 75  # lock held, disk full...: try again
    CONFIG = 78


class SpduError(Exception):
    """Base of every error a user can cause; carries its exit status."""

    exit_status = ExitStatus.SOFTWARE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        # "; " rather than parentheses: hints often hold parentheses of their own
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(SpduError):
    """The command line names something that does not exist."""

    exit_status = ExitStatus.USAGE


class ConfigError(SpduError):
    """A configuration file is missing, unsafe or holds a bad value."""

    exit_status = ExitStatus.CONFIG


class ServiceUnavailable(SpduError):
    """A DNS server or SMTP relay could not be reached or refused to serve."""

    exit_status = ExitStatus.UNAVAILABLE


class TemporaryFailure(SpduError):
    """Lock held or a write failed for a reason that may pass: try again."""

    exit_status = ExitStatus.TEMPFAIL


class ProbeInterrupted(TemporaryFailure):
    """A probe run was abandoned because spdu is stopping; nothing was recorded."""


def os_failure(e: OSError, doing: str, path, user: str | None = None) -> SpduError:
    """The one place where a failed file operation in the spool becomes an exit
    status: 75 (try again once the cause is gone), with what to do about it.
    `doing`: "write the spool file", "open the spool lock"...; `user`: who runs spdu."""
    import errno
    import os

    what = f"cannot {doing} {path}: {e.strerror or e}"
    parent = os.path.dirname(str(path)) or "."
    if getattr(e, "hint", None):  # it knows best (spool.NotRegularFile)
        hint = e.hint
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = f"free space on the filesystem of {parent}; nothing is lost meanwhile"
    elif e.errno in (errno.EACCES, errno.EPERM):
        if user is None:
            import pwd

            try:
                user = pwd.getpwuid(os.geteuid()).pw_name
            except KeyError:
                user = f"uid {os.geteuid()}"
        hint = (f"run spdu as the user that owns {parent}, or give it to {user}:"
                f" chown -R {user} {parent}")
    elif e.errno == errno.ELOOP:
        hint = f"{path} is a symbolic link, which spdu never follows: remove it"
    elif e.errno == errno.EROFS:
        hint = f"the filesystem of {parent} is read-only"
    else:
        hint = "try again"
    return TemporaryFailure(what, hint)
