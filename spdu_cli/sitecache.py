"""The cron loop's configuration: read again only when one of its files (the
main file, spdu/, the key and token files it names) changes; a refused edit
keeps the configuration read before, and says why (`stale`).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from spdu_cli.errors import SpduError

log = logging.getLogger("spdu_cli.cycle")


class SiteCache:
    """The configuration, read again only when one of its files changes."""

    def __init__(self, load: Callable[[], object], path: str, site=None):
        """`site`: the configuration the caller has just read, so it is not read twice."""
        self.load = load
        self.path = Path(path)
        self.secrets: tuple[str, ...] = _secret_files(site) if site is not None else ()
        self.stamp: tuple = self._stamp() if site is not None else ()
        self.site = None
        # the errors of the newer configuration that was refused: the loop goes on
        # with the one before (trouble.Trouble says so until it is fixed)
        self.stale: list[SpduError] = []
        if site is not None:
            site.check(each=True)
            self.site = site

    def _stamp(self) -> tuple:
        # os.stat and os.scandir, not pathlib: this runs every tick
        out = []
        for p in (str(self.path), os.path.join(os.path.dirname(self.path), "spdu"),
                  *self.secrets):  # a chmod that leaves a key readable by others
            try:
                st = os.stat(p)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid))
            if not stat.S_ISDIR(st.st_mode):
                continue
            try:
                with os.scandir(p) as it:
                    files = sorted(it, key=lambda f: f.name)
            except OSError:
                out.append(("", None))  # unreadable: its files are looked at once it is not
                continue
            for f in files:
                try:
                    st = f.stat()
                except OSError:  # gone meanwhile: the next look sees it
                    out.append((f.name, None))
                    continue
                out.append((f.name, st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode,
                            st.st_uid))  # a chmod makes a file unsafe: read it again
        return tuple(out)

    def get(self):
        stamp = self._stamp()
        if self.site is None or stamp != self.stamp:
            try:
                site = self.load()
                site.check(each=True)
            except SpduError as e:
                if self.site is None:
                    raise
                self.stale = [e]
                self.stamp = stamp  # read again when it changes, not every tick
                return self.site
            self.stale = []
            if self.site is not None:
                log.warning("configuration changed: read again")
                # a target file that was good and is refused now: its last good one
                for name, e in list(site.broken.items()):
                    if name in self.site.targets:
                        site._targets[name] = self.site.target(name)
                        del site.broken[name]
                        self.stale.append(e)
            self.site, self.stamp = site, stamp
            secrets = _secret_files(site)
            if secrets != self.secrets:
                self.secrets, self.stamp = secrets, self._stamp()
        return self.site


def _secret_files(site) -> tuple[str, ...]:
    """The key and token files the main file names: watched like the configuration."""
    return tuple(s.value for k, s in site.settings.items()
                 if k in ("tsigKeyFile", "webhookTokenFile") and s.value)
