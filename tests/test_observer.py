"""engine/observer.py: backup observers: which events a backup sends, with what data, from which threads, and
what an observer's finish, mark or failure does to the snapshot."""

from __future__ import annotations

import io
import json
import os
import pickle
import threading
from collections import Counter

import msgspec
import pytest
from conftest import reopen

from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.backup import workers as workers_mod
from cermin.engine.observer import (
    BackupError,
    BackupObserver,
    DirectoryDone,
    FileRead,
    FileRemoved,
    FileUnchanged,
    StdinRead,
)
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.format.records import DIR, FILE
from cermin.repo.snapshots import resolve


class Recorder(BackupObserver):
    """Keeps every event, in arrival order, with the name of the thread that sent it."""

    def __init__(self, fields: dict | None = None) -> None:
        self.lock = threading.Lock()
        self.events: list = []
        self.threads: list[str] = []
        self.fields = fields or {}
        self.finished = None

    def _add(self, ev) -> None:
        with self.lock:
            self.events.append(ev)
            self.threads.append(threading.current_thread().name)

    file_read = file_unchanged = file_removed = directory = stdin = error = _add

    def finish(self, summary):
        self.finished = summary
        return self.fields

    def of(self, cls) -> dict[bytes, object]:
        out = {}
        for ev in self.events:
            if type(ev) is cls:
                key = ev.path if hasattr(ev, "path") else ev.name
                assert key not in out, f"{cls.__name__} twice for {key!r}"
                out[key] = ev
        return out


def backup(repo, src, *observers, **kw):
    return run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], observers=list(observers), **kw))


def text(n: int) -> bytes:
    return b"".join(b"line %d of a compressible text file\n" % i for i in range(n))


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "sub" / "deeper")
    (src / "text").write_bytes(text(40_000))
    (src / "noise").write_bytes(os.urandom(1_500_000))
    (src / "keep").write_bytes(b"unchanged\n")
    (src / "gone").write_bytes(b"to be deleted\n" * 10)
    (src / "sub" / "a").write_bytes(b"a")
    (src / "sub" / "deeper" / "b").write_bytes(b"b")
    os.symlink("keep", src / "link")
    return src


def test_new_files_are_read_with_sizes_and_fingerprint(local_repo, tree):
    rec = Recorder()
    s = backup(local_repo, tree, rec)
    assert not s.errors
    reads = rec.of(FileRead)
    root = os.fsencode(str(tree))
    assert set(reads) == {root + p for p in (b"/text", b"/noise", b"/keep", b"/gone", b"/sub/a", b"/sub/deeper/b")}
    assert all(ev.new and ev.previous_stored == -1 for ev in reads.values())
    txt, noise = reads[root + b"/text"], reads[root + b"/noise"]
    assert txt.size == txt.raw == (tree / "text").stat().st_size
    assert txt.mtime_ns == (tree / "text").stat().st_mtime_ns
    assert txt.stored < txt.raw / 5, "a text file compresses well"
    assert noise.raw == 1_500_000 and noise.stored >= noise.raw * 0.99, "random data is stored raw"
    assert len(noise.chunks) >= 1 and all(raw > 0 and stored > 0 for raw, stored in noise.chunks)
    assert txt.head == (tree / "text").read_bytes()[:16] and noise.head == (tree / "noise").read_bytes()[:16]
    # the noise's chunk does not compress: its head is estimated; the text's compresses: not estimated
    assert noise.head_entropy > 7.5 and txt.head_entropy == -1.0
    assert not rec.of(FileUnchanged) and not rec.of(FileRemoved)
    dirs = rec.of(DirectoryDone)
    assert dirs[root] == DirectoryDone(root, files=4, dirs=1, others=1, removed=0)
    assert dirs[root + b"/sub"].files == 1 and dirs[root + b"/sub"].dirs == 1
    assert root + b"/sub/deeper" in dirs


