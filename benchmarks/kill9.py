"""kill -9 of the cron loop, again and again, with a flapping peer: is every
transition journaled, mailed and posted, and does any go out twice under a
new id (a repeat a receiver cannot drop)?

A real knotd holds the pool, a peer on 127.0.0.21 flips between 200 and 503
every --flip seconds (probeFall=probeRise=1: each flip is a transition; no
flap summaries), aiosmtpd takes the mail and a webhook receiver (json) the
POSTs. spdu-cron runs as cron starts it and is killed with SIGKILL, --runs
times, each at one of three moments in turn:

  mail    just after the relay's 250 for a mail, before notify could mark it
          (the spool lock is held from the DATA until the kill)
  post    just after the receiver's 200 for a POST, the same way
  random  at a random moment 0.3 to 2.5 s after the start

then started again at once. At the end the peer stays up, one loop runs for
a few seconds and `spdu notify` until nothing is pending. The journal is
read after each kill (each transition's Message-ID and Idempotency-Keys, noted
before anything is sent), so every mail the relay got and every POST can be
traced to the transitions it carried. Printed: transitions journaled; mailed
and posted (distinct, lost ones); repeats under the same id (receivers drop
them), and those whose content differs from the first (goal 0); duplicates
under a new id (goal 0); mails traced to no transition (goal 0); whether DNS
agrees at the end. Exit 1 when a goal is missed.

Run as root (knotd): .venv/bin/python benchmarks/kill9.py [--runs 40] [--flip 0.35]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT))
from _common import VENV_BIN, machine  # noqa: E402

from tests.dnsservers import KnotServer, free_port  # noqa: E402
from tests.httpd import StatusServer  # noqa: E402
from tests.smtpd import SmtpRelay  # noqa: E402
from tests.webhookd import WebhookReceiver  # noqa: E402

SELF, PEER = "192.0.2.1", "127.0.0.21"
KINDS = ("mail", "post", "random")


class Killer:
    """Kills the running loop at the moment its run was armed for."""

    def __init__(self, spool: Path):
        self.spool, self.proc, self.armed = spool, None, None
        self.lock_fd, self.done = None, threading.Event()
        self.mu = threading.Lock()

    def arm(self, proc: subprocess.Popen, kind: str) -> None:
        self.proc, self.armed = proc, kind
        self.done.clear()

    def hold(self, kind: str) -> bool:
        """The spool lock, so that the delivery cannot be marked before the kill."""
        with self.mu:
            if self.armed != kind or self.lock_fd is not None:
                return False
            fd = os.open(self.spool / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.lock_fd = fd
            return True

    def kill(self, kind: str | None = None) -> None:
        with self.mu:
            if self.proc is None or (kind is not None and self.armed != kind):
                return
            if kind is not None and self.lock_fd is None:
                return
            self.proc.kill()
            self.proc.wait()
            if self.lock_fd is not None:
                os.close(self.lock_fd)
                self.lock_fd = None
            self.proc, self.armed = None, None
            self.done.set()


def write_site(root: Path, knot: KnotServer, peer: StatusServer, relay: SmtpRelay,
               rx: WebhookReceiver) -> Path:
    conf = root / "spdu.conf"
    conf.write_text(
        f"domain=domain.tld\ntargets=beta\nspoolDir={root}/spool\nselfCheck=no\nselfIP={SELF}\n"
        f"nameServer=127.0.0.1\nnamePort={knot.port}\nnameTimeout=2\ninterval=0.4\n"
        "fastInterval=0.1\nprobeTimeout=0.5\nprobeFall=1\nprobeRise=1\nflapCount=0\n"
        f"syslogSocket=none\nalertAfter=0\nmailTo=ops@domain.tld\nsmtpRelay=127.0.0.1\n"
        f"smtpPort={relay.port}\nsmtpSSL=no\nsmtpTimeout=5\nwebhookURL={rx.url}\n"
        "webhookFormat=json\nmyTag=alpha\n")
    os.chmod(conf, 0o600)
    (root / "spdu").mkdir()
    (root / "spdu" / "beta").write_text(f"targetIP={PEER}\nprobePort={peer.port}\n")
    return conf


def snapshot(spool: Path, mail_ids: dict, post_ids: dict) -> int:
    """Note each transition's Message-IDs and Idempotency-Keys; its next id."""
    try:
        entry = json.loads((spool / "beta.json").read_text())
    except (OSError, ValueError):
        return 0
    for e in entry.get("journal", []):
        for key in ("mail_id", "message_id"):
            if e.get(key):
                mail_ids[e["id"]].add(e[key])
        for post in (e.get("post_id") or {}).values():
            if post and post.get("id"):
                post_ids[e["id"]].add(post["id"])
    return int(entry.get("next_id", 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40, help="kills (default 40)")
    ap.add_argument("--flip", type=float, default=0.35,
                    help="seconds between the peer's flips (default 0.35)")
    ap.add_argument("--seed", type=int, default=27)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    print(f"kill -9 of spdu-cron, {args.runs} runs, the peer flipping every {args.flip} s"
          f" ({machine()})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spdu-kill9-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        knot = KnotServer(root / "knot", records=[("api", "A", SELF)])
        peer = StatusServer(PEER)
        relay = SmtpRelay(free_port())
        rx = WebhookReceiver()
        conf = write_site(root, knot, peer, relay, rx)
        spool = root / "spool"
        killer = Killer(spool)
        relay.on_data = lambda: killer.hold("mail") and threading.Timer(
            0.05, killer.kill, ["mail"]).start()
        rx.before_answer = lambda got: killer.hold("post")
        rx.after_answer = lambda got: killer.kill("post")
        stop_flip = threading.Event()

        def flip() -> None:
            while not stop_flip.wait(args.flip):
                peer.behaviour = "503" if peer.behaviour == "ok" else "ok"

        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        mail_ids, post_ids = defaultdict(set), defaultdict(set)
        kinds = Counter()
        cron = [str(VENV_BIN / "spdu-cron"), "-c", str(conf), "--for", "60"]
        try:
            for i in range(args.runs):
                kind = KINDS[i % len(KINDS)]
                p = subprocess.Popen(cron, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd="/")
                killer.arm(p, kind)
                limit = rng.uniform(0.3, 2.5) if kind == "random" else 10.0
                if not killer.done.wait(limit):
                    killer.kill()  # random, or nothing to deliver in time: now
                    kind = "random"
                kinds[kind] += 1
                snapshot(spool, mail_ids, post_ids)
            stop_flip.set()
            flipper.join()
            peer.behaviour = "ok"
            killer.armed = None
            subprocess.run([*cron[:-1], "4"], stdin=subprocess.DEVNULL, capture_output=True,
                           cwd="/", timeout=60)
            for _ in range(5):
                r = subprocess.run([str(VENV_BIN / "spdu"), "-c", str(conf), "notify"],
                                   stdin=subprocess.DEVNULL, capture_output=True, cwd="/",
                                   timeout=60)
                if r.returncode == 0:
                    break
            final = snapshot(spool, mail_ids, post_ids)
            entry = json.loads((spool / "beta.json").read_text())
            pool = sorted(knot.query("api", "A"))
        finally:
            stop_flip.set()
            for s in (peer, relay, rx):
                s.stop()
            knot.stop()
    report(args, started, kinds, final, entry, pool, mail_ids, post_ids, relay, rx)


def report(args, started, kinds, final, entry, pool, mail_ids, post_ids, relay, rx) -> None:
    journaled = final - 1
    # mail: the Message-IDs the relay took, traced to the transitions noted with them
    at_relay = Counter(str(m.message["Message-ID"]) for m in relay.received)
    words = defaultdict(set)  # Message-ID -> (Date, body) of each mail under it
    for m in relay.received:
        words[str(m.message["Message-ID"])].add((m.message["Date"], m.message.get_content()))
    mail_changed = sum(len(w) > 1 for w in words.values())
    traced = set().union(*mail_ids.values()) if mail_ids else set()
    mailed = {t for t, ids in mail_ids.items() if ids & at_relay.keys()}
    mail_new = sorted(t for t, ids in mail_ids.items() if len(ids & at_relay.keys()) > 1)
    mail_same = sum(n - 1 for n in at_relay.values())
    untraced = sorted(m for m in at_relay if m not in traced)
    # webhooks: each POST names its transitions and its key
    keys_of, posts_of, bodies = defaultdict(set), Counter(), defaultdict(set)
    whole = []
    for got in rx.received:
        try:  # cut short by the kill: no delivery (the receiver got half a request)
            doc = got.json()
        except ValueError:
            continue
        whole.append(got)
        key = got.headers["Idempotency-Key"]
        posts_of[key] += 1
        bodies[key].add(got.body)
        for t in doc["transitions"]:
            keys_of[t["id"]].add(key)
    posted = set(keys_of)
    post_new = sorted(t for t, keys in keys_of.items() if len(keys) > 1)
    post_same = sum(n - 1 for n in posts_of.values())
    changed = sum(len(b) > 1 for b in bodies.values())
    ids = set(range(1, final))
    up = entry["state"] == "up"
    dns_ok = pool == sorted([SELF, PEER] if up else [SELF])
    pending = [e["id"] for e in entry["journal"] if not e.get("notified")]
    print(f"  kills: {kinds['mail']} after a 250, {kinds['post']} after a 200,"
          f" {kinds['random']} at random")
    print(f"  transitions journaled:           {journaled}")
    print(f"  mailed:                          {len(mailed & ids)} (lost {len(ids - mailed)}),"
          f" in {sum(at_relay.values())} mails")
    cut = len(rx.received) - len(whole)
    print(f"  posted:                          {len(posted & ids)} (lost {len(ids - posted)}),"
          f" in {len(whole)} POSTs" + (f" (and {cut} cut short by the kill)" if cut else ""))
    print(f"  mail repeats, same Message-ID:   {mail_same}, {mail_changed} with another Date or"
          " body (goal 0)")
    print(f"  POST repeats, same key:          {post_same}, {changed} with other content"
          " (goal 0)")
    print(f"  duplicates with a new id:        mail {len(mail_new)}, webhook {len(post_new)}"
          " (goal 0)")
    print(f"  mails traced to no transition:   {len(untraced)} (goal 0)")
    print(f"  pending at the end:              {len(pending)}; DNS agrees with the spool:"
          f" {'yes' if dns_ok else 'NO: ' + ', '.join(pool)}")
    print(f"  took {time.monotonic() - started:.0f} s")
    if mail_new or post_new:
        print(f"  new-id duplicates: mail {mail_new[:10]}, webhook {post_new[:10]}")
    bad = (mail_new or post_new or untraced or changed or mail_changed or pending or not dns_ok
           or ids - mailed or ids - posted)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
