"""engine/backup/ (walker, file saver, trees): metadata round trip, change detection, filters, dedup,
pack adoption, and a planted snapshot passing nothing to the next backup."""

from __future__ import annotations

import io
import os

import pytest
from conftest import FAST_KDF, PASSWORD, reopen
from helpers import (
    allocated_bytes,
    assert_same_tree,
    backup,
    do_backup,
    do_restore,
    make_rich_tree,
    make_source,
    restores_identically,
    small_repo,
)

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.engine import fsread
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.backup import chunks as chunks_mod
from cermin.engine.backup import filesaver as filesaver_mod
from cermin.engine.backup import workers as workers_mod
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.engine.treewalk import diff_trees, walk
from cermin.format import pack, records
from cermin.format.records import Snapshot
from cermin.repo.repository import Repository
from cermin.util import now_rfc3339


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
    orig = filesaver_mod.FileSaver.submit  # every file to be read is handed to a worker here
    filesaver_mod.FileSaver.submit = lambda self, *a: reads.append(1) or orig(self, *a)
    try:
        second = do_backup(local_repo, src)
    finally:
        filesaver_mod.FileSaver.submit = orig
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
    real_open = workers_mod.open_for_read

    def delete_then_open(name, dfd):  # fault injection: the file disappears after it was listed
        if name == b"goes":
            os.unlink(name, dir_fd=dfd)
        return real_open(name, dfd)

    monkeypatch.setattr(workers_mod, "open_for_read", delete_then_open)
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
    real = chunks_mod.Cutter.whole

    def grow_while_reading(self, fd, emit):  # fault injection (in the forked worker): a writer appends while we read
        with open(target, "ab") as w:
            w.write(b"appended line\n" * 1000)
        return real(self, fd, emit)

    monkeypatch.setattr(chunks_mod.Cutter, "whole", grow_while_reading)
    s = do_backup(local_repo, src)
    assert s.snapshot.summary.changed_during_read == 1
    assert any("changed while it was read" in w for w in s.warnings)
    ((_, node),) = [(p, n) for p, n in walk(local_repo, s.snapshot.tree) if p.endswith(b"/log")]
    assert node.size == sum(local_repo.index.raw_length(b) for b in node.blob_ids())
    monkeypatch.setattr(chunks_mod.Cutter, "whole", real)
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


def test_unreadable_file_skipped_with_error(local_repo, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads anything; covered by the CLI test that drops privileges")
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "secret").write_bytes(b"s")
    os.chmod(src / "secret", 0)
    s = do_backup(local_repo, src)
    assert s.snapshot.incomplete and "secret" in s.errors[0]


def test_a_backup_adopts_authenticated_unindexed_packs_only(tmp_path):
    import blake3

    from cermin.backend.base import Kind
    from cermin.engine.backup import BackupOptions, run_backup

    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(2_000_000))
    repo.load_index()
    first = run_backup(repo, BackupOptions(paths=[os.fsencode(src)], workers=2))
    assert first.bytes_uploaded > 2_000_000
    # As if interrupted before its index and snapshot: durable packs that no index file names.
    for kind in (Kind.INDEX, Kind.SNAPSHOT):
        for name, _ in list(repo.backend.list(kind)):
            repo.backend.remove(kind, name)
    written = {n for n, _ in repo.backend.list(Kind.DATA)}
    planted = os.urandom(5000)  # a storage credential without the key: a "pack" under its own hash
    planted_name = blake3.blake3(planted).hexdigest()
    repo.backend.save(Kind.DATA, planted_name, planted)

    r = Repository.open(repo.backend, PASSWORD.encode())
    r.load_index()
    assert set(r.unindexed_packs) == written | {planted_name}
    s = run_backup(r, BackupOptions(paths=[os.fsencode(src)], workers=2))
    assert s.bytes_uploaded == 0 and s.packs_written == 0, "everything was adopted, nothing uploaded again"
    assert [w for w in r.warnings if "not adopted" in w and planted_name[:12] in w]
    r2 = Repository.open(repo.backend, PASSWORD.encode())
    r2.load_index()
    assert set(r2.unindexed_packs) == {planted_name}, "the adopted packs are named by an index file"
    assert {p.hex() for p in r2.index.packs} == written