def test_second_backup_reports_changed_unchanged_and_removed(local_repo, tree):
    first_rec = Recorder()
    backup(local_repo, tree, first_rec)
    first = first_rec.of(FileRead)
    root = os.fsencode(str(tree))
    old = os.stat(tree / "text")
    with open(tree / "text", "ab") as f:
        f.write(b"one more line\n")
    os.unlink(tree / "gone")
    os.unlink(tree / "sub" / "deeper" / "b")
    os.rmdir(tree / "sub" / "deeper")
    (tree / "fresh").write_bytes(b"new\n")
    rec = Recorder()
    s = backup(local_repo, tree, rec)
    assert not s.errors and s.parent
    reads = rec.of(FileRead)
    assert set(reads) == {root + b"/text", root + b"/fresh"}
    changed = reads[root + b"/text"]
    assert not changed.new and changed.previous_size == old.st_size and changed.previous_mtime_ns == old.st_mtime_ns
    assert changed.previous_stored == first[root + b"/text"].stored, "the previous version's compressed size"
    assert changed.size == old.st_size + 14
    # A chunk already in the repository counts 0 stored bytes: only what changed was compressed.
    assert sum(stored for _, stored in changed.chunks) <= changed.stored
    assert reads[root + b"/fresh"].new
    unchanged = rec.of(FileUnchanged)
    assert set(unchanged) == {root + p for p in (b"/noise", b"/keep", b"/sub/a")}
    assert unchanged[root + b"/noise"] == FileUnchanged(
        root + b"/noise", 1_500_000, os.stat(tree / "noise").st_mtime_ns
    )
    removed = rec.of(FileRemoved)
    assert removed == {
        root + b"/gone": FileRemoved(root + b"/gone", FILE, 140),
        root + b"/sub/deeper": FileRemoved(root + b"/sub/deeper", DIR, 0),
    }
    dirs = rec.of(DirectoryDone)
    assert dirs[root].removed == 1 and dirs[root + b"/sub"].removed == 1
    # A directory's removals come right before it, after every event of its entries.
    order = [(type(ev).__name__, getattr(ev, "path", b"")) for ev in rec.events]
    assert order.index(("FileRemoved", root + b"/gone")) == order.index(("DirectoryDone", root)) - 1
    assert order.index(("DirectoryDone", root + b"/sub")) < order.index(("DirectoryDone", root))
    assert rec.finished.files_changed == 1 and rec.finished.files_new == 1 and rec.finished.files_unmodified == 3


def test_events_from_worker_processes_arrive_once_each(local_repo, tmp_path):
    src = tmp_path / "src"
    names = []
    for d in range(6):
        os.makedirs(src / f"d{d}")
        for i in range(80):
            p = src / f"d{d}" / f"f{i}"
            p.write_bytes(os.urandom(100) + b"%d" % i)
            names.append(os.fsencode(str(p)))
    rec, other = Recorder(), Recorder()
    s = backup(local_repo, src, rec, other, workers=4)
    assert not s.errors
    for r in (rec, other):
        counts = Counter(ev.path for ev in r.events if type(ev) is FileRead)
        assert sorted(counts) == sorted(names) and set(counts.values()) == {1}
        dirs = Counter(ev.path for ev in r.events if type(ev) is DirectoryDone)
        assert len(r.events) == 480 + len(dirs) and set(dirs.values()) == {1}
        # src and its 6 subdirectories, and the path components above src (they are trees too)
        assert len(dirs) == 7 + os.fsencode(str(src)).count(b"/")
    readers = {t for ev, t in zip(rec.events, rec.threads, strict=True) if type(ev) is FileRead}
    assert readers == {threading.current_thread().name}  # files are read in processes, events come here
    # Each directory's event comes after every file in it.
    seen: set[bytes] = set()
    for ev in rec.events:
        if type(ev) is FileRead:
            seen.add(ev.path)
        elif ev.path != os.fsencode(str(src)):
            assert {n for n in names if n.startswith(ev.path + b"/")} <= seen


def test_finish_fields_land_in_the_snapshot(local_repo, tree):
    verdict = {"guard": {"verdict": "clean", "score": 0.0, "files": 6}}
    s = backup(local_repo, tree, Recorder(verdict), Recorder({"other": [1, 2]}), extra={"origin": "test"})
    assert s.snapshot.extra == {"origin": "test", **verdict, "other": [1, 2]}
    stored = resolve(reopen(local_repo), s.snapshot_id).snapshot
    assert stored.extra == {"origin": "test", "guard": verdict["guard"], "other": [1, 2]}


