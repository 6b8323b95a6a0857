"""The backup's worker processes (engine/backup/workers.py): a worker that dies or fails stops the backup
with a one-line error and commits nothing; no worker outlives its backup; large files stream through."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import reopen
from helpers import do_backup, do_restore

from cermin.backend.base import Kind
from cermin.engine.backup import workers as workers_mod
from cermin.engine.check import run_check
from cermin.engine.treewalk import walk
from cermin.errors import CerminError


def _children() -> set[int]:
    """Live (not yet reaped) child processes of this process."""
    me = str(os.getpid())
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                out.add(int(pid))
    return out


def _tree(root, files: int = 300) -> None:
    for d in range(3):
        os.makedirs(root / f"d{d}", exist_ok=True)
        for i in range(files // 3):
            (root / f"d{d}" / f"f{i}").write_bytes(b"%d-%d " % (d, i) * 300)


def _failing_read(monkeypatch, how):
    """Fault injection inside the forked worker: reading a file named "boom" runs `how`."""
    real = workers_mod.read_one

    def read_one(cutter, dfd, name, size, blocks, emit):
        if name == b"boom":
            how()
        return real(cutter, dfd, name, size, blocks, emit)

    monkeypatch.setattr(workers_mod, "read_one", read_one)


@pytest.mark.parametrize(
    "how, message",
    [
        (lambda: os.kill(os.getpid(), signal.SIGKILL), "exited unexpectedly (killed by signal 9)"),
        (lambda: (_ for _ in ()).throw(MemoryError("out of memory")), "backup worker failed: MemoryError"),
    ],
    ids=["killed", "raised"],
)
def test_a_failing_worker_stops_the_backup_and_commits_nothing(local_repo, tmp_path, monkeypatch, how, message):
    src = tmp_path / "src"
    _tree(src)
    first = do_backup(local_repo, src)
    (src / "d1" / "boom").write_bytes(b"x" * 5000)
    _failing_read(monkeypatch, how)
    before = _children()
    with pytest.raises(CerminError) as e:
        do_backup(local_repo, src)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert _children() == before, "every worker is reaped"
    repo = reopen(local_repo)
    assert [n for n, _ in repo.backend.list(Kind.SNAPSHOT)] == [first.snapshot_id]
    assert not run_check(repo, read_data=True).errors
    monkeypatch.undo()
    again = do_backup(repo, src)
    assert not again.errors and again.snapshot.summary.files_new == 1


def test_no_worker_outlives_its_backup(local_repo, tmp_path):
    src = tmp_path / "src"
    _tree(src)
    before = _children()
    s = do_backup(local_repo, src, workers=3)
    assert not s.errors and s.snapshot.summary.files_new == 300
    assert _children() == before


def test_large_and_empty_files_stream_through_workers(local_repo, tmp_path):
    """A file larger than one read (streamed in parts, chunks sent as they are made), empty files
    (finished without a worker) and duplicates across workers: restored byte for byte, stored once."""
    src = tmp_path / "src"
    os.makedirs(src)
    big = os.urandom(21 * 1024 * 1024)
    (src / "big").write_bytes(big)
    (src / "big-copy").write_bytes(big)
    for i in range(50):
        (src / f"empty{i}").write_bytes(b"")
    s = do_backup(local_repo, src, workers=2)
    assert not s.errors and s.snapshot.summary.files_new == 52
    assert s.snapshot.summary.data_added_raw <= len(big)
    r = do_restore(local_repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
    out = tmp_path / "out" / str(src).lstrip("/")
    assert (out / "big").read_bytes() == big and (out / "big-copy").read_bytes() == big
    assert all((out / f"empty{i}").stat().st_size == 0 for i in range(50))


def test_open_files_handed_out_stay_under_the_limit(local_repo, tmp_path, monkeypatch):
    """Descriptors in flight count against RLIMIT_NOFILE: with room for one batch, the walker waits for
    results before it hands out the next, and the backup completes."""
    from cermin.engine.backup import filesaver as filesaver_mod

    src = tmp_path / "src"
    _tree(src)
    monkeypatch.setattr(filesaver_mod, "fds_in_flight_limit", lambda: filesaver_mod.BATCH_FILES)
    most = []
    real = filesaver_mod.FileSaver.submit_batch

    def submit_batch(self):
        real(self)
        most.append(self._out)

    monkeypatch.setattr(filesaver_mod.FileSaver, "submit_batch", submit_batch)
    s = do_backup(local_repo, src, workers=4)
    assert not s.errors and s.snapshot.summary.files_new == 300
    assert most and max(most) <= filesaver_mod.BATCH_FILES


def test_a_file_failing_midway_leaves_no_blob_unstored(local_repo, tmp_path, monkeypatch):
    """A large file whose read fails after some chunks were cut (EIO on a failing disk, NFS): a later
    identical file in the same worker must still store those chunks (they were never sent)."""
    import errno
    import io
    import types

    from cermin.engine.backup import chunks as chunks_mod

    class Failing(io.FileIO):
        def readinto(self, b):
            if os.readlink(f"/proc/self/fd/{self.fileno()}").endswith("/a/big") and self.tell() >= 12 << 20:
                raise OSError(errno.EIO, "Input/output error")
            return super().readinto(b)

    monkeypatch.setattr(chunks_mod, "io", types.SimpleNamespace(FileIO=Failing))
    src = tmp_path / "src"
    os.makedirs(src / "a")
    os.makedirs(src / "b")
    data = os.urandom(20 << 20)
    (src / "a" / "big").write_bytes(data)
    (src / "b" / "copy").write_bytes(data)
    s = do_backup(local_repo, src, workers=1)
    assert len(s.errors) == 1 and "a/big: read error" in s.errors[0]
    repo = reopen(local_repo)
    assert not run_check(repo, read_data=True).errors
    r = do_restore(repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
    assert (tmp_path / "out" / str(src).lstrip("/") / "b" / "copy").read_bytes() == data


def test_a_file_that_says_it_is_empty_is_read(local_repo, tmp_path):
    """procfs (and FUSE with direct_io) report size 0 for files with content: they are read, not
    assumed empty, and saved as read with a warning."""
    s = do_backup(local_repo, "/proc/self/status")
    nodes = [n for p, n in walk(local_repo, s.snapshot.tree) if p.endswith(b"/status")]
    assert len(nodes) == 1 and nodes[0].size > 0
    assert s.snapshot.summary.changed_during_read == 1


def test_a_worker_gone_between_batches_is_a_clear_error(local_repo, tmp_path, monkeypatch):
    """A worker killed between two batches (the OOM killer): the next hand-off fails with the worker's
    fate in one line, not a raw BrokenPipeError (which the CLI would take for a closed stdout)."""
    from cermin.engine.backup import filesaver as filesaver_mod

    src = tmp_path / "src"
    _tree(src, files=600)
    real = filesaver_mod.FileSaver.submit_batch
    sent = []

    def submit_batch(self):
        if len(sent) == 2 and self._pool is not None:
            for pid in self._pool.pids:
                os.kill(pid, signal.SIGKILL)
            for pid in self._pool.pids:
                os.waitpid(pid, 0)
            self._pool.pids = [-1] * len(self._pool.pids)
        sent.append(1)
        real(self)

    monkeypatch.setattr(filesaver_mod.FileSaver, "submit_batch", submit_batch)
    with pytest.raises(CerminError) as e:
        do_backup(local_repo, src, workers=2)
    assert "exited unexpectedly" in str(e.value) and "\n" not in str(e.value)


def test_two_backups_in_one_process_stop_their_workers_cleanly(tmp_path, monkeypatch):
    """The agent runs backups on threads of one process: a worker of one must not hold the other's
    sockets (it would never see EOF and be killed after a timeout)."""
    import threading

    from conftest import FAST_KDF, PASSWORD

    from cermin.backend.local import LocalBackend
    from cermin.repo.repository import Repository

    killed = []
    real_kill = os.kill
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig) or real_kill(pid, sig))
    results, threads = [], []
    for name in ("a", "b"):
        src = tmp_path / name
        _tree(src)
        repo = Repository.init(LocalBackend(str(tmp_path / f"repo-{name}")), PASSWORD.encode(), kdf=FAST_KDF)
        threads.append(threading.Thread(target=lambda r=repo, s=src: results.append(do_backup(r, s, workers=2))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(not r.errors for r in results)
    assert signal.SIGKILL not in killed, "every worker saw EOF and exited on its own"


def test_streamed_chunks_are_fastcdc_s_in_bounded_groups(monkeypatch):
    """A stream is cut in the cutter's own buffer (refilled many times here, by short reads and by
    `read` alone): the boundaries are FastCDC's `cut_stream` ones, and chunks reach `emit` in groups of
    at most EMIT_BYTES of payload unless one chunk alone is larger."""
    import io
    import random

    from conftest import FAST_KDF, PASSWORD

    from cermin.backend.memory import MemoryBackend
    from cermin.engine.backup import chunks as chunks_mod
    from cermin.repo.repository import Repository

    repo = Repository.init(MemoryBackend(), PASSWORD.encode(), kdf=FAST_KDF, chunker_params=(1024, 4096, 16384))
    monkeypatch.setattr(chunks_mod, "WHOLE_READ_LIMIT", 40_000)  # the stream buffer: 40,000 bytes
    monkeypatch.setattr(chunks_mod, "EMIT_BYTES", 20_000)
    rnd = random.Random(5)
    data = rnd.randbytes(300_000) + bytes(50_000) + rnd.randbytes(123_457)

    class ShortReads:
        def __init__(self) -> None:
            self.f = io.BytesIO(data)

        def read(self, n: int) -> bytes:
            return self.f.read(rnd.randint(1, n))

    want = [repo.blob_id(bytes(c.data)) for c in repo.make_chunker().cut_stream(io.BytesIO(data))]
    assert len(want) > 20
    cutter = chunks_mod.Cutter(repo, False, lambda bid: False)
    try:
        for stream, expect in ((io.BytesIO(data), want), (ShortReads(), want), (io.BytesIO(b""), [])):
            groups: list[list] = []
            rest, size, _ = cutter.stream(stream, groups.append)
            groups.append(rest)
            assert [bid for g in groups for bid, _, _ in g] == expect
            assert size == (len(data) if expect else 0)
            for g in groups[:-1]:
                assert len(g) == 1 or sum(len(p) for _, _, p in g) <= chunks_mod.EMIT_BYTES
    finally:
        cutter.close()


def test_frames_larger_than_the_read_buffer_arrive_whole(monkeypatch):
    """The parent's reader: frames of every size, a few larger than its buffer, sent in odd pieces,
    decode in order; a large one does not stay in the buffer."""
    import socket
    import threading

    import msgspec

    monkeypatch.setattr(workers_mod, "READ_BUFFER", 1000)
    a, b = socket.socketpair(socket.AF_UNIX)
    msgs = [workers_mod.Part(i, i, [(b"id", n, bytes([i]) * n)]) for i, n in enumerate([10, 990, 3000, 5, 70_000, 1])]
    msgs.append(workers_mod.Done(99, [workers_mod.FileResult(size=7)]))
    wire = b"".join(workers_mod.FRAME.pack(len(m)) + m for m in map(msgspec.msgpack.encode, msgs))

    def writer() -> None:
        i = 0
        while i < len(wire):
            step = (i * 7919) % 1500 + 1
            a.sendall(wire[i : i + step])
            i += step
        a.close()

    t = threading.Thread(target=writer)
    t.start()
    r = workers_mod._Reader(b)
    got = []
    while r.fill():
        got += r.frames()
        assert len(r.buf) == 1000
    t.join()
    b.close()
    assert got == msgs and r.big is None


def test_an_outsized_frame_and_the_small_ones_after_it(local_repo, tmp_path):
    """One worker sends a whole-read file of nearly WHOLE_READ_LIMIT incompressible bytes in its batch's
    `Done` (larger than the parent's read buffer and than what a worker keeps of its frame buffer), then
    small files: all restored byte for byte."""
    from cermin.engine.backup import chunks as chunks_mod

    src = tmp_path / "src"
    os.makedirs(src)
    big = os.urandom(chunks_mod.WHOLE_READ_LIMIT - 4096)
    (src / "a-big").write_bytes(big)
    for i in range(20):
        (src / f"b{i}").write_bytes(os.urandom(1000 + i))
    s = do_backup(local_repo, src, workers=1)
    assert not s.errors and s.snapshot.summary.files_new == 21
    r = do_restore(local_repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
    out = tmp_path / "out" / str(src).lstrip("/")
    assert (out / "a-big").read_bytes() == big
    assert all((out / f"b{i}").read_bytes() == (src / f"b{i}").read_bytes() for i in range(20))


def test_a_backup_leaves_the_collector_as_it_found_it(local_repo, tmp_path, monkeypatch):
    """The agent runs backups in a long-lived process: thresholds and frozen objects are restored after
    a backup, a failed one too; the run itself ran with its start frozen and a larger young threshold."""
    import gc

    from cermin.engine.backup import filesaver as filesaver_mod

    src = tmp_path / "src"
    _tree(src, 30)
    before = gc.get_threshold(), gc.get_freeze_count()
    seen = []
    real = filesaver_mod.FileSaver.start

    def start(self):
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        real(self)

    monkeypatch.setattr(filesaver_mod.FileSaver, "start", start)
    assert not do_backup(local_repo, src, workers=2).errors
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
    assert seen[0][0][0] >= 20_000 and seen[0][1] > 0

    def fail(self):
        raise CerminError("stop")

    monkeypatch.setattr(filesaver_mod.FileSaver, "start", fail)
    with pytest.raises(CerminError, match="stop"):
        do_backup(local_repo, src, workers=2)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_overlapping_backups_leave_the_collector_as_the_first_found_it():
    """Two backups in one agent process, the first finishing while the second runs: the second keeps
    its settings until it ends, and then the process is as before either started."""
    import gc

    from cermin.engine.backup import _collector_settled

    before = gc.get_threshold(), gc.get_freeze_count()
    a, b = _collector_settled(), _collector_settled()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    assert gc.get_threshold()[0] >= 20_000 and gc.get_freeze_count() > 0
    b.__exit__(None, None, None)
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_the_read_buffer_is_handed_back_after_a_large_file(local_repo, tmp_path):
    """After a file larger than KEEP_BUFFER, the buffer's pages past it go back to the kernel (they
    read as zeros again), and the next files are cut as before."""
    from cermin.engine.backup import chunks as chunks_mod

    data = os.urandom(3 << 20)
    small = os.urandom(5000)
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "small").write_bytes(small)
    cutter = chunks_mod.Cutter(local_repo, False, lambda bid: False)
    try:
        for name, want in (("big", data), ("small", small), ("big", data)):
            fd = os.open(tmp_path / name, os.O_RDONLY)
            try:
                chunks, n, _ = cutter.whole(fd, None)
            finally:
                os.close(fd)
            assert n == len(want) and chunks and sum(raw for _, raw, _ in chunks) == len(want)
            assert chunks[0][0] == local_repo.blob_id(want[: chunks[0][1]])
            kept = want[: chunks_mod.KEEP_BUFFER]
            assert cutter._buf[: len(kept)] == kept
            assert not any(cutter._buf[chunks_mod.KEEP_BUFFER : len(want)])
    finally:
        cutter.close()


def test_a_file_renamed_over_after_the_stat_is_reported_changed(local_repo, tmp_path, monkeypatch):
    """Another file of the same size and times renamed over the name between the walker's stat and
    the worker's open: its bytes are saved as read, with a warning, and the next backup reads it again
    (the node keeps the stat's inode, which no longer matches)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim").write_bytes(b"a" * 4000)
    (tmp_path / "other").write_bytes(b"b" * 4000)
    st = os.stat(src / "victim")
    os.utime(tmp_path / "other", ns=(st.st_atime_ns, st.st_mtime_ns))
    real = workers_mod.read_one

    def read_one(cutter, dfd, name, size, blocks, emit):
        if name == b"victim" and os.path.exists(tmp_path / "other"):
            os.rename(tmp_path / "other", src / "victim")
        return real(cutter, dfd, name, size, blocks, emit)

    monkeypatch.setattr(workers_mod, "read_one", read_one)
    s = do_backup(local_repo, src, workers=2)
    assert not s.errors
    assert s.snapshot.summary.changed_during_read == 1, s.warnings
    assert any("victim: changed while it was read" in w for w in s.warnings)
    again = do_backup(reopen(local_repo), src, workers=2)
    assert again.snapshot.summary.files_changed == 1 and again.snapshot.summary.files_unmodified == 0


@pytest.fixture
def tmpfs_dir():
    """A directory on tmpfs (/dev/shm), where device numbers are anonymous (major 0)."""
    import shutil
    import tempfile

    from cermin.engine.fstype import fs_magic

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    fd = os.open("/dev/shm", os.O_PATH)
    try:
        if fs_magic(fd) != 0x01021994:
            pytest.skip("/dev/shm is not tmpfs")
    finally:
        os.close(fd)
    d = tempfile.mkdtemp(prefix="cermin-test-", dir="/dev/shm")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _submitted(monkeypatch) -> list[bytes]:
    from cermin.engine.backup import filesaver as filesaver_mod

    names: list[bytes] = []
    real = filesaver_mod.FileSaver.submit

    def submit(self, dfd, name, *a, **kw):
        names.append(name)
        return real(self, dfd, name, *a, **kw)

    monkeypatch.setattr(filesaver_mod.FileSaver, "submit", submit)
    return names


def test_empty_files_on_tmpfs_are_finished_without_a_worker(local_repo, tmpfs_dir, tmp_path, monkeypatch):
    """tmpfs (like btrfs and ZFS) has anonymous device numbers but exact sizes: its empty files are
    not opened by a worker (200,000 of them cost a worker round trip each), and restore as they were."""
    os.makedirs(os.path.join(tmpfs_dir, "d"))
    for i in range(40):
        open(os.path.join(tmpfs_dir, "d", f"empty{i}"), "wb").close()
    with open(os.path.join(tmpfs_dir, "d", "full"), "wb") as f:
        f.write(b"content")
    names = _submitted(monkeypatch)
    s = do_backup(local_repo, tmpfs_dir, workers=1)
    assert not s.errors and s.snapshot.summary.files_new == 41
    assert names == [b"full"]
    r = do_restore(local_repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors
    out = tmp_path / "out" / tmpfs_dir.lstrip("/") / "d"
    assert sorted(os.listdir(out)) == sorted([f"empty{i}" for i in range(40)] + ["full"])
    assert (out / "full").read_bytes() == b"content" and (out / "empty7").stat().st_size == 0


def test_size_zero_files_of_an_unlisted_file_system_are_read(local_repo, tmpfs_dir, monkeypatch):
    """A file system whose type is not known to report sizes truthfully (procfs, FUSE, NFS; here
    tmpfs taken for one through fstatfs) has its size-0 files read by a worker."""
    from cermin.engine import fstype

    monkeypatch.setattr(fstype, "fs_magic", lambda fd: 0x9FA0)  # PROC_SUPER_MAGIC
    for i in range(5):
        open(os.path.join(tmpfs_dir, f"empty{i}"), "wb").close()
    names = _submitted(monkeypatch)
    s = do_backup(local_repo, tmpfs_dir, workers=1)
    assert not s.errors and sorted(names) == [b"empty%d" % i for i in range(5)]


def test_a_size_zero_file_is_judged_by_its_directory_or_itself(tmpfs_dir):
    """The directory being walked (its fd pins the file system) says whether sizes are exact; a file
    on another device than its directory is looked up through the file, and one no longer on the
    device the walker saw (replaced since) is read."""
    from cermin.engine.fstype import EmptyFiles

    open(os.path.join(tmpfs_dir, "e"), "wb").close()
    st = os.stat(os.path.join(tmpfs_dir, "e"))
    dfd = os.open(tmpfs_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        empty, job = EmptyFiles(), object()
        assert empty.known(st, dfd, b"e", job)
        grown = os.stat_result((*st[:6], 1, *st[7:]))
        assert not empty.known(grown, dfd, b"e", job)
        elsewhere = os.stat_result((*st[:2], os.makedev(0, 4095), *st[3:]))  # not what is there now
        assert not empty.known(elsewhere, dfd, b"e", job)
        assert not empty.known(elsewhere, dfd, b"missing", job)
    finally:
        os.close(dfd)


_MOUNTS = """
import os, subprocess, sys
from cermin.engine.fstype import EmptyFiles

def known(d, name, job):
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return empty.known(os.stat(name, dir_fd=fd, follow_symlinks=False), fd, name.encode(), job)
    finally:
        os.close(fd)

a, b = sys.argv[1], sys.argv[2]
empty = EmptyFiles()
subprocess.run(["mount", "-t", "tmpfs", "none", a], check=True)
open(os.path.join(a, "e"), "wb").close()
tmpfs_dev = os.stat(a).st_dev
print("tmpfs", known(a, "e", object()))
subprocess.run(["umount", a], check=True)
subprocess.run(["mount", "-t", "proc", "proc", a], check=True)  # usually gets the freed number
print("reused", os.stat(a).st_dev == tmpfs_dev)
print("proc", known(a, "version", object()))
subprocess.run(["mount", "-t", "tmpfs", "none", b], check=True)
open(os.path.join(b, "f"), "wb").close()
subprocess.run(["mount", "--bind", os.path.join(a, "version"), os.path.join(b, "f")], check=True)
print("bound", known(b, "f", object()))
"""


def test_size_zero_files_of_procfs_are_read_however_mounted(tmp_path):
    """Run in a mount namespace of its own (needs root): a procfs mounted where a tmpfs was, with the
    tmpfs's freed device number, and a procfs file bind-mounted into a tmpfs directory; neither is
    taken for empty."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1)")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _MOUNTS, str(a), str(b)],
        capture_output=True,
        text=True,
    )
    if r.returncode and "unshare" in r.stderr:
        pytest.skip(f"no mount namespace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    out = dict(line.split() for line in r.stdout.splitlines())
    assert out["tmpfs"] == "True"
    assert out["proc"] == "False" and out["bound"] == "False", out
