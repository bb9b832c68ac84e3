"""An SMTP sink for the end-to-end lab: aiosmtpd on HOST:PORT, each mail it
accepts written to DIR as one .eml file (atomically: a temporary name, then a
rename), so the test process counts mails by listing DIR.

Run inside the lab's mail namespace:
    ip netns exec NS python tests/e2e/mailsink.py HOST PORT DIR
It writes DIR/.ready once it listens, and stops on SIGTERM.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory: Path):
        self.dir = directory
        self.count = itertools.count(1)
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            n = next(self.count)
        name = f"{time.time():.6f}-{n:05d}.eml"
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(envelope.original_content or envelope.content)
        os.rename(tmp, self.dir / name)
        return "250 2.0.0 stored"


def main() -> None:
    host, port, directory = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(Sink(directory), hostname=host, port=port, ready_timeout=10)
    controller.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    (directory / ".ready").write_text(f"{os.getpid()}\n")
    done.wait()
    controller.stop()


if __name__ == "__main__":
    main()
