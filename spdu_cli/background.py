"""The cron loop's DNS step in a thread of its own, so an exchange with a
server that hangs holds up no probe: one run at a time, a request made while
one runs is done right after it (the latest only), and each run's outcome
waits in `results` for the loop, which a write to its wake pipe tells.
(dnspython's exchanges block; a thread is the simple way to keep them off
the probes' event loop.)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Worker:
    """Runs `job(*args)` in a daemon thread on `request`; see the module."""

    def __init__(self, job: Callable[..., object], name: str,
                 wake: Callable[[], tuple[int, int] | None]):
        self.job, self.name, self.wake = job, name, wake
        self.lock = threading.Lock()
        self.running = False
        self.queued: tuple | None = None
        self.results: list[tuple[object, tuple]] = []  # (what job returned, its args)
        self.idle = threading.Event()
        self.idle.set()
        self.thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self.running

    def request(self, *args) -> None:
        with self.lock:
            if self.running:
                self.queued = args
                return
            self.running = True
            self.idle.clear()
        self.thread = threading.Thread(target=self._run, args=(args,), name=self.name,
                                       daemon=True)
        self.thread.start()

    def _run(self, args: tuple) -> None:
        while True:
            try:
                out = self.job(*args)
            except Exception:  # a bug in the step must not end the loop
                log.exception("%s failed", self.name)
                out = None
            with self.lock:
                self.results.append((out, args))
                args, self.queued = self.queued, None
                if args is None:
                    self.running = False
                    self.idle.set()
            pipe = self.wake()
            if pipe is not None:
                try:
                    os.write(pipe[1], b"\0")
                except OSError:
                    pass
            if args is None:
                return

    def take(self) -> list[tuple[object, tuple]]:
        with self.lock:
            out, self.results = self.results, []
        return out

    def join(self, timeout: float | None) -> bool:
        """True when no run is left going within `timeout` seconds."""
        return self.idle.wait(timeout)
