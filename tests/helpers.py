"""The shared test helpers: repositories with history and their damage, source trees with every kind of
metadata and their comparison with a restore, and hostile snapshots written through the library."""

from __future__ import annotations

import hashlib
import os
import random
import stat

import msgspec
from conftest import FAST_KDF, PASSWORD

from cermin.backend.base import Kind
from cermin.backend.local import LocalBackend
from cermin.backend.memory import MemoryBackend
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.check import run_check
from cermin.engine.repair import repair_index, repair_packs, repair_snapshots
from cermin.engine.restore import RestoreOptions, run_restore
from cermin.errors import ObjectLocked
from cermin.format import crypto, pack, records
from cermin.format.index import IndexEntry
from cermin.format.records import DIR, FILE, SYMLINK, Node, Snapshot, Tree
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.repo.snapshots import list_snapshots, resolve
from cermin.util import now_rfc3339

SMALL = dict(kdf=FAST_KDF, chunker_params=(16 * 1024, 64 * 1024, 256 * 1024), pack_size=256 * 1024)


# ---- repositories with history, and their damage -----------------------------------------------
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


def do_backup(repo, *paths, **kw):
    return run_backup(repo, BackupOptions(paths=[os.fsencode(p) for p in paths], **kw))


def do_restore(repo, snap_id, target, **kw):
    return run_restore(repo, resolve(repo, snap_id).snapshot, RestoreOptions(target=str(target), **kw))


def two_backups(tmp_path, files: int) -> tuple:
    """A local repository with two backups of a changing source: (repo, src, first id, second id)."""
    src = tmp_path / "src"
    make_source(src, files=files)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    first = backup(repo, src)
    mutate_source(src, 1)
    second = backup(repo, src)
    return repo, src, first, second


def thirty_snapshots(base, sources: dict) -> tuple[str, list[str]]:
    """30 snapshots of a changing tree in base/repo; returns (repo dir, [snapshot ids]). Copies of the
    source as the last two snapshots saw it are kept in `sources` (by snapshot id: (source, copy))."""
    import shutil

    src = base / "src"
    make_source(src, files=16)
    repo = small_repo(LocalBackend(str(base / "repo")))
    snaps = [backup(repo, src)]
    for step in range(29):
        mutate_source(src, step)
        snaps.append(backup(repo, src))
        if step >= 27:
            shutil.copytree(src, base / f"src-{snaps[-1]}", symlinks=True)
            sources[snaps[-1]] = (src, base / f"src-{snaps[-1]}")
    return str(base / "repo"), snaps


def fresh_copy(history, tmp_path) -> tuple:
    import shutil

    repo_dir, snaps = history
    dst = tmp_path / "repo"
    shutil.copytree(repo_dir, dst)
    return reopen(LocalBackend(str(dst))), snaps


def clean(repo) -> bool:
    r = run_check(repo, read_data=True)
    return r.ok


def full_repair(repo):
    repair_packs(repo)
    repair_index(repo)
    repair_snapshots(repo, forget_originals=True)


def gallery_repo(tmp_path):
    src = tmp_path / "src"
    make_source(src, files=10)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    s1 = backup(repo, src)
    mutate_source(src, 1)
    s2 = backup(repo, src)
    return repo, src, s1, s2


def error_kinds(report):
    return {p.kind for p in report.errors}


def plant(backend, kind: Kind, data: bytes) -> str:
    """What a storage credential or backup token can do: any bytes, under their own content hash."""
    name = crypto.file_id(data)
    backend.save(kind, name, data)
    return name


def future_copy(repo: Repository, sid: str, when: str = "2999-01-01T00:00:00.000000000Z") -> str:
    snap = repo.load_snapshot(sid)
    snap.time = when
    return repo.save_snapshot(snap)


def records_now() -> str:
    from cermin.util import now_rfc3339

    return now_rfc3339()


class LockedSnapshots(MemoryBackend):
    """Storage that refuses to delete snapshot files, as S3 does under a compliance lock."""

    def remove(self, kind: Kind, name: str) -> None:
        if kind is Kind.SNAPSHOT:
            raise ObjectLocked(f"{kind.value}/{name} is locked")
        super().remove(kind, name)


