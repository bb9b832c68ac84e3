"""One loop from minute to minute (`spdu cron --follow`, what spdu-cron runs):
the copy cron starts each minute leaves a note and exits, the running loop
covers that minute too. The copy's own step (cronstart) is tested directly,
the loop with the fake clock of test_cycle_loop.py, and the whole with real
spdu-cron processes against real HTTP and DNS servers (test_cycle.py's site)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spdu_cli import config, cronstart, cycle, handover, paths
from spdu_cli.errors import ConfigError
from tests.test_cycle import site, wait_for  # noqa: F401 - the fixture
from tests.test_cycle_loop import INTERVAL, T0, Cache, Clock, Sleeps, script  # noqa: F401

# -- the copy's first step (cronstart), directly --------------------------------------------


@pytest.mark.parametrize("argv, path", [
    ([], "/env.conf"),
    (["-c", "/a.conf"], "/a.conf"),
    (["--config", "/a.conf"], "/a.conf"),
    (["--config=/a.conf"], "/a.conf"),
    (["-v"], None),  # anything else: the full start
    (["--for", "10"], None),
    (["-c", "/a.conf", "--", "--for", "1"], None),
    (["-c"], None),
    (["-c", "/a.conf", "-c", "/b.conf"], None),
])
def test_the_copy_understands_only_the_configuration_option(argv, path):
    assert cronstart.config_path(argv, {"SPDU_CONFIG": "/env.conf"}) == path


def test_without_option_or_environment_the_default_file():
    assert cronstart.config_path([], {}) == paths.DEFAULT_CONFIG == config.DEFAULT_PATH


def write_conf(path: Path, text: str, mode: int = 0o640) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_spool_dir_as_the_configuration_sets_it(tmp_path):
    f = tmp_path / "spdu.conf"
    assert cronstart.spool_dir(write_conf(f, "domain=d.tld\n")) == "/var/spool/spdu"
    assert cronstart.spool_dir(write_conf(f, "spoolDir=/a\n# c\nspoolDir='/b c'\n")) == "/b c"
    assert cronstart.spool_dir(write_conf(f, 'd=/x\nspoolDir="$d/spool"\n')) == "/x/spool"


def test_a_reference_elsewhere_does_not_matter(tmp_path):
    f = tmp_path / "spdu.conf"
    assert cronstart.spool_dir(write_conf(f, "apiName=api.$domain\nspoolDir=/s\n")) == "/s"


@pytest.mark.parametrize("text, mode", [
    ("spoolDir=/s\n", 0o666),  # writable by others: config.load refuses it
    ("spoolDir=/s\n", 0o620),  # by the group
    ("spoolDir=$nowhere/s\n", 0o640),  # a default's value: not known here
    ("spoolDir=${domain}/s\n", 0o640),
    ("spoolDir=relative\n", 0o640),
    ("spoolDir=/s; rm -rf /\n", 0o640),
    ("spoolDir=`id`\n", 0o640),
    ("spoolDir=/s\x01\n", 0o640),
])
def test_spool_dir_refuses_what_it_cannot_be_sure_of(tmp_path, text, mode):
    assert cronstart.spool_dir(write_conf(tmp_path / "spdu.conf", text, mode)) is None


def test_spool_dir_refuses_other_files(tmp_path):
    assert cronstart.spool_dir(str(tmp_path / "missing.conf")) is None
    assert cronstart.spool_dir(str(tmp_path)) is None  # a directory
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * (paths.MAX_CONFIG + 1))
    os.chmod(big, 0o640)
    assert cronstart.spool_dir(str(big)) is None
    latin = tmp_path / "latin.conf"
    latin.write_bytes(b"spoolDir=/caf\xe9\n")
    os.chmod(latin, 0o640)
    assert cronstart.spool_dir(str(latin)) is None


_values = st.one_of(
    st.text(alphabet="/abc $'\"\\#{}`;~-_.\n\t", max_size=20),
    st.sampled_from(["/srv/spool", "'/a b'", '"/x/$d"', "${d}/y", "$spoolDir/z", "/q\\ r"]))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(st.sampled_from(["spoolDir", "d", "domain", "#", ""]), _values),
                      max_size=5))
def test_spool_dir_is_what_config_load_reads_or_nothing(tmp_path, lines):
    """Whatever the file holds: either the copy's reading is config.load's, or
    the copy declines (and the full start reads the file)."""
    text = "".join(f"{k}={v}\n" if k not in ("#", "") else f"{k}{v}\n" for k, v in lines)
    path = write_conf(tmp_path / "spdu.conf", text)
    quick = cronstart.spool_dir(path)
    if quick is None:
        return
    try:
        full = config.load(path).spool_dir
    except ConfigError as e:  # the full start refuses the file; a running loop keeps
        assert "spoolDir" not in str(e)  # the one it read before, which it did not set
        return
    assert quick == full


def held_lock(directory: Path, end: float) -> int:
    """A loop's lock, held (by this process, through its own descriptor)."""
    directory.mkdir(mode=0o750, exist_ok=True)
    fd = os.open(directory / handover.LOOP_LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    assert handover.try_lock(fd)
    handover.publish_end(fd, end)
    return fd


def copy_waits(directory: Path) -> tuple[bool, float]:
    """handover.loop_running from a descriptor of its own, as a copy has: (answer, seconds)."""
    t0 = time.monotonic()
    return handover.loop_running(str(directory)), time.monotonic() - t0


def test_no_loop_no_note(tmp_path):
    d = tmp_path / "spool"
    assert copy_waits(d)[0] is False  # no directory
    d.mkdir(mode=0o750)
    assert copy_waits(d)[0] is False  # no lock file
    fd = held_lock(d, time.time() + 30)
    os.close(fd)  # released: no loop
    assert copy_waits(d)[0] is False
    assert not (d / handover.NOTE).exists()
    fd = os.open(d / handover.LOOP_LOCK, os.O_RDWR)
    assert handover.try_lock(fd)  # and the copy did not keep it
    os.close(fd)


def test_a_loop_far_from_the_end_of_its_minute_takes_the_note_later(tmp_path):
    d = tmp_path / "spool"
    fd = held_lock(d, time.time() + 30)
    try:
        running, took = copy_waits(d)
        assert running and took < 0.5  # at once
        assert (d / handover.NOTE).exists()
    finally:
        os.close(fd)


def test_a_loop_at_the_end_of_its_minute_answers(tmp_path):
    d = tmp_path / "spool"
    fd = held_lock(d, time.time())
    try:
        # the loop takes the note: the copy sees it gone and exits
        threading.Timer(0.3, handover.take, [str(d)]).start()
        running, took = copy_waits(d)
        assert running and 0.25 < took < 1.5
    finally:
        os.close(fd)
    fd = held_lock(d, time.time())
    # the loop ends instead (its hour is up, an upgrade): the copy takes over
    threading.Timer(0.3, os.close, [fd]).start()
    running, took = copy_waits(d)
    assert not running and 0.25 < took < 1.5
    assert (d / handover.NOTE).exists()  # left for nobody: the next loop ignores old notes


def test_a_copy_that_cannot_leave_its_note_waits_for_the_loop_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(handover, "GRACE", 0.5)
    monkeypatch.setattr(handover, "TAKEOVER", 1.0)
    d = tmp_path / "spool"
    fd = held_lock(d, time.time() + 1.5)  # its minute ends in 1.5 s; it ends 0.5 s later
    (d / handover.NOTE).mkdir()  # something that is no note: the loop will not go on
    threading.Timer(2.0, os.close, [fd]).start()
    running, took = copy_waits(d)
    assert not running and 1.9 < took < 2.6  # past its usual wait: until the lock freed
    fd = held_lock(d, time.time())  # one that does not end: it stops waiting after the
    try:                            # loop's end, its grace and a second
        running, took = copy_waits(d)
        assert running and 1.4 < took < 2.0
    finally:
        os.close(fd)


def test_a_copy_whose_note_could_not_be_written_at_all_waits_for_the_loop_to_end(
        tmp_path, monkeypatch):
    """No note at all (a full disk: `ask` fails before the file exists): its absence
    is no answer from the loop, which ends with its minute; the copy takes over."""
    monkeypatch.setattr(handover, "GRACE", 0.5)
    monkeypatch.setattr(handover, "ask", lambda directory: False)
    d = tmp_path / "spool"
    fd = held_lock(d, time.time() + 1.0)
    threading.Timer(1.5, os.close, [fd]).start()
    running, took = copy_waits(d)
    assert not running and 1.4 < took < 2.2
    assert not (d / handover.NOTE).exists()


def test_a_copy_says_when_the_loop_looks_stuck(tmp_path, capsys):
    d = tmp_path / "spool"
    fd = held_lock(d, time.time() - handover.STUCK - 10)
    try:
        running, took = copy_waits(d)
    finally:
        os.close(fd)
    assert running and took < 0.5
    err = capsys.readouterr().err
    assert "is it stuck?" in err and str(d / handover.LOOP_LOCK) in err
    fd = held_lock(d, time.time() - 3)  # busy past its minute: no alarm
    threading.Timer(0.3, handover.take, [str(d)]).start()
    try:
        copy_waits(d)
    finally:
        os.close(fd)
    assert capsys.readouterr().err == ""


def test_a_copy_never_waits_for_a_dead_loop_in_a_foreign_directory(tmp_path):
    d = tmp_path / "spool"
    fd = held_lock(d, time.time() + 30)
    try:
        os.chmod(d, 0o777)  # Spool.check_dir refuses it: the full start says why
        assert copy_waits(d)[0] is False
    finally:
        os.close(fd)


# -- the loop, fake clock --------------------------------------------------------------------


def follow_loop(script, seconds: float, notes_at=(),  # noqa: F811 - not the fixture
                note_dir: Path | None = None):
    """A --follow loop whose copies leave their notes at the given (fake) times."""
    clock = Clock()
    script.clock = clock
    directory = Path(script.site.spool_dir)
    directory.mkdir(exist_ok=True)
    lock = os.open(directory / handover.LOOP_LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    loop = cycle.Loop(Cache(script.site), seconds, clock=clock, wall=clock,
                      follow=str(directory), lock=lock)
    sleeps = Sleeps(loop)
    pending = sorted(notes_at)
    fake_sleep = sleeps.wait

    def wait(timeout):
        fake_sleep(timeout)
        while pending and clock.now >= pending[0]:
            pending.pop(0)
            handover.ask(str(note_dir or directory))
            os.utime((note_dir or directory) / handover.NOTE, (clock.now, clock.now))
        return False

    loop.stop = sleeps
    loop.stop.wait = wait
    tally = loop.run()
    os.close(lock)
    return loop, tally, clock.now


def test_without_a_copy_the_loop_ends_after_its_grace(script):  # noqa: F811
    _, _, ended = follow_loop(script, 10)
    assert T0 + 10 + handover.GRACE <= ended < T0 + 10 + handover.GRACE + handover.POLL + 0.01
    probes = script.calls["probe"]
    assert probes[-1] > T0 + 10  # no gap at the end of the minute: it probed on meanwhile
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert max(gaps) <= INTERVAL + 1e-9


def test_each_copy_gives_the_loop_one_more_minute(script):  # noqa: F811
    notes = [T0 + 10.2, T0 + 20.1, T0 + 30.3]  # cron's copies, a little after each minute
    _, _, ended = follow_loop(script, 10, notes_at=notes)
    assert T0 + 40 + handover.GRACE <= ended < T0 + 40 + handover.GRACE + 0.3
    assert not (Path(script.site.spool_dir) / handover.NOTE).exists()  # each one taken
    gaps = [b - a for a, b in itertools.pairwise(script.calls["probe"])]
    assert max(gaps) <= INTERVAL + 1e-9  # one process, no restart gap
    lock = Path(script.site.spool_dir) / handover.LOOP_LOCK
    assert os.stat(lock).st_mtime == T0 + 40  # the end published for the copies


def test_a_note_left_before_the_loop_stops_is_covered_all_the_same(script, monkeypatch):  # noqa: F811
    """The loop would leave the next minute to a new process (an upgrade), but a
    copy already left its note (it came early, or the loop's last tick was long)
    and is gone: the loop covers that minute, and leaves the one after."""
    stamps = iter(range(1000))
    monkeypatch.setattr(cycle, "_code_stamp", lambda: next(stamps))
    _, _, ended = follow_loop(script, 10, notes_at=[T0 + 9.2, T0 + 20.1])
    assert ended == pytest.approx(T0 + 20 - cycle.END_MARGIN)


def test_a_follow_loops_minutes_end_on_the_wall_clocks(script):  # noqa: F811
    """Started 6.5 s into a 10 s "minute": its first one ends at the whole one
    after the next (it is at least half a minute long), where cron's copy
    will come; started 3.5 s into one, at the next."""
    for late, end in ((6.5, T0 + 20), (3.5, T0 + 10)):
        assert cycle.aligned(T0 + late, 10, 0) == end
    clock = Clock()
    clock.now = T0 + 6.5
    script.clock = clock
    loop = cycle.Loop(Cache(script.site), 10, clock=clock, wall=clock,
                      follow=script.site.spool_dir)
    loop.stop = Sleeps(loop)
    Path(script.site.spool_dir).mkdir()
    loop.run()
    assert clock.now == pytest.approx(T0 + 20 + handover.GRACE, abs=handover.POLL + 0.01)


def test_a_long_run_without_follow_ends_after_an_upgrade(script, monkeypatch):  # noqa: F811
    stamps = iter([1, 1, 1, 2, 2, 2, 2])
    monkeypatch.setattr(cycle, "_code_stamp", lambda: next(stamps))
    clock = Clock()
    script.clock = clock
    loop = cycle.Loop(Cache(script.site), 3600, clock=clock, wall=clock)
    loop.stop = Sleeps(loop)
    loop.run()
    # checked every CODE_CHECK seconds: unchanged at 60 and 120, changed at 180
    assert T0 + 3 * cycle.CODE_CHECK <= clock.now < T0 + 3 * cycle.CODE_CHECK + INTERVAL + 0.01


def test_a_note_from_the_loops_own_start_is_not_a_new_minute(script):  # noqa: F811
    _, _, ended = follow_loop(script, 10, notes_at=[T0 + 0.5])
    assert ended < T0 + 10 + handover.GRACE + 0.3


@pytest.mark.parametrize("why", ["upgrade", "hour", "spool"])
def test_the_loop_leaves_the_next_minute_to_a_new_process(script, monkeypatch, why):  # noqa: F811
    stamps = iter(range(1000))
    if why == "upgrade":
        monkeypatch.setattr(cycle, "_code_stamp", lambda: next(stamps))
    elif why == "hour":
        monkeypatch.setattr(cycle, "MAX_RUN", 25.0)
    else:
        moved = Path(script.site.spool_dir).parent / "elsewhere"
        real_get = Cache.get
        monkeypatch.setattr(Cache, "get", lambda self: (
            setattr(self.site, "spool_dir", str(moved)) if script.clock.now > T0 + 5 else None,
            real_get(self))[1])
        moved.mkdir()
    notes = [T0 + 10.2, T0 + 20.1, T0 + 30.3]
    # spoolDir moved: the copies find no loop there and start one, whose copies'
    # notes the old loop must leave alone
    _, _, ended = follow_loop(script, 10, notes_at=notes,
                                     note_dir=moved if why == "spool" else None)
    # before the next copy comes (it finds the lock free), as without --follow
    assert ended == pytest.approx(T0 + (20 if why == "hour" else 10) - cycle.END_MARGIN)


def test_without_follow_the_minute_is_the_run(script):  # noqa: F811
    clock = Clock()
    script.clock = clock
    loop = cycle.Loop(Cache(script.site), 10, clock=clock, wall=clock)
    loop.stop = Sleeps(loop)
    loop.run()
    assert clock.now == pytest.approx(T0 + 10 - cycle.END_MARGIN)


# -- real processes --------------------------------------------------------------------------

SPDU_CRON = str(Path(sys.executable).parent / "spdu-cron")


def lock_end(site) -> float:  # noqa: F811 - not the fixture
    return os.stat(site["spool"] / handover.LOOP_LOCK).st_mtime


def test_spdu_cron_one_process_minute_after_minute(site):  # noqa: F811
    """A loop of 3-second "minutes", and a copy at each minute's end, as cron
    would start one: each copy exits 75 at once, quietly, without importing
    click or dnspython; the loop goes on; once the copies stop, it ends."""
    a = subprocess.Popen([SPDU_CRON, "--config", site["conf"], "--for", "3"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (site["spool"] / handover.LOOP_LOCK).exists(), 5)
    pid = (site["spool"] / handover.LOOP_LOCK).read_text().strip()
    for _minute in range(3):
        wait_for(lambda: time.time() >= lock_end(site) + 0.1, 6)  # cron, just after the minute
        t0 = time.monotonic()
        copy = subprocess.run(
            [sys.executable, "-X", "importtime", "-c",
             "import sys; from spdu_cli.cronstart import main; main()",
             "--config", site["conf"]],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15, check=False)
        took = time.monotonic() - t0
        assert copy.returncode == 75, copy.stderr
        assert took < 2.0
        imported = {line.rsplit("|", 1)[-1].strip() for line in copy.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "spdu_cli.cronstart" in imported
        assert not {"click", "dns", "h11", "logging", "spdu_cli.cli"} & imported
        assert not [ln for ln in copy.stderr.splitlines() if not ln.startswith("import time:")]
        assert a.poll() is None and (site["spool"] / handover.LOOP_LOCK).read_text().strip() == pid
    t0 = time.monotonic()
    assert a.wait(timeout=15) == 0  # no more copies: it ends
    assert time.monotonic() - t0 < 3 + handover.GRACE + 1.5
    assert "Traceback" not in a.stderr.read()


def test_a_copy_in_the_middle_of_the_loops_minute_exits_at_once(site):  # noqa: F811
    a = subprocess.Popen([SPDU_CRON, "--config", site["conf"], "--for", "10"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (site["spool"] / handover.LOOP_LOCK).exists()
                 and lock_end(site) > time.time() + 3, 10)
        t0 = time.monotonic()
        copy = subprocess.run([SPDU_CRON, "--config", site["conf"]], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=15, check=False)
        assert copy.returncode == 75 and copy.stderr == ""
        assert time.monotonic() - t0 < 1.5  # no wait: the loop takes the note at its end
        assert (site["spool"] / handover.NOTE).exists()
    finally:
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=10) == 0


def test_spdu_cron_no_follow_keeps_to_its_minute(site):  # noqa: F811
    t0 = time.monotonic()
    r = subprocess.run([SPDU_CRON, "--config", site["conf"], "--no-follow", "--for", "2"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert 1.4 < time.monotonic() - t0 < 1.5 + 1.5  # not aligned, no grace: --for it is