def test_a_marked_snapshot_is_still_a_complete_backup(local_repo, tree, tmp_path):
    mark = {"guard": {"verdict": "suspicious", "reasons": ["compressible files became incompressible"]}}
    s = backup(local_repo, tree, Recorder(mark))
    assert s.snapshot_id and not s.errors and not s.incomplete
    assert resolve(reopen(local_repo), s.snapshot_id).snapshot.extra["guard"]["verdict"] == "suspicious"
    out = tmp_path / "out"
    run_restore(local_repo, s.snapshot, RestoreOptions(target=str(out)))
    restored = out / str(tree).lstrip("/")
    assert (restored / "noise").read_bytes() == (tree / "noise").read_bytes()


class Failing(Recorder):
    def __init__(self, event: str) -> None:
        super().__init__({"never": True})
        self.event = event
        self.calls = 0

    def file_read(self, ev):
        self.calls += 1
        if self.event == "file_read":
            raise ValueError("observer bug")

    def directory(self, ev):
        if self.event == "directory":
            raise RuntimeError("observer bug")

    def finish(self, summary):
        if self.event == "finish":
            raise RuntimeError("observer bug")
        return super().finish(summary)


@pytest.mark.parametrize("event", ["file_read", "directory", "finish"])
def test_a_failing_observer_is_a_backup_error_but_loses_no_data(local_repo, tree, tmp_path, event):
    bad, good = Failing(event), Recorder({"guard": {"verdict": "clean"}})
    s = backup(local_repo, tree, bad, good, workers=3)
    assert s.snapshot_id, "the snapshot is written"
    assert len(s.errors) == 1 and "observer Failing failed in " + event in s.errors[0], s.errors
    assert s.snapshot.incomplete and s.snapshot.summary.errors == 1
    assert bad.finished is None and "never" not in s.snapshot.extra, "a detached observer is not asked to finish"
    if event == "file_read":
        assert bad.calls == 1, "a detached observer gets no further events"
    assert s.snapshot.extra["guard"] == {"verdict": "clean"}
    assert len(good.of(FileRead)) == 6, "the other observers see everything"
    assert [ev.message for ev in good.events if type(ev) is BackupError] == [s.errors[0]]
    out = tmp_path / "out"
    run_restore(local_repo, s.snapshot, RestoreOptions(target=str(out)))
    restored = out / str(tree).lstrip("/")
    for p in ("text", "noise", "keep", "gone", "sub/a", "sub/deeper/b"):
        assert (restored / p).read_bytes() == (tree / p).read_bytes()


@pytest.mark.parametrize(
    "fields, why", [({"origin": "mine"}, "already set"), ({"guard": object()}, "Encoding objects"), ([1], "dict")]
)
def test_unusable_finish_fields_are_dropped_with_an_error(local_repo, tree, fields, why):
    s = backup(local_repo, tree, Recorder(fields), extra={"origin": "caller"})
    assert s.snapshot_id and s.snapshot.extra == {"origin": "caller"}
    assert len(s.errors) == 1 and why in s.errors[0], s.errors


def test_stdin_and_error_events(local_repo, tmp_path, monkeypatch):
    rec = Recorder()
    data = text(50_000)
    s = run_backup(local_repo, BackupOptions(stdin=io.BytesIO(data), stdin_filename="dump.sql", observers=[rec]))
    assert not s.errors
    read, ev = rec.events  # the stream is a file read (a new one: no parent), then the stdin event
    assert type(read) is FileRead and read.path == b"dump.sql" and read.new and read.size == len(data)
    assert type(ev) is StdinRead and ev.name == b"dump.sql" and ev.size == len(data)
    assert sum(raw for raw, _ in ev.chunks) == len(data) and ev.head == data[:16] and ev.head_entropy == -1.0
    assert (read.chunks, read.head, read.head_entropy) == (ev.chunks, ev.head, ev.head_entropy)

    src = tmp_path / "src"
    os.makedirs(src)
    (src / "ok").write_bytes(b"1")
    (src / "goes").write_bytes(b"2")
    real_open = workers_mod.open_for_read

    def vanish(name, dfd):
        if name == b"goes":
            os.unlink(name, dir_fd=dfd)
        return real_open(name, dfd)

    monkeypatch.setattr(workers_mod, "open_for_read", vanish)
    rec = Recorder()
    s = backup(local_repo, src, rec)
    errs = rec.of(BackupError)
    assert list(errs) == [os.fsencode(str(src / "goes"))] and "vanished" in errs[os.fsencode(str(src / "goes"))].message
    assert len(s.errors) == 1