@pytest.mark.usefixtures("own_cache")
def test_index_naming_missing_packs_is_not_trusted_for_dedup(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=8)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    backup(repo, src)
    data_dir = os.path.join(repo.backend.root, "data")
    victim = sorted(os.path.join(d, f) for d, _, fs in os.walk(data_dir) for f in fs)[0]
    os.unlink(victim)  # the index still names it
    repo = reopen(repo)
    snap = backup(repo, src)  # must store again what the lost pack held, not refer to it
    restores_identically(reopen(repo), snap, src, tmp_path / "restore")
    assert any("missing" in w for w in repo.warnings)


@pytest.mark.usefixtures("own_cache")
def test_planted_present_dated_snapshot_does_not_pass_its_contents_to_the_next_backup(tmp_path):
    """Red-team reproduction (issue 14 review)."""
    from cermin.engine.backup import BackupOptions, run_backup
    from cermin.format.records import DIR, FILE, Node, Tree
    from cermin.repo.saver import BlobSaver

    src = tmp_path / "src"
    src.mkdir()
    (src / "authorized_keys").write_bytes(b"ssh-ed25519 AAAA owner\n")
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    real = repo.load_snapshot(backup(repo, src))
    saver = BlobSaver(repo, builders=1)
    evil = b"ssh-ed25519 EVIL attack"  # same size, same metadata: only the content differs

    def rewrite(tree_id: bytes) -> bytes:
        nodes = []
        for n in repo.load_tree(tree_id).nodes:
            fields = {f: getattr(n, f) for f in n.__struct_fields__}
            if n.type == DIR:
                n = Node(**fields | {"subtree": rewrite(n.subtree)})
            elif n.type == FILE and n.name == b"authorized_keys":
                bid = repo.blob_id(evil)
                saver.save(pack.DATA, bid, evil)
                n = Node(**fields | {"content": bid})
            nodes.append(n)
        data = records.encode(Tree(nodes=nodes))
        tid = repo.tree_id(data)
        saver.save(pack.TREE, tid, data)
        return tid

    tid = rewrite(real.tree)
    saver.flush()
    saver.close()
    repo.save_snapshot(Snapshot(time=now_rfc3339(), tree=tid, paths=real.paths, hostname=real.hostname))
    new = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=1)).snapshot_id
    run_restore(repo, repo.load_snapshot(new), RestoreOptions(target=str(tmp_path / "out"), workers=1))
    restored = (tmp_path / "out" / str(src).lstrip("/") / "authorized_keys").read_bytes()
    assert restored == b"ssh-ed25519 AAAA owner\n", f"the new backup holds the planted content {restored!r}"


def test_unchanged_directories_keep_the_parent_snapshot_s_trees(local_repo, tmp_path, monkeypatch):
    """A directory whose entries all equal the parent snapshot's keeps that tree (no encoding, hashing
    or lookup again); a change stores new trees for its directory and the ones above only."""
    from cermin.engine.backup.trees import Trees

    src = tmp_path / "src"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
        for i in range(3):
            (src / d / f"{d}{i}").write_bytes(b"%s %d\n" % (d.encode(), i) * 50)
    first = local_repo.load_snapshot(backup(local_repo, src))
    (src / "b" / "b1").write_bytes(b"changed\n")
    stored: list[list[bytes]] = []
    real = Trees.store
    monkeypatch.setattr(Trees, "store", lambda self, nodes: stored.append([n.name for n in nodes]) or real(self, nodes))
    second = local_repo.load_snapshot(backup(local_repo, src))
    assert [b"b0", b"b1", b"b2"] in stored and [b"a", b"b", b"c"] in stored
    assert [b"a0", b"a1", b"a2"] not in stored and [b"c0", b"c1", b"c2"] not in stored

    def subtrees(snap) -> dict[bytes, bytes]:
        tid = snap.tree
        for part in str(src).strip("/").split("/"):
            tid = next(n.subtree for n in local_repo.load_tree(tid).nodes if n.name == part.encode())
        return {n.name: n.subtree for n in local_repo.load_tree(tid).nodes}

    before, after = subtrees(first), subtrees(second)
    assert before[b"a"] == after[b"a"] and before[b"c"] == after[b"c"] and before[b"b"] != after[b"b"]
    stored.clear()
    third = backup(local_repo, src)
    assert local_repo.load_snapshot(third).tree == second.tree
    assert len(stored) == len(str(src).strip("/").split("/"))  # "/" and the components above the target only
    restores_identically(local_repo, third, src, tmp_path / "out")
