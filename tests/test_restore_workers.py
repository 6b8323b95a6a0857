"""engine/restorework.py: restore on worker processes (and on threads for backends that cannot be used
after fork) gives the same tree; a worker that dies or fails stops the restore with one clear error and
never hangs it; an interrupted restore leaves no worker behind; the tree-wide name check agrees with
format.names.valid_nodes."""

from __future__ import annotations

import os
import signal
import stat
import threading

import pytest
from conftest import PASSWORD
from helpers import assert_same_tree, do_backup, do_restore, make_rich_tree, reopen
from hypothesis import given, settings
from hypothesis import strategies as st

from cermin.backend import forked
from cermin.engine import restore as restore_mod
from cermin.engine import restorework
from cermin.engine.restore import Restorer, all_valid
from cermin.errors import CerminError
from cermin.format.names import valid_nodes
from cermin.format.records import DIR, FILE, NODE_TYPES, SYMLINK, Node

MTIME = 1_600_000_000_000_000_000


def _big_tree(root) -> None:
    """More entries than one batch holds, hard links across directories and batches, a read-only
    directory full of files, empty files, a sparse file."""
    os.makedirs(root / "many")
    for i in range(700):
        (root / "many" / f"f{i:04}").write_bytes(b"%d\n" % i * (i % 7))
    os.makedirs(root / "links" / "a")
    os.makedirs(root / "links" / "b")
    for i in range(300):
        p = root / "links" / "a" / f"l{i}"
        p.write_bytes(b"linked %d\n" % i)
        os.link(p, root / "links" / "b" / f"l{i}")
    ro = root / "ro"
    ro.mkdir()
    for i in range(600):
        (ro / f"e{i}").write_bytes(b"")
    os.utime(ro, ns=(MTIME, MTIME))
    os.chmod(ro, 0o555)
    make_rich_tree(str(root / "rich"))
    with open(root / "big", "wb") as f:  # more than a worker's read window: streamed window by window
        f.write(os.urandom(restorework.WINDOW + 3 * 1024 * 1024))
        f.write(b"\0" * (2 * 1024 * 1024))
        f.write(b"tail")


@pytest.mark.parametrize("local", [True, False], ids=["own-reads", "reads-through-parent"])
def test_workers_reading_packs_or_served_by_the_parent_restore_the_same_tree(local_repo, tmp_path, monkeypatch, local):
    """Workers read a local store themselves; from a store that cannot be used after fork they ask
    the parent (backend/forked.py): the same restore either way."""
    src = tmp_path / "src"
    _big_tree(src)
    sid = do_backup(local_repo, src).snapshot_id
    repo = reopen(local_repo.backend)
    monkeypatch.setattr(restorework, "fork_safe", lambda backend: local)
    started = []
    orig = Restorer._start
    monkeypatch.setattr(Restorer, "_start", lambda self, tfd: (orig(self, tfd), started.append(self._pool))[0])
    served: list[tuple] = []
    real_answer = forked._answer
    monkeypatch.setattr(forked, "_answer", lambda b, req: served.append(req) or real_answer(b, req))
    out = tmp_path / "out"
    before = set(threading.enumerate())  # another test's servers may still be ending
    s = do_restore(repo, sid, out, verify=True, workers=2)
    assert not s.errors, s.errors
    assert isinstance(started[0], restorework.ProcessPool)
    assert bool(served) is not local  # the parent made the workers' reads
    assert not [t for t in set(threading.enumerate()) - before if t.name == "cermin-child-reads"]
    assert s.files == s.verified_files + 301  # the second copy of each hard link (300 + 1 in rich) is a link
    restored = out / str(src).lstrip("/")
    assert_same_tree(src, restored)
    assert stat.S_IMODE(os.stat(restored / "ro").st_mode) == 0o555
    assert os.stat(restored / "ro").st_mtime_ns == MTIME  # set after the last entry inside was made
    a, b = restored / "links" / "a", restored / "links" / "b"
    assert all(os.stat(a / f"l{i}").st_ino == os.stat(b / f"l{i}").st_ino for i in range(300))


def test_hostile_sizes_and_missing_blobs_fail_only_their_file(local_repo, hostile, tmp_path):
    """A file whose size understates its content, one that overstates it and one naming a blob that
    is not in the repository: each is an error of its own; the batch's other files restore."""
    import msgspec

    blobs = [hostile.file(b"x", bytes([65 + i]) * 70_000) for i in range(3)]
    content = b"".join(b.content for b in blobs)
    good = [hostile.file(b"g%d" % i, b"good %d\n" % i) for i in range(50)]
    under = msgspec.structs.replace(blobs[0], name=b"under", content=content, size=0)
    over = msgspec.structs.replace(blobs[0], name=b"over", content=content, size=2**62)
    missing = msgspec.structs.replace(blobs[0], name=b"missing", content=blobs[1].content + os.urandom(32))
    sid = hostile.snapshot([*good[:25], under, over, missing, *good[25:]])
    s = do_restore(reopen(local_repo.backend), sid, tmp_path / "out", workers=2)
    errors = sorted(s.errors)
    assert len(errors) == 3, errors
    assert errors[0].startswith("/missing: blob ") and errors[0].endswith("is not in the index (missing data)")
    assert errors[1] == f"/over: content is {3 * 70_000} bytes, expected {2**62}"
    assert errors[2] == f"/under: content is {3 * 70_000} bytes, expected 0"
    for i in range(50):
        assert (tmp_path / "out" / f"g{i}").read_bytes() == b"good %d\n" % i


