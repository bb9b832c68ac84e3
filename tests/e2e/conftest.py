"""Fixtures of the end-to-end tests: one lab (tests/e2e/netlab.py) shared by the
module's scenarios, put back in its healthy state before each one.

These tests need root (ip netns), iproute2, knot, knot-dnsutils, haproxy and
aiosmtpd. When something is missing they FAIL with a message naming it; they
never skip (CI runs as root with everything installed). Deselect them with
`-m "not e2e"` when running the suite by hand without root.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.netlab import SELF, SITES, Lab, Mail, notices, user_of


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "e2e: end-to-end tests on Linux network namespaces (need root)")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Three sites and a mail sink, each in a namespace, spdu's loop running on
    each site; torn down (processes, namespaces, veths) at the end, even on failure."""
    with Lab(tmp_path_factory.mktemp("e2e")) as lab:
        lab.wait_pool(lab.full(), 30)
        # knotd as Debian's unit runs it, reading keygen's key file as the knot user
        assert {n: user_of(s.knot) for n, s in lab.sites.items()} == dict.fromkeys(SITES, "knot")
        lab.wait(lambda: not lab.pending(), 30, "the first transitions to be mailed")
        # Each site saw each peer and itself (self) go from unknown to up: one notice each.
        first = notices(lab.mails())
        assert first == {s: Counter({(p, "up"): 1 for p in [*SITES, SELF] if p != s})
                         for s in SITES}
        yield lab


@dataclass
class Scenario:
    """The lab, healthy, and the mails already received when the scenario began."""

    lab: Lab
    seen: set[str] = field(default_factory=set)

    def new_mails(self) -> list[Mail]:
        return [m for m in self.lab.mails() if m.path not in self.seen]

    def settle_mail(self, timeout: float = 30.0) -> list[Mail]:
        """Wait until every site has mailed every transition (the spool says so,
        and a transition is marked only after the relay accepted its mail)."""
        self.lab.wait(lambda: not self.lab.pending(), timeout,
                      "every transition to be mailed", poll=0.2)
        return self.new_mails()


@pytest.fixture
def scenario(lab):
    lab.restore()
    return Scenario(lab, {m.path for m in lab.mails()})
