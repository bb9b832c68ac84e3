"""The kept connections: each target's last good probe's connections, held
open between the cron loop's probes, so a peer that closes them (its server
died or stopped) is probed again at once.
"""

from __future__ import annotations

import selectors
import socket
import sys

from spdu_cli.probe.spec import READ_SIZE

KEPT_DISCARD = 64 * 1024  # bytes a kept connection may bring (an unread body) before it is let go


class Held(tuple):
    """A kept connection's key data in a selector: its target."""

    def __new__(cls, target: str):
        return super().__new__(cls, (target,))

    @property
    def target(self) -> str:
        return self[0]


class Kept:
    """The connections of each target's last good probe, kept open between
    probes (the cron loop). A peer whose server process dies, or is stopped,
    closes them at once (its kernel sends FIN or RST), and `wait` hears it:
    the loop then probes that target right away instead of at its next
    interval. Nothing is sent on them. A peer that closes idle connections
    by itself sooner than the next probe causes one early probe that finds it
    up (`spurious`), and its connections are not kept again for the rest of
    the loop's run."""

    def __init__(self, wake_fd: int | None = None, sel: selectors.BaseSelector | None = None):
        """`sel`: a selector to share (the probes' own, in the cron loop): the
        owner then calls `readable` for the keys whose data is a Held."""
        self.shared = sel is not None
        self.sel = sel if sel is not None else selectors.DefaultSelector()
        self.held: dict[str, list[socket.socket]] = {}
        self.read: dict[int, int] = {}  # fileno -> bytes discarded (the rest of a body)
        self.off: set[str] = set()
        if wake_fd is not None:  # written to by a signal handler: wait returns at once
            self.sel.register(wake_fd, selectors.EVENT_READ, None)

    def __bool__(self) -> bool:
        return bool(self.held)

    def keep(self, target: str, socks: list[socket.socket]) -> None:
        self.drop(target)
        if target in self.off:
            for sock in socks:
                sock.close()
            return
        for sock in socks:
            self.sel.register(sock, selectors.EVENT_READ, Held(target))
            self.read[sock.fileno()] = 0
        self.held[target] = socks

    def drop(self, target: str) -> None:
        for sock in self.held.pop(target, []):
            self.read.pop(sock.fileno(), None)
            self.sel.unregister(sock)
            sock.close()

    def spurious(self, target: str) -> None:
        """The target's early probe found it up: its peer closes idle connections."""
        self.off.add(target)
        self.drop(target)

    def wait(self, timeout: float) -> list[str]:
        """Wait up to `timeout` seconds, less when a kept connection is closed
        (or the wake descriptor is written): the targets whose were closed."""
        closed = [self.readable(key) for key, _ in self.sel.select(max(0.0, timeout))]
        return [t for t in closed if t is not None]

    def readable(self, key) -> str | None:
        """One of its connections is readable: the target whose connection the
        peer closed, if it did (its connections are then let go)."""
        if not isinstance(key.data, Held) or key.data.target not in self.held:
            return None
        target = key.data.target
        verdict = self._look(key.fileobj)
        if verdict is not False:  # closed, or let go
            self.drop(target)
            if verdict:
                return target
        return None

    def _look(self, sock) -> bool | None:
        """True: the peer closed; None: let go (it sends too much); False: still open."""
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:  # a reset, or a TLS alert
            ssl = sys.modules.get("ssl")  # loaded when there is a TLS connection at all
            return not (ssl is not None
                        and isinstance(e, (ssl.SSLWantReadError, ssl.SSLWantWriteError)))
        if not data:
            return True
        self.read[sock.fileno()] += len(data)
        return False if self.read[sock.fileno()] <= KEPT_DISCARD else None

    def close(self) -> None:
        for target in list(self.held):
            self.drop(target)
        if not self.shared:
            self.sel.close()
