"""The spool on a real file system: atomic writes, modes, defensive reads,
bounded journal, the lock, and two `spdu probe` processes at once."""

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spdu_cli import entry as spool_entry
from spdu_cli import spool as spool_mod
from spdu_cli.entry import Maintenance, ResultRecord, SpoolEntry
from spdu_cli.errors import ConfigError, TemporaryFailure
from spdu_cli.health import Health, State, Transition
from spdu_cli.spool import Spool


@pytest.fixture
def store(tmp_path):
    s = Spool(str(tmp_path / "spool"))
    s.ensure_dir()
    return s


def entry(target="beta"):
    e = SpoolEntry(target, Health(State.UP, 1000.0, 3, 0), checked=1001.5,
                   addresses=["5.6.7.8", "2001:db8::8"], url="http://api.x.tld:80/status")
    e.record(ResultRecord(1001.5, True, "5.6.7.8", 200, 12.5, None))
    e.add_transition(Transition(State.UNKNOWN, State.UP, 1000.0, "HTTP 200 in 3 ms"))
    return e


def test_round_trip_and_modes(store):
    e = entry()
    with store.locked():
        store.write(e)
    path = store.path("beta")
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    assert oct(os.stat(store.dir).st_mode & 0o777) == "0o750"
    data = json.loads(path.read_text())
    assert data["version"] == 1 and data["state"] == "up"
    assert data["since"] == "1970-01-01T00:16:40.000Z"
    assert data["journal"][0]["id"] == 1 and data["journal"][0]["notified"] is False
    back = store.read("beta")
    assert back.health == e.health and back.checked == 1001.5
    assert back.addresses == e.addresses and back.results == e.results
    assert back.journal == e.journal and back.next_id == 2 and not back.fresh
    assert [p.name for p in store.dir.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_file_is_unknown(store):
    e = store.read("beta")
    assert e.health.state is State.UNKNOWN and e.fresh


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b"\x00\xff", b'{"version": 99, "target": "beta", "state": "up"}',
     b'{"version": 1, "target": "gamma", "state": "up"}',
     b'{"version": 1, "target": "beta", "state": "sideways"}',
     b'{"version": 1, "target": "beta", "state": "up", "journal": [{"no": "id"}]}',
     b'{"version": 1, "target": "beta", "state": "up", "since": "yesterday"}'],
)
def test_corrupt_or_truncated_file_is_unknown_with_a_warning(store, content, caplog):
    store.path("beta").write_bytes(content)
    e = store.read("beta")
    assert e.health.state is State.UNKNOWN
    assert "corrupt" in caplog.text and str(store.path("beta")) in caplog.text
    with store.locked():
        store.write(entry())  # the next good write repairs it
    assert store.read("beta").health.state is State.UP


