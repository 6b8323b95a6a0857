"""Cross-cutting property test (backup and restore): any tree, with all the metadata cermin records, restores
byte-for-byte."""

from __future__ import annotations

import os
import shutil
import tempfile

from conftest import FAST_KDF
from helpers import assert_same_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cermin.backend.memory import MemoryBackend
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.engine.treewalk import find_node
from cermin.repo.repository import Repository

IS_ROOT = os.geteuid() == 0

names = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))
contents = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=64), st.integers(1, 200)),
)
mtimes = st.integers(0, 4_000_000_000 * 10**9)
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o4755, 0o2750, 0o1777])
owners = st.sampled_from([(0, 0), (1000, 1000), (65534, 65534), (1234, 5678)])


@st.composite
def entries(draw, depth=0):
    kinds = ["file", "file", "symlink", "fifo", "hardlink", "empty"] + (["dir", "dir"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "dir":
        return (
            "dir",
            draw(st.dictionaries(names, entries(depth=depth + 1), max_size=5)),
            draw(st.sampled_from([0o755, 0o700, 0o555])),
            draw(mtimes),
            draw(owners),
        )
    if kind == "file":
        xattrs = draw(st.dictionaries(st.sampled_from([b"user.a", b"user.b\xff"]), st.binary(max_size=20), max_size=2))
        return ("file", draw(contents), draw(file_modes), draw(mtimes), draw(owners), xattrs)
    if kind == "empty":
        return ("file", b"", 0o644, draw(mtimes), draw(owners), {})
    if kind == "symlink":
        return (
            "symlink",
            draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b)),
            draw(owners),
        )
    if kind == "fifo":
        return ("fifo", draw(st.sampled_from([0o644, 0o600])), draw(mtimes))
    return ("hardlink",)


def build(root: bytes, tree: dict, files: list) -> list:
    dirs = []
    for name, e in tree.items():
        p = os.path.join(root, name)
        kind = e[0]
        if kind == "dir":
            os.mkdir(p)
            build(p, e[1], files)
            dirs.append((p, e))
        elif kind == "file":
            with open(p, "wb") as f:
                f.write(e[1])
            for k, v in e[5].items():
                try:
                    os.setxattr(p, k, v)
                except OSError:
                    pass
            if IS_ROOT:
                os.chown(p, *e[4])
            os.chmod(p, e[2])
            os.utime(p, ns=(e[3], e[3]))
            files.append(p)
        elif kind == "symlink":
            os.symlink(e[1], p)
            if IS_ROOT:
                os.chown(p, *e[2], follow_symlinks=False)
        elif kind == "fifo":
            os.mkfifo(p, e[1])
            os.utime(p, ns=(e[2], e[2]))
        elif files:
            os.link(files[0], p)
        else:
            open(p, "wb").close()
    for p, e in reversed(dirs):  # after children: their creation moves the dir mtime
        if IS_ROOT:
            os.chown(p, *e[4])
        os.chmod(p, e[2])
        os.utime(p, ns=(e[3], e[3]))
    return files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=st.dictionaries(names, entries(), min_size=1, max_size=8))
def test_any_tree_restores_identically(tree):
    work = tempfile.mkdtemp(prefix="cermin-prop-")
    try:
        src = os.path.join(os.fsencode(work), b"src")
        os.mkdir(src)
        build(src, tree, [])
        # Tiny chunks so even small files span several blobs.
        repo = Repository.init(
            MemoryBackend(), b"pw", kdf=FAST_KDF, chunker_params=(64, 256, 1024), pack_size=64 * 1024
        )
        s = run_backup(repo, BackupOptions(paths=[src], workers=2))
        assert not s.errors, s.errors
        out = os.path.join(work, "out")
        r = run_restore(repo, s.snapshot, RestoreOptions(target=out, verify=True, workers=2))
        assert not r.errors, r.errors
        assert_same_tree(src, os.path.join(os.fsencode(out), src.lstrip(b"/")))
        again = run_backup(repo, BackupOptions(paths=[src], workers=2))
        # The source subtree is unchanged (its parent directory gained "out", so the root differs).
        assert find_node(repo, again.snapshot.tree, src) == find_node(repo, s.snapshot.tree, src)
        assert again.snapshot.summary.bytes_read == 0
    finally:
        for d, subdirs, _ in os.walk(work):
            for sd in subdirs:
                os.chmod(os.path.join(d, sd), 0o700)
        shutil.rmtree(work)
