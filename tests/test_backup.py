"""Backup and restore through the library: metadata round trip, change detection, filters."""

from __future__ import annotations

import io
import os

import pytest
from conftest import reopen
from helpers import allocated_bytes, assert_same_tree, make_rich_tree

from cermin.backend.base import Kind
from cermin.engine import fsread
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.backup import filesaver as filesaver_mod
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.engine.treewalk import diff_trees, walk
from cermin.repo.snapshots import list_snapshots, resolve


def do_backup(repo, *paths, **kw):
    return run_backup(repo, BackupOptions(paths=[os.fsencode(p) for p in paths], **kw))


def do_restore(repo, snap_id, target, **kw):
    return run_restore(repo, resolve(repo, snap_id).snapshot, RestoreOptions(target=str(target), **kw))


def test_rich_tree_roundtrip(local_repo, tmp_path):
    src = tmp_path / "src"
    make_rich_tree(str(src))
    s = do_backup(local_repo, src)
    assert not s.errors and s.snapshot_id
    repo = reopen(local_repo)
    r = do_restore(repo, s.snapshot_id, tmp_path / "out", verify=True)
    assert not r.errors, r.errors
    restored = tmp_path / "out" / str(src).lstrip("/")
    assert_same_tree(src, restored)
    sparse = restored / "sparse"
    assert allocated_bytes(sparse) < 8 * 1024 * 1024, "sparse file restored sparse"
    assert os.stat(restored / "plain.txt").st_ino == os.stat(restored / "hardlink").st_ino


def test_unchanged_files_are_not_reread(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(50_000))
    first = do_backup(local_repo, src)
    assert first.snapshot.summary.files_new == 20
    reads = []
    orig = filesaver_mod.FileSaver._read_file
    filesaver_mod.FileSaver._read_file = lambda self, fd, *a: reads.append(1) or orig(self, fd, *a)
    try:
        second = do_backup(local_repo, src)
    finally:
        filesaver_mod.FileSaver._read_file = orig
    s = second.snapshot.summary
    assert reads == [] and s.files_unmodified == 20 and s.bytes_read == 0
    assert second.parent == first.snapshot_id
    assert second.snapshot.tree == first.snapshot.tree
    (src / "f3").write_bytes(b"changed")
    third = do_backup(local_repo, src)
    assert third.snapshot.summary.files_changed == 1 and third.snapshot.summary.files_unmodified == 19
    changes = list(diff_trees(local_repo, second.snapshot.tree, third.snapshot.tree))
    assert [(c, p.rsplit(b"/", 1)[1]) for c, p, _, _ in changes if c == "M"] == [("M", b"f3")]