def test_truncated_real_file(store):
    with store.locked():
        store.write(entry())
    data = store.path("beta").read_bytes()
    store.path("beta").write_bytes(data[: len(data) // 2])
    assert store.read("beta").health.state is State.UNKNOWN


def test_symlink_is_not_followed(store, tmp_path):
    secret = tmp_path / "elsewhere.json"
    secret.write_text(json.dumps(entry().to_json()))
    os.symlink(secret, store.path("beta"))
    assert store.read("beta").health.state is State.UNKNOWN
    with store.locked():
        store.write(entry())
    assert not store.path("beta").is_symlink()
    assert json.loads(secret.read_text())["target"] == "beta"  # untouched
    assert secret.read_text() == json.dumps(entry().to_json())


def test_journal_is_bounded_dropping_notified_first(store):
    e = SpoolEntry("beta")
    for i in range(150):
        j = e.add_transition(Transition(State.UP, State.DOWN, float(i), "x"))
        if i >= 20:
            j["notified"] = True
    assert len(e.journal) <= spool_entry.MAX_JOURNAL + 1
    ids = [j["id"] for j in e.journal]
    assert ids[:20] == list(range(1, 21))  # pending ones kept
    assert ids == sorted(ids) and ids[-1] == 150


def test_the_journal_keeps_max_journal_transitions_no_fewer(store):
    """Every transition mailed at once: the latest MAX_JOURNAL of them are kept, as
    written and read back."""
    e = SpoolEntry("beta")
    for i in range(spool_entry.MAX_JOURNAL + 30):
        e.add_transition(Transition(State.UP, State.DOWN, float(i), "x"))["notified"] = True
    e.add_transition(Transition(State.DOWN, State.UP, 1000.0, "back"))  # pending
    with store.locked():
        store.write(e)
    back = store.read("beta")
    ids = [j["id"] for j in back.journal]
    assert len(ids) == spool_entry.MAX_JOURNAL
    assert ids == list(range(32, spool_entry.MAX_JOURNAL + 32))


def test_results_are_bounded():
    e = SpoolEntry("beta")
    for i in range(25):
        e.record(ResultRecord(float(i), True, "a", 200, 1.0, None))
    assert len(e.results) == spool_entry.MAX_RESULTS and e.results[-1].at == 24.0


def test_lock_timeout_is_75(store):
    fd = os.open(store.dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(TemporaryFailure) as e, store.locked(timeout=0.2):
            pass
        assert e.value.exit_status == 75 and ".lock" in str(e.value)
    finally:
        os.close(fd)
    with store.locked(timeout=0.2):
        pass


def test_world_writable_spool_dir_is_refused(tmp_path):
    d = tmp_path / "spool"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(ConfigError) as e:
        Spool(str(d)).ensure_dir()
    assert "unsafe spool directory" in str(e.value)


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs, to fill up (mounting needs root, which CI has)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_keeps_the_previous_state(tiny_fs):
    store = Spool(str(tiny_fs / "spool"))
    with store.locked():
        store.write(entry())
    before = store.path("beta").read_bytes()
    fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the file system to the last block
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    e = entry()
    e.health = Health(State.DOWN, 5.0, 0, 2)
    e.journal.extend({"id": i, "reason": "x" * 200} for i in range(2, 60))
    with pytest.raises(TemporaryFailure) as err, store.locked():
        store.write(e)
    assert "No space left on device" in str(err.value)
    assert "previous state is kept" in str(err.value)
    assert store.path("beta").read_bytes() == before
    assert [p.name for p in store.dir.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_writers_in_threads_never_interleave(store):
    def work(n):
        for i in range(30):
            with store.locked():
                e = store.read("beta")
                e.record(ResultRecord(float(i), True, str(n), 200, 1.0, None))
                e.next_id += 1
                store.write(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.read("beta").next_id == 1 + 4 * 30  # no lost update


def test_two_probe_processes_at_once_leave_a_valid_spool(confdir, http_server, tmp_path):
    srv = http_server("127.0.0.11")
    spool_dir = tmp_path / "spool"
    confdir.write(
        f"domain=domain.tld\ntargets='beta gamma'\nspoolDir={spool_dir}\n"
        f"targetIP=127.0.0.11\nprobePort={srv.port}\n"
    )
    cmd = [sys.executable, "-m", "spdu_cli", "-c", str(confdir.main), "probe"]
    for _ in range(3):
        procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for _ in range(4)]
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
    for target in ("beta", "gamma"):
        data = json.loads((spool_dir / f"{target}.json").read_text())
        assert data["state"] == "up" and data["good"] == 12
        assert len(data["results"]) == 10
        assert [j["to"] for j in data["journal"]] == ["up"]


def test_world_writable_spool_directory_is_refused(tmp_path):
    from spdu_cli.errors import ConfigError

    d = tmp_path / "spool"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(ConfigError) as e:
        Spool(str(d)).ensure_dir()
    assert "writable by others (mode 0777)" in str(e.value) and f"chmod 0750 {d}" in str(e.value)


def test_spool_directory_of_another_user_names_the_owner(tmp_path):
    from spdu_cli.errors import ConfigError

    d = tmp_path / "spool"
    d.mkdir(mode=0o750)
    os.chown(d, 65534, 65534)
    with pytest.raises(ConfigError) as e:
        Spool(str(d)).ensure_dir()
    assert "belongs to nobody" in str(e.value) and "sudo -u nobody spdu" in str(e.value)


def test_a_corrupt_file_is_kept_aside_when_rewritten(store, caplog):
    store.path("beta").write_text('{"version": 1, "journal": [{"id": 1, "notified": fal')
    e = store.read("beta")
    with store.locked():
        store.write(e)
    aside = store.path("beta").with_name("beta.json.corrupt")
    assert aside.read_text().startswith('{"version": 1, "journal"')
    assert "kept as" in caplog.text and str(aside) in caplog.text
    assert store.read("beta").fresh is False  # the new file is good


# -- addresses that change, maintenance that ends ------------------------------------------


def test_an_address_that_comes_back_is_no_longer_retired():
    e = SpoolEntry("beta", addresses=["192.0.2.2"])
    assert e.readdress(["192.0.2.3"]) and e.retired == ["192.0.2.2"]
    assert e.readdress(["192.0.2.2"])  # back to the old address
    assert e.retired == ["192.0.2.3"]  # it is the target's again: reconcile keeps it
    assert not e.readdress(["192.0.2.2"]) and e.retired == ["192.0.2.3"]
    assert e.readdress(["192.0.2.4"])  # moved twice before reconcile ran: both old ones go
    assert e.retired == ["192.0.2.3", "192.0.2.2"]


def test_a_maintenance_ends_at_until():
    m = Maintenance(100.0, 200.0)
    assert m.active(199.999) and not m.active(200.0)


# -- the write path, seen from the kernel --------------------------------------------------



def syscalls(log: Path) -> list[str]:
    """strace -f's calls, one string each: a call that another thread
    interrupted ("fsync(4</x.tmp> <unfinished ...>", later "<... fsync
    resumed>) = 0" from the same pid) is joined again, at its end."""
    out, open_calls = [], {}
    for line in log.read_text().splitlines():
        pid, call = line.split(None, 1)
        if call.endswith("<unfinished ...>"):
            open_calls[pid] = call[: -len("<unfinished ...>")].rstrip()
            continue
        m = re.match(r"<\.\.\. \w+ resumed>(.*)", call)
        if m and pid in open_calls:
            call = open_calls.pop(pid) + m.group(1)
        out.append(call)
    return out

def test_the_spool_file_is_fsynced_before_its_rename_and_the_directory_after(
        confdir, http_server, tmp_path):
    """Traced with strace on a real `spdu probe`: the system calls themselves,
    whichever function issues them. A rename without a prior fsync of the new
    file can leave an empty spool file after a power cut (ext4, xfs)."""
    strace = shutil.which("strace")
    assert strace, "strace is needed (Debian package strace, installed by .ci/setup)"
    srv = http_server("127.0.0.11")
    spool_dir = tmp_path / "spool"
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={spool_dir}\n"
                  f"targetIP=127.0.0.11\nprobePort={srv.port}\nsyslogSocket=none\n")
    log = tmp_path / "strace.log"
    r = subprocess.run([strace, "-f", "-y", "-qq", "-o", str(log), "-e",
                        "trace=fsync,fdatasync,rename,renameat,renameat2",
                        sys.executable, "-m", "spdu_cli", "-c", str(confdir.main), "probe"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    calls = syscalls(log)
    final = str(spool_dir / "beta.json")
    renames = [i for i, c in enumerate(calls) if c.startswith("rename") and f'"{final}"' in c]
    assert len(renames) == 1, calls
    tmp = re.search(r'"([^"]+\.tmp)"', calls[renames[0]]).group(1)
    synced = [i for i, c in enumerate(calls)
              if re.match(rf"f(data)?sync\(\d+<{re.escape(tmp)}>\) = 0", c)]
    assert synced and synced[0] < renames[0], calls
    dir_synced = [i for i, c in enumerate(calls)
                  if re.match(rf"f(data)?sync\(\d+<{re.escape(str(spool_dir))}>\) = 0", c)]
    assert dir_synced and dir_synced[-1] > renames[0], calls


def test_every_write_of_the_cron_loop_is_fsynced_and_routine_results_wait(
        confdir, http_server, tmp_path):
    """The transition (the first probe) is written at once (and again when it
    is marked notified); a result like the last one is kept in the loop's
    memory and written at least every staleAfter/2 (here 2 s) and when the
    loop ends, so its file holds every probe. (Until issue 23 every probe was
    written: a write and its fsync were most of an idle probe's cost.) Each
    write is fsynced before its rename, and the directory after."""
    strace = shutil.which("strace")
    assert strace, "strace is needed (Debian package strace, installed by .ci/setup)"
    srv = http_server("127.0.0.11")
    spool_dir = tmp_path / "spool"
    confdir.write(f"domain=domain.tld\ntargets=beta\nspoolDir={spool_dir}\n"
                  f"targetIP=127.0.0.11\nprobePort={srv.port}\nsyslogSocket=none\n"
                  "nameServer=127.0.0.1\nnamePort=9\nnameTimeout=0.2\ninterval=0.3\n"
                  "staleAfter=4\n")
    log = tmp_path / "strace.log"
    r = subprocess.run([strace, "-f", "-y", "-qq", "-o", str(log), "-e",
                        "trace=fsync,fdatasync,rename,renameat,renameat2",
                        sys.executable, "-m", "spdu_cli", "-c", str(confdir.main), "cron",
                        "--for", "3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 69, r.stderr  # no DNS server there: reconcile fails, probes go on
    calls = syscalls(log)
    final = str(spool_dir / "beta.json")
    renames = [i for i, c in enumerate(calls) if c.startswith("rename") and f'"{final}"' in c]
    # the transition, its mark, the end (and one at 2 s when the ticks are quick)
    assert len(renames) >= 3, calls
    for i in renames:
        tmp = re.search(r'"([^"]+\.tmp)"', calls[i]).group(1)
        assert any(re.match(rf"f(data)?sync\(\d+<{re.escape(tmp)}>\) = 0", c)
                   for c in calls[:i]), (tmp, [c for c in log.read_text().splitlines()
                                               if os.path.basename(tmp) in c])
        assert any(re.match(rf"f(data)?sync\(\d+<{re.escape(str(spool_dir))}>\) = 0", c)
                   for c in calls[i:]), calls[i:i + 20]
    kept = json.loads(Path(final).read_text())
    assert kept["journal"][0]["to"] == "up"
    assert len(renames) < kept["counters"]["probes"], (len(renames), kept["counters"])
    assert kept["counters"]["probes"] == srv.requests, kept["counters"]  # flushed at the end


def test_the_first_addresses_of_a_target_are_no_move():
    e = SpoolEntry("beta")
    assert not e.readdress(["192.0.2.2"])  # nothing to retire, no "addresses changed"
    assert e.addresses == ["192.0.2.2"] and e.retired == []


def test_a_journal_id_is_never_reused_even_when_next_id_is_behind(store):
    """Ids are what marking matches on: an entry whose next_id lags its journal
    (written by hand, or by an older spdu) continues after the highest id."""
    e = entry()
    e.journal.append({"id": 7, "at": "2026-01-01T00:00:00.000Z", "from": "up", "to": "down",
                      "reason": "x", "notified": True, "dns": []})
    e.next_id = 2
    with store.locked():
        store.write(e)
    back = store.read("beta")
    t = back.add_transition(Transition(State.DOWN, State.UP, 2000.0, "back"))
    assert t["id"] == 8


# -- reading a file again only when its bytes changed -------------------------------------


def test_an_entry_read_twice_is_two_entries_no_caller_can_spoil_for_another(store):
    with store.locked():
        store.write(entry())
    a = store.read("beta")
    a.journal[0]["notified"] = True
    a.journal[0].setdefault("dns", []).append({"action": "add"})
    a.results.append(ResultRecord(2000.0, False, "5.6.7.8", None, None, "refused"))
    a.addresses.append("192.0.2.9")
    a.retired.append("192.0.2.8")
    a.counters["probes"] += 5
    b = store.read("beta")
    assert b.journal[0]["notified"] is False and b.journal[0]["dns"] == []
    assert len(b.results) == 1 and b.addresses == ["5.6.7.8", "2001:db8::8"]
    assert b.retired == [] and b.counters["probes"] == 0
    with pytest.raises(AttributeError):  # a result is a value: it cannot be changed in place
        b.results[0].ok = False


def test_every_read_is_what_is_on_disk_whatever_earlier_readers_changed(store):
    """The file is parsed once and every read after is served from that: each
    caller still gets an entry of its own, never one an earlier caller changed."""
    with store.locked():
        store.write(entry())
    for _ in range(3):
        e = store.read("beta")
        assert e.health == Health(State.UP, 1000.0, 3, 0) and e.checked == 1001.5
        assert e.addresses == ["5.6.7.8", "2001:db8::8"] and len(e.results) == 1
        assert [j["notified"] for j in e.journal] == [False] and e.counters["probes"] == 0
        e.health = Health(State.DOWN, 2000.0, 0, 3)  # changed, never written
        e.checked = 2000.0
        e.addresses.append("192.0.2.9")
        e.results.append(ResultRecord(2000.0, False, "5.6.7.8", None, None, "refused"))
        e.journal[0]["notified"] = True
        e.counters["probes"] += 1


def test_a_file_another_process_rewrote_is_read_anew(store):
    with store.locked():
        store.write(entry())
    assert store.read("beta").health.state is State.UP  # now known to this process
    code = ("import sys; from spdu_cli.spool import Spool; from spdu_cli.health import"
            " Health, State; s = Spool(sys.argv[1]); e = s.read('beta');"
            " e.health = Health(State.DOWN, 1002.0, 0, 2); s.write(e)")
    subprocess.run([sys.executable, "-c", code, str(store.dir)], check=True, timeout=30)
    assert store.read("beta").health == Health(State.DOWN, 1002.0, 0, 2)


def test_a_rewrite_of_the_same_size_inode_and_mtime_is_read_anew(store):
    """What a stat cannot tell apart (a coarse clock stamps two writes within
    its tick alike; an inode is reused): the bytes are compared, not the stat."""
    e = entry()
    e.health = Health(State.UP, 1000.0, 12, 0)
    with store.locked():
        store.write(e)
    path = store.path("beta")
    before = os.stat(path)
    assert store.read("beta").health.good == 12
    data = path.read_bytes()
    changed = data.replace(b'"good":12', b'"good":21')
    assert changed != data and len(changed) == len(data)
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.write(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same mtime
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns)
    assert store.read("beta").health.good == 21


def test_a_file_that_turned_corrupt_is_unknown_again(store, caplog):
    with store.locked():
        store.write(entry())
    assert store.read("beta").health.state is State.UP
    store.path("beta").write_text('{"version": 1, "target": "beta", "sta')
    e = store.read("beta")
    assert e.fresh and e.health.state is State.UNKNOWN
    assert "corrupt" in caplog.text


def test_the_parsed_files_kept_are_bounded(store, monkeypatch):
    monkeypatch.setattr(spool_mod, "_parsed", {})
    monkeypatch.setattr(spool_mod, "PARSED_KEPT", 2)
    with store.locked():
        for name in ("beta", "gamma", "delta"):
            store.write(entry(name))
    for _ in range(2):
        assert [store.read(n).target for n in ("beta", "gamma", "delta")] == [
            "beta", "gamma", "delta"]
    assert len(spool_mod._parsed) == 2


def test_a_routine_result_is_kept_in_memory_until_the_file_is_half_stale(store):
    """Spool.defer: the file stays as written, read() gives the kept entry, the
    next write (or spool.flush) writes it; a result the file's checked is
    max_age behind of is not kept."""
    with store.locked():
        store.write(entry())
    on_disk = store.path("beta").read_bytes()
    with store.locked():
        e = store.read("beta")
        e.checked = 1003.0
        e.counters["probes"] += 1
        assert store.defer(e, max_age=5.0)
    assert store.path("beta").read_bytes() == on_disk
    assert store.read("beta").counters["probes"] == 1 and store.read("beta").checked == 1003.0
    with store.locked():
        e = store.read("beta")
        e.checked = 1006.5  # 5 s after the file's own probe: written
        assert not store.defer(e, max_age=5.0)
        e.counters["probes"] += 1
        assert store.defer(e, max_age=6.0)
    spool_mod.flush()
    back = json.loads(store.path("beta").read_text())
    assert back["counters"]["probes"] == 2 and back["checked"].startswith("1970-01-01T00:16:46.5")


def test_a_file_rewritten_by_another_process_overrides_what_was_kept(store, tmp_path):
    with store.locked():
        store.write(entry())
    with store.locked():
        e = store.read("beta")
        e.checked, e.counters["probes"] = 1003.0, 7
        assert store.defer(e, max_age=5.0)
    other = entry()
    other.counters["probes"] = 1
    raw = json.dumps(other.to_json()).encode() + b"\n"
    store.path("beta").write_bytes(raw)  # as `spdu maint` in another process would
    assert store.read("beta").counters["probes"] == 1
    spool_mod.flush()  # nothing kept any more: the other process's file stays
    assert store.path("beta").read_bytes() == raw


def test_only_a_result_like_the_last_one_is_routine():
    """What the cron loop may keep in memory (probe.step._durable unchanged): the
    same outcome again; a first failure of an up target is written at once."""
    from spdu_cli.probe.step import _durable

    e = entry()
    before = _durable(e)
    e.record(ResultRecord(1003.5, True, "5.6.7.8", 200, 11.0, None))
    e.checked, e.counters["probes"] = 1003.5, 2
    assert _durable(e) == before
    e.record(ResultRecord(1005.5, False, "5.6.7.8", 503, 11.0, None))
    assert _durable(e) != before
    again = _durable(e)
    e.record(ResultRecord(1007.5, True, "5.6.7.8", 200, 11.0, None))
    assert _durable(e) != again  # back to good: written too
