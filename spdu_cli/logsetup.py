"""Where spdu's log lines go: stderr on a terminal or in a pipe, or syslog
(facility daemon, ident spdu) when run by the cron wrapper or with --syslog."""

from __future__ import annotations

import logging
import os
import stat
import sys

SYSLOG_SOCKETS = ("/dev/log", "/var/run/log")  # Linux, FreeBSD


class StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"spdu: {record.levelname.lower()}: {record.getMessage()}"


class SyslogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = record.getMessage()
        if record.levelno >= logging.WARNING:
            line = f"{record.levelname.lower()}: {line}"
        return line.replace("\n", " ")


def is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def system_socket() -> str | None:
    """The system's syslog socket (/var/run/log may be a directory: systemd's)."""
    return next((p for p in SYSLOG_SOCKETS if is_socket(p)), None)


def _syslog_class():
    """The handler class, made on first use: logging.handlers (with pickle and
    queue) is loaded only by runs that log to syslog."""
    import logging.handlers

    class _Syslog(logging.handlers.SysLogHandler):
        """Syslog, or stderr when syslogd stops listening: a log line is never lost
        and never turns into a traceback in cron's mail."""

        fallback: logging.Handler | None = None

        def handleError(self, record):
            if self.fallback is None:
                self.fallback = logging.StreamHandler(sys.stderr)
                self.fallback.setFormatter(StderrFormatter())
                sys.stderr.write(f"spdu: warning: cannot log to syslog at {self.address};"
                                 " logging to stderr\n")
            self.fallback.emit(record)

    return _Syslog


def syslog_handler(socket_path: str = "") -> logging.Handler | None:
    """A handler for the daemon facility at `socket_path`, or the system's
    socket when empty; None when there is none (or it is 'none')."""
    if socket_path == "none":
        return None
    path = socket_path or system_socket()
    if path is None or not is_socket(path):
        return None
    try:
        syslog = _syslog_class()
        handler = syslog(address=path, facility=syslog.LOG_DAEMON)
    except OSError:
        return None
    handler.ident = f"spdu[{os.getpid()}]: "
    handler.setFormatter(SyslogFormatter())
    # A state change already has its line there (journal.log_line), as it is journaled.
    handler.addFilter(lambda record: not getattr(record, "transition", False))
    return handler


def setup(verbose: int, quiet: bool, use_syslog: bool, socket_path: str = "",
          warn: bool = True) -> None:
    """stderr by default (warnings and errors; -v info, -vv debug; -q errors only).
    With syslog: info by default (one line per transition and DNS change), and
    stderr only when syslog cannot be reached."""
    root = logging.getLogger("spdu_cli")
    root.propagate = False
    handler = syslog_handler(socket_path) if use_syslog else None
    if use_syslog and handler is None and socket_path != "none" and warn:
        where = socket_path or " or ".join(SYSLOG_SOCKETS)
        sys.stderr.write(f"spdu: warning: no syslog socket at {where};"
                         " logging to stderr\n")
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(StderrFormatter())
        levels = {0: logging.WARNING, 1: logging.INFO}
    else:
        levels = {0: logging.INFO}
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else levels.get(verbose, logging.DEBUG))
