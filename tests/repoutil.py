"""Helpers for integrity tests: build a repository with history, damage it, compute expectations."""

from __future__ import annotations

import os
import random

from conftest import FAST_KDF, PASSWORD
from treeutil import assert_same_tree

from cermin.backend.base import Kind
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.format.index import IndexEntry
from cermin.format.records import DIR, FILE
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots

SMALL = dict(kdf=FAST_KDF, chunker_params=(16 * 1024, 64 * 1024, 256 * 1024), pack_size=256 * 1024)


def small_repo(backend) -> Repository:
    return Repository.init(backend, PASSWORD.encode(), **SMALL)


def make_source(root, files: int = 12, seed: int = 0) -> None:
    rnd = random.Random(seed)
    os.makedirs(os.path.join(root, "a", "b"), exist_ok=True)
    os.makedirs(os.path.join(root, "c"), exist_ok=True)
    words = [bytes(rnd.choices(b"abcdefghij", k=rnd.randint(2, 9))) for _ in range(500)]
    for i in range(files):
        d = ["", "a", "a/b", "c"][i % 4]
        size = rnd.choice([100, 5000, 70_000, 300_000])
        if i % 3 == 0:
            data = rnd.randbytes(size)
        else:
            data = b" ".join(rnd.choices(words, k=size // 5))[:size]
        with open(os.path.join(root, d, f"f{i}.dat"), "wb") as f:
            f.write(data)


def mutate_source(root, step: int) -> None:
    rnd = random.Random(step)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    for p in rnd.sample(files, max(1, len(files) // 4)):
        with open(p, "ab") as f:
            f.write(rnd.randbytes(rnd.randint(10, 40_000)))
    with open(os.path.join(root, "c", f"new{step}.dat"), "wb") as f:
        f.write(rnd.randbytes(20_000))


def backup(repo: Repository, src) -> str:
    s = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2))
    assert not s.errors, s.errors
    return s.snapshot_id


def reopen(backend) -> Repository:
    repo = Repository.open(backend, PASSWORD.encode())
    repo.load_index()
    return repo


def restores_identically(repo: Repository, snap_id: str, src, target, expected=None) -> None:
    """Restore snapshot of path `src` and compare with `expected` (default: src as it is now)."""
    snap = repo.load_snapshot(snap_id)
    r = run_restore(repo, snap, RestoreOptions(target=str(target), verify=True, workers=2))
    assert not r.errors, r.errors
    assert_same_tree(expected or src, os.path.join(str(target), str(src).lstrip("/")))


def blob_users(repo: Repository, blobs: set[bytes]) -> dict[str, set[str]]:
    """snapshot id -> paths of files that use any of `blobs` (independent of the checker)."""
    out: dict[str, set[str]] = {}
    for ref in list_snapshots(repo):
        stack = [(b"", ref.snapshot.tree)]
        while stack:
            prefix, tid = stack.pop()
            for n in repo.load_tree(tid).nodes:
                p = prefix + b"/" + n.name
                if n.type == DIR:
                    stack.append((p, n.subtree))
                elif n.type == FILE and set(n.blob_ids()) & blobs:
                    out.setdefault(ref.id, set()).add(p.decode())
    return out


def pack_entries(repo: Repository) -> dict[str, list[IndexEntry]]:
    """pack id -> its IndexEntry records (blob_id, type, offset, length, raw_length)."""
    view = read_index_view(repo)
    return {pid.hex(): list(view.entries(pid)) for pid in view.packs}


def repo_sharing_ids(src: Repository, backend) -> Repository:
    """A new repository (own master key, pack keys, password slot) whose blob ids are those of `src`:
    what a mirror of `src` is. Made by re-sealing its config with `src`'s id key (write-once storage
    allows it only because the repository is brand new and its config is replaced before use)."""
    import msgspec

    from cermin.backend.base import CONFIG_NAME
    from cermin.format import crypto, pack, records
    from cermin.repo.repository import config_aad

    dst = small_repo(backend)
    secrets = msgspec.structs.replace(dst.secrets, id_key=src.secrets.id_key)
    config = dst.config
    config.secrets = crypto.seal(dst.keys, pack.compress(records.encode(secrets), 3), config_aad(config))
    backend.remove(Kind.CONFIG, CONFIG_NAME)
    backend.save(Kind.CONFIG, CONFIG_NAME, msgspec.json.encode(config))
    return reopen(backend)


def object_path(repo: Repository, kind: Kind, name: str) -> str:
    root = repo.backend.root
    if kind is Kind.DATA:
        return os.path.join(root, "data", name[:2], name)
    return os.path.join(root, kind.value, name)


def damage(path: str, how: str, offset: int | None = None) -> None:
    os.chmod(path, 0o600)
    data = bytearray(open(path, "rb").read())
    if how == "delete":
        os.unlink(path)
        return
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":
        data[len(data) // 2 if offset is None else offset] ^= 0x20
    with open(path, "wb") as f:
        f.write(bytes(data))