def test_an_observer_can_skip_the_fingerprint(local_repo, tree):
    class Cheap(Recorder):
        fingerprint = False

    backup(local_repo, tree, Recorder())
    (tree / "text").write_bytes(b"changed")
    rec = Cheap()
    backup(local_repo, tree, rec)
    (ev,) = rec.of(FileRead).values()
    assert ev.head == b"" and ev.head_entropy == -1.0 and ev.previous_stored == -1 and ev.previous_size > 0


def test_events_are_plain_data(local_repo, tree, monkeypatch):
    rec = Recorder()
    backup(local_repo, tree, rec)
    (tree / "text").write_bytes(b"changed")
    os.unlink(tree / "gone")
    backup(local_repo, tree, rec)
    run_backup(local_repo, BackupOptions(stdin=io.BytesIO(b"x"), observers=[rec]))
    rec._add(BackupError(b"/p", "message"))
    kinds = {type(ev) for ev in rec.events}
    assert kinds == {FileRead, FileUnchanged, FileRemoved, DirectoryDone, StdinRead, BackupError}
    for ev in rec.events:
        assert pickle.loads(pickle.dumps(ev)) == ev
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(ev), type=type(ev)) == ev
        with pytest.raises(AttributeError):
            ev.size = 1  # frozen


def test_cli_verbose_lists_files_read(initialized_cli, tmp_path):
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "a").write_bytes(b"1")
    (src / "b").write_bytes(b"2")
    out = initialized_cli("-v", "backup", str(src)).stdout.decode().splitlines()
    assert sorted(ln for ln in out if ln.startswith("new")) == [f"new      {src}/a", f"new      {src}/b"]
    (src / "b").write_bytes(b"22")
    r = initialized_cli("--json", "-v", "backup", str(src))
    lines = [json.loads(ln) for ln in r.stdout.decode().splitlines()]
    verbose = [ln for ln in lines if ln["message_type"] == "verbose_status"]
    assert verbose == [{"message_type": "verbose_status", "action": "modified", "item": f"{src}/b", "size": 2}]


def test_entries_that_fail_are_errors_not_removals(local_repo, tree, monkeypatch):
    backup(local_repo, tree, Recorder())
    root = os.fsencode(str(tree))
    os.unlink(tree / "gone")
    real_open, real_listdir = workers_mod.open_for_read, os.listdir

    def unreadable(name, dfd):
        if name == b"keep":
            raise PermissionError(13, "Permission denied")
        return real_open(name, dfd)

    def unlistable(fd):
        if isinstance(fd, int) and os.readlink(f"/proc/self/fd/{fd}").endswith("/sub"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(fd)

    os.utime(tree / "keep")  # changed: it is opened again
    monkeypatch.setattr(workers_mod, "open_for_read", unreadable)
    monkeypatch.setattr(os, "listdir", unlistable)
    rec = Recorder()
    s = backup(local_repo, tree, rec)
    assert len(s.errors) == 2 and s.snapshot_id
    assert set(rec.of(BackupError)) == {root + b"/keep", root + b"/sub/"}
    assert set(rec.of(FileRemoved)) == {root + b"/gone"}, "only what is really gone"
    dirs = rec.of(DirectoryDone)
    assert dirs[root].removed == 1 and dirs[root + b"/sub"] == DirectoryDone(root + b"/sub", 0, 0, 0, 0)
