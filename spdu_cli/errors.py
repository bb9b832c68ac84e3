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
        return f"{self.message} ({self.hint})" if self.hint else self.message


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