def test_dedup_within_and_across_snapshots(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    blob = os.urandom(12 * 1024 * 1024)
    (src / "a").write_bytes(blob)
    (src / "b").write_bytes(blob)
    s = do_backup(local_repo, src).snapshot.summary
    assert s.data_added_raw <= len(blob)
    (src / "c").write_bytes(blob + b"tail")
    s2 = do_backup(local_repo, src).snapshot.summary
    # only the last chunk (at most the 4 MiB maximum) plus the tail is new
    assert s2.data_added_raw <= 4 * 1024 * 1024 + 4


def test_excludes_caches_and_dry_run(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "cache")
    os.makedirs(src / "keep" / "logs")
    (src / "cache" / "CACHEDIR.TAG").write_bytes(fsread.CACHEDIR_SIGNATURE + b"\n")
    (src / "cache" / "big").write_bytes(b"x" * 1000)
    (src / "keep" / "a.tmp").write_bytes(b"t")
    (src / "keep" / "a.txt").write_bytes(b"t")
    (src / "keep" / "logs" / "l").write_bytes(b"l")
    dry = do_backup(local_repo, src, dry_run=True)
    assert dry.snapshot_id is None
    assert list(local_repo.backend.list(Kind.SNAPSHOT)) == []
    assert list(local_repo.backend.list(Kind.DATA)) == [] and list(local_repo.backend.list(Kind.INDEX)) == []
    s = do_backup(local_repo, src, excludes=["*.tmp", "keep/logs"], exclude_caches=True)
    names = {p.rsplit(b"/", 1)[1] for p, _ in walk(local_repo, s.snapshot.tree)}
    assert b"a.txt" in names and b"CACHEDIR.TAG" in names
    assert not names & {b"a.tmp", b"logs", b"l", b"big"}


def test_restore_subtree_include_exclude(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "a" / "b")
    (src / "a" / "b" / "x.conf").write_bytes(b"x")
    (src / "a" / "y.txt").write_bytes(b"y")
    (src / "z.conf").write_bytes(b"z")
    sid = do_backup(local_repo, src).snapshot_id
    base = str(src)
    do_restore(local_repo, sid, tmp_path / "sub", subpath=os.fsencode(base + "/a"))
    assert sorted(os.listdir(tmp_path / "sub")) == ["b", "y.txt"]
    do_restore(local_repo, sid, tmp_path / "inc", includes=["*.conf"])
    got = sorted(
        os.path.relpath(os.path.join(d, f), tmp_path / "inc") for d, _, fs in os.walk(tmp_path / "inc") for f in fs
    )
    assert [g.rsplit("/", 1)[1] for g in got] == ["x.conf", "z.conf"]
    do_restore(local_repo, sid, tmp_path / "exc", excludes=["b"])
    assert not os.path.exists(tmp_path / "exc" / base.lstrip("/") / "a" / "b")
    assert os.path.exists(tmp_path / "exc" / base.lstrip("/") / "a" / "y.txt")
    do_restore(local_repo, sid, tmp_path / "one", subpath=os.fsencode(base + "/a/y.txt"))
    assert os.listdir(tmp_path / "one") == ["y.txt"]


def test_stdin_backup(local_repo, tmp_path):
    data = os.urandom(2_000_000)
    s = run_backup(local_repo, BackupOptions(stdin=io.BytesIO(data), stdin_filename="db.sql"))
    assert s.snapshot.paths == [b"db.sql"]
    ((path, node),) = walk(local_repo, s.snapshot.tree)
    assert path == b"/db.sql" and node.size == len(data)
    assert b"".join(local_repo.load_blob(b) for b in node.blob_ids()) == data


def test_file_vanishing_during_walk_marks_incomplete(local_repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "stays").write_bytes(b"1")
    (src / "goes").write_bytes(b"2")
    real_open = filesaver_mod.open_for_read

    def delete_then_open(name, dfd):  # fault injection: the file disappears after it was listed
        if name == b"goes":
            os.unlink(name, dir_fd=dfd)
        return real_open(name, dfd)

    monkeypatch.setattr(filesaver_mod, "open_for_read", delete_then_open)
    s = do_backup(local_repo, src)
    assert s.snapshot.incomplete and len(s.errors) == 1 and "goes" in s.errors[0] and "vanished" in s.errors[0]
    names = {p.rsplit(b"/", 1)[1] for p, _ in walk(local_repo, s.snapshot.tree)}
    assert b"stays" in names and b"goes" not in names
    assert s.snapshot_id in {n for n, _ in local_repo.backend.list(Kind.SNAPSHOT)}


def test_file_growing_during_read_is_reported(local_repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    os.makedirs(src)
    target = src / "log"
    target.write_bytes(os.urandom(3 * 1024 * 1024))
    real = filesaver_mod.FileSaver._store_whole

    def grow_while_reading(self, fd):  # fault injection: a writer appends while we read
        with open(target, "ab") as w:
            w.write(b"appended line\n" * 1000)
        return real(self, fd)

    monkeypatch.setattr(filesaver_mod.FileSaver, "_store_whole", grow_while_reading)
    s = do_backup(local_repo, src)
    assert s.snapshot.summary.changed_during_read == 1
    assert any("changed while it was read" in w for w in s.warnings)
    ((_, node),) = [(p, n) for p, n in walk(local_repo, s.snapshot.tree) if p.endswith(b"/log")]
    assert node.size == sum(local_repo.index.raw_length(b) for b in node.blob_ids())
    monkeypatch.setattr(filesaver_mod.FileSaver, "_store_whole", real)
    again = do_backup(local_repo, src)
    assert again.snapshot.summary.files_changed == 1, "a file that changed while read is read again"


def test_symlink_loops_are_stored_not_followed(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "d")
    os.symlink("b", src / "a")
    os.symlink("a", src / "b")
    os.symlink("..", src / "d" / "up")
    s = do_backup(local_repo, src)
    assert not s.errors
    do_restore(local_repo, s.snapshot_id, tmp_path / "out")
    out = tmp_path / "out" / str(src).lstrip("/")
    assert os.readlink(out / "a") == "b" and os.readlink(out / "d" / "up") == ".."


def test_snapshots_listed_and_resolved(local_repo, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    ids = [do_backup(local_repo, src, tags=[f"t{i}"]).snapshot_id for i in range(3)]
    refs = list_snapshots(local_repo)
    assert [r.id for r in refs] == ids
    assert resolve(local_repo, "latest").id == ids[-1]
    assert resolve(local_repo, ids[1][:8]).id == ids[1]
    assert [r.id for r in list_snapshots(local_repo, tags=("t1",))] == [ids[1]]


def test_unreadable_file_skipped_with_error(local_repo, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads anything; covered by the CLI test that drops privileges")
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "secret").write_bytes(b"s")
    os.chmod(src / "secret", 0)
    s = do_backup(local_repo, src)
    assert s.snapshot.incomplete and "secret" in s.errors[0]


def _bind(path) -> None:
    """Make a Unix socket at path, however long (bound under a short name, then renamed)."""
    import socket

    d = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind(f"/proc/self/fd/{d}/t")
        s.close()
        os.rename("t", os.path.basename(path), src_dir_fd=d, dst_dir_fd=d)
    finally:
        os.close(d)


def test_unix_sockets_are_recreated_with_metadata(local_repo, tmp_path):
    import stat

    src = tmp_path / "src"
    deep = src / ("d" * 120) / ("e" * 120)  # paths far beyond sun_path's 108 bytes
    deep.mkdir(parents=True)
    socks = [src / "s.sock", deep / ("long-socket-name-" + "x" * 200)]
    for i, p in enumerate(socks):
        _bind(str(p))
        os.chmod(p, 0o640 - 0o100 * i)
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i))
    s = do_backup(local_repo, src)
    repo = reopen(local_repo)
    out = tmp_path / "out"
    for _ in range(2):  # the second time over what the first created
        r = do_restore(repo, s.snapshot_id, out)
        assert not r.errors and not r.warnings, (r.errors, r.warnings)
        for i, p in enumerate(socks):
            st = os.lstat(out / str(p).lstrip("/"))
            assert stat.S_ISSOCK(st.st_mode), p
            assert stat.S_IMODE(st.st_mode) == 0o640 - 0o100 * i
            assert st.st_mtime_ns == 1_600_000_000_123_456_789 + i
        assert not [n for _, _, fs in os.walk(out) for n in fs if n.startswith(".cermin-sock-")]


def test_socket_restore_never_follows_a_planted_symlink(local_repo, tmp_path):
    import stat

    src = tmp_path / "src"
    src.mkdir()
    _bind(str(src / "sock"))
    s = do_backup(local_repo, src)
    repo = reopen(local_repo)
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    os.chmod(outside, 0o600)
    out = tmp_path / "out"
    where = out / str(src).lstrip("/")
    where.mkdir(parents=True)
    os.symlink(outside, where / "sock")
    r = do_restore(repo, s.snapshot_id, out)
    assert not r.errors, r.errors
    assert stat.S_ISSOCK(os.lstat(where / "sock").st_mode)
    assert outside.read_bytes() == b"keep" and stat.S_IMODE(os.stat(outside).st_mode) == 0o600


def test_socket_that_cannot_be_made_is_a_warning(local_repo, tmp_path, monkeypatch):
    from cermin.engine import fsmeta

    src = tmp_path / "src"
    src.mkdir()
    _bind(str(src / "sock"))
    (src / "f").write_bytes(b"f")
    s = do_backup(local_repo, src)
    repo = reopen(local_repo)
    monkeypatch.setattr(fsmeta, "proc_path", lambda d, n: b"/nonexistent-proc/" + n)  # as without /proc
    r = do_restore(repo, s.snapshot_id, tmp_path / "out")
    assert not r.errors and [w for w in r.warnings if "sock: socket not restored" in w]
    assert (tmp_path / "out" / str(src).lstrip("/") / "f").read_bytes() == b"f"
    assert not os.path.lexists(tmp_path / "out" / str(src).lstrip("/") / "sock")