def _one_file_snapshot(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(b"x" * i)
    sid = do_backup(local_repo, src).snapshot_id
    return reopen(local_repo.backend), sid


def _no_children_left(pids) -> None:
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _record_pids(monkeypatch) -> list[int]:
    pids: list[int] = []
    orig = restorework.ProcessPool.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        pids.extend(self.pids)

    monkeypatch.setattr(restorework.ProcessPool, "__init__", init)
    return pids


def test_a_killed_worker_fails_the_restore_with_one_line(local_repo, tmp_path, monkeypatch):
    repo, sid = _one_file_snapshot(local_repo, tmp_path)
    pids = _record_pids(monkeypatch)
    monkeypatch.setattr(restorework.Writer, "run", lambda self, g, f: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(CerminError) as e:
        do_restore(repo, sid, tmp_path / "out", workers=2)
    msg = str(e.value)
    assert "\n" not in msg and "restore worker" in msg and "killed by signal 9 (SIGKILL)" in msg, msg
    assert "incomplete" in msg
    _no_children_left(pids)


def test_a_failing_worker_fails_the_restore(local_repo, tmp_path, monkeypatch):
    repo, sid = _one_file_snapshot(local_repo, tmp_path)
    pids = _record_pids(monkeypatch)

    def boom(self, groups, fds):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(restorework.Writer, "run", boom)
    with pytest.raises(CerminError, match="restore worker failed: RuntimeError: unexpected"):
        do_restore(repo, sid, tmp_path / "out", workers=2)
    _no_children_left(pids)


def test_interrupt_stops_the_workers(local_repo, tmp_path, monkeypatch):
    """Ctrl-C in the parent (KeyboardInterrupt while it waits for results) kills the workers."""
    repo, sid = _one_file_snapshot(local_repo, tmp_path)
    pids = _record_pids(monkeypatch)
    monkeypatch.setattr(restorework.Writer, "run", lambda self, g, f: signal.pause())  # busy forever

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Restorer, "_collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        do_restore(repo, sid, tmp_path / "out", workers=2)
    assert pids
    _no_children_left(pids)


def test_cli_reports_a_killed_worker(initialized_cli, tmp_path):
    """Through the command: SIGKILL to a worker while it restores ends cermin with exit 1 and one
    error line (the worker is found by its parent's pid)."""
    import subprocess
    import time

    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3000):
        (src / f"f{i}").write_bytes(b"")
    cli("backup", str(src))
    from conftest import cermin_exe

    env = dict(cli.env, CERMIN_PASSWORD=PASSWORD)
    p = subprocess.Popen(
        [*cermin_exe(), "-r", cli.repo, "restore", "latest", "--target", str(tmp_path / "out")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Slow the workers down enough to catch one: stop the parent's children as soon as they exist.
    killed = False
    deadline = time.monotonic() + 30
    while not killed and time.monotonic() < deadline and p.poll() is None:
        try:
            kids = open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()
        except OSError:
            break
        if kids:
            os.kill(int(kids[0]), signal.SIGKILL)
            killed = True
        time.sleep(0.001)
    out, err = p.communicate(timeout=60)
    if not killed:
        pytest.skip("the restore finished before a worker could be caught")
    lines = err.decode().strip().splitlines()
    assert p.returncode == 1, err
    assert "Traceback" not in err.decode()
    assert any("restore worker" in line and "killed by signal 9" in line for line in lines), lines


# ---- the tree-wide name check ------------------------------------------------------------------
_names = st.sampled_from([b"a", b"b", b"c", b"", b".", b"..", b"x/y", b"n\x00ul", b"\xff\xfe", b"...", b"d"])
_types = st.sampled_from([*NODE_TYPES, "hardlink", ""])
_targets = st.sampled_from([b"", b"t", b"bad\x00", b"/abs"])


@st.composite
def _nodes(draw):
    out = []
    for _ in range(draw(st.integers(0, 8))):
        t = draw(_types)
        out.append(Node(name=draw(_names), type=t, target=draw(_targets) if t == SYMLINK else b""))
    return out


@settings(max_examples=400, deadline=None)
@given(_nodes())
def test_all_valid_agrees_with_valid_nodes(nodes):
    bad: list = []
    kept = valid_nodes(nodes, lambda n, why: bad.append(why))
    assert all_valid(nodes) == (not bad and kept == nodes)


def test_all_valid_refuses_names_that_are_not_bytes():
    assert not all_valid([Node(name="a", type=FILE)])  # type: ignore[arg-type]
    assert not all_valid([Node(name=b"a", type=DIR), Node(name=bytearray(b"b"), type=FILE)])  # type: ignore[arg-type]
    assert not all_valid([Node(name=b"a", type=SYMLINK, target="t")])  # type: ignore[arg-type]
    assert all_valid([Node(name=b"a", type=FILE), Node(name=b"b", type=SYMLINK, target=b"t")])


def test_batches_hold_bounded_directories(local_repo, tmp_path):
    """Many small directories: a batch carries at most MAX_FDS directory fds."""
    src = tmp_path / "src"
    for i in range(200):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f").write_bytes(b"%d" % i)
    sid = do_backup(local_repo, src).snapshot_id
    sizes: list[int] = []
    orig = restorework.ProcessPool.send

    def send(self, w, no, groups, fds):
        sizes.append(len(fds))
        return orig(self, w, no, groups, fds)

    mp = pytest.MonkeyPatch()
    mp.setattr(restorework.ProcessPool, "send", send)
    try:
        s = do_restore(reopen(local_repo.backend), sid, tmp_path / "out", workers=2)
    finally:
        mp.undo()
    assert not s.errors and s.files == 200
    assert sizes and max(sizes) <= restorework.MAX_FDS
    assert restore_mod.OPEN_BATCHES * restorework.MAX_FDS < 1024  # far below the usual fd limit


def test_large_batches_and_large_results_never_deadlock(local_repo, hostile, tmp_path, monkeypatch):
    """Batches larger than a socket buffer (entries with big xattrs) while the workers answer with
    results larger than one (many long messages): the parent reads results while it sends, so
    neither side waits on the other forever."""
    big = [(b"user.pad", b"x" * 16_000)]
    files = [hostile.file(b"f%04d" % i, b"%d" % i, xattrs=big) for i in range(1200)]
    sid = hostile.snapshot(files)
    orig = restorework.Writer.run

    def chatty(self, groups, fds):
        res = orig(self, groups, fds)
        return (*res[:5], [*res[5], *(["w" * 200] * 20_000)])  # ~4 MB of warnings per batch

    monkeypatch.setattr(restorework.Writer, "run", chatty)

    def hung(signum, frame):
        raise TimeoutError("the restore hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        s = do_restore(reopen(local_repo.backend), sid, tmp_path / "out", workers=2, no_xattrs=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert not s.errors and s.files == 1200
    assert len(s.warnings) >= 20_000


def test_a_restore_leaves_a_freeze_in_place(local_repo, tmp_path):
    """An agent restores while a backup of the same process holds the collector frozen: the restore's
    fork freezes too, and does not undo the backup's freeze afterwards."""
    import gc

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 5000)
    sid = do_backup(local_repo, src).snapshot_id
    gc.freeze()
    try:
        assert not do_restore(reopen(local_repo.backend), sid, tmp_path / "out", workers=2).errors
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_directory_s_entries_without_data_stay_with_one_worker(local_repo, tmp_path, monkeypatch):
    """Empty files and symlinks cost a create each: two workers creating in one directory contend for
    its lock, so a directory's such entries go to one worker (but the end of one that shares a batch
    with the next directory's first ones)."""
    src = tmp_path / "src"
    for d in range(4):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(700):
            (src / f"d{d}" / f"e{i}").write_bytes(b"")
        for i in range(100):
            os.symlink(f"e{i}", src / f"d{d}" / f"l{i}")
    sid = do_backup(local_repo, src).snapshot_id
    sent: list[tuple[int, list]] = []
    orig = restorework.ProcessPool.send
    monkeypatch.setattr(
        restorework.ProcessPool,
        "send",
        lambda self, w, no, groups, fds: (
            sent.append((w, [(g[2], len(g[4])) for g in groups])),
            orig(self, w, no, groups, fds),
        )[1],
    )
    s = do_restore(reopen(local_repo.backend), sid, tmp_path / "out", workers=2)
    assert not s.errors
    per: dict[bytes, dict[int, int]] = {}
    for w, groups in sent:
        for d, n in groups:
            per.setdefault(d, {}).setdefault(w, 0)
            per[d][w] += n
    big = {d: ws for d, ws in per.items() if sum(ws.values()) == 800}
    assert len(big) == 4, per
    assert all(max(ws.values()) >= 800 - 256 for ws in big.values()), big  # at most one batch elsewhere
    assert len({w for w, _ in sent}) == 2  # both workers worked, on different directories
    assert_same_tree(src, tmp_path / "out" / str(src).lstrip("/"))