# ---- source trees -----------------------------------------------------------------------------
def make_rich_tree(root: str) -> None:
    """A tree with the metadata cermin must round-trip (run as root for devices and ownership)."""
    r = os.fsencode(root)
    os.makedirs(r, exist_ok=True)
    with open(r + b"/plain.txt", "wb") as f:
        f.write(b"hello world\n" * 1000)
    with open(r + b"/random.bin", "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    open(r + b"/empty", "wb").close()
    os.makedirs(r + b"/emptydir")
    os.makedirs(r + b"/sub/deeper")
    with open(r + b"/sub/deeper/x", "wb") as f:
        f.write(b"x" * 5000)
    os.chmod(r + b"/sub/deeper/x", 0o4751)
    with open(r + b"/caf\xe9-not-utf8", "wb") as f:  # a Latin-1 name
        f.write(b"latin1 name")
    os.symlink(b"plain.txt", r + b"/link")
    os.symlink(b"/nonexistent/target", r + b"/dangling")
    os.link(r + b"/plain.txt", r + b"/hardlink")
    os.mkfifo(r + b"/fifo")
    if os.geteuid() == 0:
        os.mknod(r + b"/chardev", 0o640 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(r + b"/sub/deeper/x", 1234, 5678)
        os.chown(r + b"/link", 4321, 8765, follow_symlinks=False)
    try:
        os.setxattr(r + b"/plain.txt", b"user.cermin", b"value\x00\xff")
    except OSError:
        pass
    with open(r + b"/sparse", "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(32 * 1024 * 1024)
        f.write(b"data in the middle")
    os.utime(r + b"/sub", ns=(1_000_000_123, 1_500_000_456_789))
    os.chmod(r + b"/emptydir", 0o500)


def snapshot_of(root) -> dict:
    """path -> comparable metadata + content, for every entry under root (not root itself)."""
    root = os.fsencode(root)
    out = {}
    inodes: dict[int, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            d = {
                "mode": st.st_mode,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None,
            }
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    d["content"] = f.read()
                d["size"] = st.st_size
                if st.st_nlink > 1:
                    d["link_group"] = inodes.setdefault(st.st_ino, rel)
                try:
                    d["xattrs"] = sorted((k, os.getxattr(p, k)) for k in os.listxattr(p))
                except OSError:
                    pass
            elif stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
                d["mtime_ns"] = st.st_mtime_ns
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d["rdev"] = st.st_rdev
            out[rel] = d
    return out


def assert_same_tree(src, dst) -> None:
    a, b = snapshot_of(src), snapshot_of(dst)
    assert sorted(a) == sorted(b), (
        f"entries differ: only in source {sorted(set(a) - set(b))[:5]}, only in restore {sorted(set(b) - set(a))[:5]}"
    )
    for k in a:
        if a[k] != b[k]:
            diffs = {f: (a[k].get(f), b[k].get(f)) for f in a[k] if a[k].get(f) != b[k].get(f) and f != "content"}
            if a[k].get("content") != b[k].get("content"):
                diffs["content"] = "differs"
            raise AssertionError(f"{k!r} differs: {diffs}")


def allocated_bytes(path) -> int:
    return os.stat(path).st_blocks * 512


# ---- hostile snapshots ------------------------------------------------------------------------
MTIME = 1_600_000_000_000_000_000


class Hostile:
    """Writes trees and snapshots with whatever entries the attacker wants."""

    def __init__(self, repo) -> None:
        self.repo = repo
        self.saver = BlobSaver(repo, builders=1)
        self.trees: dict[bytes, bytes] = {}  # tree id -> first entry name (to find trees in tests)

    def file(self, name: bytes, data: bytes = b"content\n", **kw) -> Node:
        bid = self.repo.blob_id(data)
        self.saver.save(pack.DATA, bid, data)
        kw.setdefault("mode", 0o644)
        kw.setdefault("mtime_ns", MTIME)
        return Node(name=name, type=FILE, size=len(data), content=bid, **kw)

    def dir(self, name: bytes, nodes: list[Node], **kw) -> Node:
        kw.setdefault("mode", 0o755)
        return Node(name=name, type=DIR, subtree=self.tree(nodes), mtime_ns=MTIME, **kw)

    @staticmethod
    def symlink(name: bytes, target) -> Node:
        return Node(name=name, type=SYMLINK, target=os.fsencode(target), mode=0o777, mtime_ns=MTIME)

    def tree(self, nodes: list[Node]) -> bytes:
        data = records.encode(Tree(nodes=nodes))
        tid = self.repo.tree_id(data)
        self.saver.save(pack.TREE, tid, data)
        return tid

    def snapshot(self, nodes: list[Node]) -> str:
        tid = self.tree(nodes)
        self.saver.flush()
        self.saver.close()
        self.saver = BlobSaver(self.repo, builders=1)
        return self.repo.save_snapshot(Snapshot(time=now_rfc3339(), tree=tid, paths=[b"/hostile"]))


def fs_state(root: str, skip: str | None = None) -> dict:
    """Every entry under root (root included) with type, mode, owner, size, times, links and content."""
    out = {}
    for d, dirs, files in os.walk(root):
        if skip is not None and os.path.abspath(d) == os.path.abspath(skip):
            dirs[:] = []
            continue
        for name in [None, *files, *dirs]:
            p = d if name is None else os.path.join(d, name)
            if skip is not None and os.path.abspath(p) == os.path.abspath(skip):
                continue
            st = os.lstat(p)
            extra = None
            if stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(open(p, "rb").read()).hexdigest()
            out[os.path.relpath(p, root)] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_nlink,
                extra,
            )
    return out


def good_entries(h: Hostile) -> list[Node]:
    return [h.file(b"good", b"good file\n"), h.dir(b"gooddir", [h.file(b"inner", b"inner file\n")])]


def assert_good_restored(target) -> None:
    assert (target / "good").read_bytes() == b"good file\n"
    assert (target / "gooddir" / "inner").read_bytes() == b"inner file\n"


# ---- guard verdicts, written by hand (independent of the signals the backup computes) ------------
def guard_extra(verdict: str, reasons=(), paths=(), score: float = 0.0) -> dict:
    return {
        "guard": {
            "version": 1,
            "verdict": verdict,
            "score": score,
            "reasons": list(reasons),
            "paths": list(paths),
            "signals": {},
        }
    }


def verdict_snapshot(
    repo: Repository, when, verdict: str | None, host: str = "h", paths=(b"/data",), tree: bytes = b"\0" * 32, **kw
) -> str:
    """A snapshot record dated `when` (datetime or RFC 3339) with the given verdict (None: made before the guard);
    `kw`: guard_extra's reasons, affected (its paths), score."""
    if "affected" in kw:
        kw["paths"] = kw.pop("affected")
    from cermin.util import ns_to_rfc3339

    t = when if isinstance(when, str) else ns_to_rfc3339(int(when.timestamp() * 1e9))
    extra = guard_extra(verdict, **kw) if verdict is not None else {}
    return repo.save_snapshot(Snapshot(time=t, tree=tree, paths=list(paths), hostname=host, extra=extra))


def set_verdict(repo: Repository, sid: str, verdict: str, **kw) -> str:
    """Replace snapshot `sid` by a copy carrying `verdict` (as the backup observer would have written it)."""
    snap = repo.load_snapshot(sid)
    snap.extra = {**snap.extra, **guard_extra(verdict, **kw)}
    new = repo.save_snapshot(snap)
    repo.backend.remove(Kind.SNAPSHOT, sid)
    return new


# ---- guard signals: a synthetic tree, attacks on it and benign churn -----------------------------
def _words(rnd: random.Random, n: int) -> bytes:
    vocab = [bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randint(2, 9))) for _ in range(800)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rnd.choices(vocab, k=200)) + b"\n"
    return bytes(out[:n])


def guard_tree(root, files: int = 60, big: int = 2, seed: int = 0) -> list[str]:
    """Text files in a few directories (plus `big` 2.5 MiB ones), a PDF, a DOCX, a PNG, a gzip, a JPEG and
    an SQLite database: the kinds a real home or share holds. Returns the text files' paths."""
    import gzip
    import sqlite3
    import zipfile
    import zlib

    rnd = random.Random(seed)
    root = str(root)
    texts = []
    for i in range(files):
        d = os.path.join(root, ["docs", "docs/old", "src", "notes"][i % 4])
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"file{i}.txt")
        with open(p, "wb") as f:
            f.write(_words(rnd, rnd.randint(6_000, 60_000)))
        texts.append(p)
    for i in range(big):
        p = os.path.join(root, "docs", f"big{i}.txt")
        with open(p, "wb") as f:
            f.write(_words(rnd, 2_500_000 + i))
        texts.append(p)
    with open(os.path.join(root, "docs", "report.pdf"), "wb") as f:
        f.write(b"%PDF-1.4\n" + _words(rnd, 80_000))
    with zipfile.ZipFile(os.path.join(root, "docs", "letter.docx"), "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", _words(rnd, 50_000))
    raw = b"".join(b"\x00" + bytes(rnd.choices(range(8), k=300)) for _ in range(100))
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + bytes(17) + b"IDAT" + zlib.compress(raw)
    with open(os.path.join(root, "notes", "chart.png"), "wb") as f:
        f.write(png)
    with open(os.path.join(root, "src", "data.gz"), "wb") as f:
        f.write(gzip.compress(_words(rnd, 100_000)))
    with open(os.path.join(root, "notes", "photo.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + rnd.randbytes(120_000))
    db = sqlite3.connect(os.path.join(root, "src", "app.sqlite"))
    db.execute("create table t (id integer primary key, body text)")
    db.executemany("insert into t (body) values (?)", [(_words(rnd, 400).decode(),) for _ in range(300)])
    db.commit()
    db.close()
    return texts


def encrypt_file(path: str, how: str, rnd: random.Random) -> None:
    """Overwrite in place like ransomware: "whole", "first_mib" or "intermittent" (every other 64 KiB block)."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        n = len(data)
        if how == "whole":
            data[:] = rnd.randbytes(n)
        elif how == "first_mib":
            k = min(n, 1 << 20)
            data[:k] = rnd.randbytes(k)
        elif how == "intermittent":
            for off in range(0, n, 2 << 16):
                k = min(1 << 16, n - off)
                data[off : off + k] = rnd.randbytes(k)
        else:
            raise ValueError(how)
        f.seek(0)
        f.write(data)
        f.truncate()


def guard_backup(repo: Repository, src) -> tuple[str, dict]:
    """A backup with the guard attached: (snapshot id, its Snapshot.extra["guard"])."""
    from cermin.guard.observer import GuardObserver

    s = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2, observers=[GuardObserver()]))
    assert not s.errors, s.errors
    return s.snapshot_id, resolve(repo, s.snapshot_id).snapshot.extra["guard"]
