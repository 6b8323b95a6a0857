"""The ransomware guard on stdin snapshots (database dumps, SQLite copies, command output): a stdin backup's
parent is the newest snapshot this client wrote of the same host, file name (and tags), its file is a
FileRead with the previous version, and the guard judges the stream as the whole source."""

from __future__ import annotations

import functools
import io
import json
import os
import random
import shutil

import pytest
from conftest import FAST_KDF, PASSWORD

from cermin.backend.local import LocalBackend
from cermin.engine import backup as backup_mod
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.observer import BackupObserver, BackupStart, FileRead, StdinRead
from cermin.guard.observer import KEY, GuardObserver
from cermin.ops.config import parse_config
from cermin.ops.sources import backup_source
from cermin.repo.repository import Repository
from cermin.repo.snapshots import resolve

MB = 1 << 20


@pytest.fixture
def repo(tmp_path, own_cache):
    r = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    r.load_index()
    return r


@functools.lru_cache(maxsize=16)
def dump(size: int, seed: int = 0, changed: tuple[int, ...] = ()) -> bytes:
    """A plain SQL dump of about `size` bytes; rows in `changed` get other values."""
    rnd = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    out = [b"-- PostgreSQL database dump\nSET statement_timeout = 0;\nCOPY public.orders (id, item, qty) FROM stdin;\n"]
    n = total = 0
    while total < size:
        item = " ".join(rnd.choice(words) for _ in range(4))
        qty = rnd.randrange(1000) + (7 if n in changed else 0)
        line = f"{n}\t{item}\t{qty}\n".encode()
        out.append(line)
        total += len(line)
        n += 1
    out.append(b"\\.\n")
    return b"".join(out)


class Recorder(BackupObserver):
    def __init__(self) -> None:
        self.events: list = []

    def _add(self, ev) -> None:
        self.events.append(ev)

    start = file_read = stdin = _add


def stdin_backup(repo, data: bytes, name: str = "db.sql", *observers, **kw):
    guard = GuardObserver()
    s = run_backup(
        repo, BackupOptions(stdin=io.BytesIO(data), stdin_filename=name, observers=[guard, *observers], **kw)
    )
    assert s.snapshot_id and not s.errors, s.errors
    return s, s.snapshot.extra["guard"]


def test_a_dump_turned_into_ciphertext_then_emptied_is_flagged(repo):
    first, g = stdin_backup(repo, dump(7 * MB), hostname="db1")
    assert g["verdict"] == "clean" and first.parent is None, g
    rand, g = stdin_backup(repo, os.urandom(6 * MB), hostname="db1")
    assert rand.parent == first.snapshot_id
    assert g["verdict"] in ("suspicious", "infected"), g
    assert g["signals"].get("compress_loss") == 1 and any("stopped compressing" in r for r in g["reasons"]), g
    assert g["paths"] == ["db.sql"]
    assert rand.snapshot.summary.files_changed == 1 and rand.snapshot.summary.files_new == 0

    empty, g = stdin_backup(repo, b"", hostname="db1")
    assert empty.parent == rand.snapshot_id
    assert g["verdict"] in ("suspicious", "infected"), g
    assert any(r.startswith("source emptied: db.sql went from") for r in g["reasons"]), g


def test_a_text_dump_emptied_is_flagged(repo):
    stdin_backup(repo, dump(7 * MB), hostname="db1")
    _, g = stdin_backup(repo, b"", hostname="db1")
    assert g["verdict"] == "suspicious" and "source emptied: db.sql went from" in g["reasons"][0], g
    _, g = stdin_backup(repo, dump(3 * MB), hostname="db1")
    assert g["verdict"] == "clean", g  # 0 -> 3 MB: grew


def test_a_dump_that_shrank_by_half_is_noted_not_flagged(repo):
    stdin_backup(repo, dump(4 * MB), hostname="db1")
    _, g = stdin_backup(repo, dump(int(1.5 * MB)), hostname="db1")
    assert g["verdict"] == "clean" and any(r.startswith("source shrank: db.sql") for r in g["reasons"]), g


def test_a_benign_edit_of_the_dump_stays_clean(repo):
    first, _ = stdin_backup(repo, dump(7 * MB), hostname="db1")
    nxt, g = stdin_backup(repo, dump(7 * MB, changed=(10, 5000, 90_000, 150_000)), hostname="db1")
    assert nxt.parent == first.snapshot_id
    assert g["verdict"] == "clean" and g["signals"]["points"] == 0, g
    more, g = stdin_backup(repo, dump(int(7.3 * MB)), hostname="db1")  # rows appended
    assert more.parent == nxt.snapshot_id and g["verdict"] == "clean", g


def test_the_stdin_file_is_a_file_read_with_its_previous_version(repo):
    data = dump(2 * MB)
    first, _ = stdin_backup(repo, data, hostname="db1")
    fp = dict(repo.load_tree(first.snapshot.tree).nodes[0].extra[KEY])
    assert 0 < fp["r"] < 0.6 and fp["k"] == "", fp  # the fingerprint the next dump is compared with

    rec = Recorder()
    stdin_backup(repo, data[:MB] + os.urandom(MB), "db.sql", rec, hostname="db1")
    start, read, stdin = rec.events
    assert isinstance(start, BackupStart) and start.parent == first.snapshot_id and start.stdin == b"db.sql"
    assert start.parent_files == 1 and start.parent_bytes == len(data)
    assert isinstance(read, FileRead) and read.path == b"db.sql" and read.size == 2 * MB
    prev_node = repo.load_tree(first.snapshot.tree).nodes[0]
    assert read.previous_size == len(data) and read.previous_mtime_ns == prev_node.mtime_ns
    assert 0 < read.previous_stored < len(data)
    assert dict(read.previous_fingerprint) == fp
    assert isinstance(stdin, StdinRead) and stdin.name == b"db.sql" and stdin.chunks == read.chunks


def test_the_parent_is_the_same_host_name_and_tags_never_a_future_or_unrecorded_one(repo, tmp_path, monkeypatch):
    def prev_size(name="db.sql", **kw):
        rec = Recorder()
        s, _ = stdin_backup(repo, dump(MB, seed=9), name, rec, **kw)
        (read,) = [e for e in rec.events if isinstance(e, FileRead)]
        return s, read.previous_size

    mine, _ = stdin_backup(repo, dump(3 * MB), hostname="db1", tags=["system=a/b", "source=db"])
    other_host, _ = stdin_backup(repo, dump(5 * MB), hostname="db2", tags=["system=a/b", "source=db"])
    other_name, _ = stdin_backup(repo, dump(5 * MB), "other.sql", hostname="db1", tags=["system=a/b", "source=db"])
    other_tags, _ = stdin_backup(repo, dump(5 * MB), hostname="db1", tags=["system=a/c", "source=db"])
    path_snap = run_backup(repo, BackupOptions(paths=[os.fsencode(tmp_path / "repo" / "config")], hostname="db1"))
    assert path_snap.snapshot_id
    # a future-dated snapshot of the same host, name and tags (written by this client: still not a parent)
    with monkeypatch.context() as m:
        m.setattr(backup_mod, "now_rfc3339", lambda: "2999-01-01T00:00:00Z")
        future, _ = stdin_backup(repo, dump(5 * MB), hostname="db1", tags=["system=a/b", "source=db"])
    s, size = prev_size(hostname="db1", tags=["source=db", "system=a/b"])
    assert s.parent == mine.snapshot_id and size == len(dump(3 * MB))
    assert not s.warnings

    # not written by this client (another cache: another machine with the same host name, or planted)
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "other-cache"))
    planted, _ = stdin_backup(repo, dump(5 * MB), hostname="db1", tags=["system=a/b", "source=db"])
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))
    s2, size = prev_size(hostname="db1", tags=["system=a/b", "source=db"])
    assert s2.parent == s.snapshot_id and size == len(dump(MB, seed=9))
    assert len(s2.warnings) == 1 and planted.snapshot_id[:8] in s2.warnings[0], s2.warnings

    # without tags: any tags of the same host and name
    s3, size = prev_size(hostname="db1")
    assert s3.parent == s2.snapshot_id
    # a new host or name: no parent, the dump is new
    assert prev_size(hostname="db3")[1] == -1
    assert prev_size("fresh.sql", hostname="db1")[1] == -1
    for snap in (other_host, other_name, other_tags, future):
        assert snap.snapshot_id not in (s.parent, s2.parent, s3.parent)


def test_an_explicit_parent_of_another_kind_gives_no_previous_version(repo, tmp_path):
    path_snap = run_backup(repo, BackupOptions(paths=[os.fsencode(tmp_path / "repo")], hostname="db1"))
    rec = Recorder()
    s, g = stdin_backup(repo, dump(MB), "db.sql", rec, hostname="db1", parent=path_snap.snapshot_id)
    (read,) = [e for e in rec.events if isinstance(e, FileRead)]
    assert read.previous_size == -1 and g["verdict"] == "clean", g


def test_a_command_source_of_the_agent(tmp_path, own_cache):
    """Through ops/sources.py: `cat` of a file as a command source, the file later encrypted, then empty."""
    repo_dir = tmp_path / "repo"
    Repository.init(LocalBackend(str(repo_dir)), PASSWORD.encode(), kdf=FAST_KDF)
    pw = tmp_path / "repo.pw"
    pw.write_text(PASSWORD + "\n")
    data = tmp_path / "export.csv"
    cat = shutil.which("cat")
    cfg = parse_config(
        f"""
[repositories.main]
url = "{repo_dir}"
password_file = "{pw}"

[tenants.acme.systems.app]
class = "rendah"
primary = "main"

[[tenants.acme.systems.app.sources]]
type = "command"
name = "export"
command = {json.dumps([cat, str(data)])}
""".encode(),
        str(tmp_path / "cermin.toml"),
        environ={},
    )
    system = cfg.systems[0]

    def run():
        repo = Repository.open(LocalBackend(str(repo_dir)), PASSWORD.encode())
        s = backup_source(repo, system, system.sources[0])
        return s, resolve(repo, s.snapshot_id).snapshot.extra["guard"]

    data.write_bytes(dump(3 * MB))
    first, g = run()
    assert g["verdict"] == "clean", g
    data.write_bytes(dump(3 * MB, changed=(3, 4, 5)))
    edit, g = run()
    assert edit.parent == first.snapshot_id and g["verdict"] == "clean", g
    data.write_bytes(os.urandom(3 * MB))
    enc, g = run()
    assert enc.parent == edit.snapshot_id
    assert g["verdict"] in ("suspicious", "infected") and g["signals"].get("compress_loss") == 1, g
    assert hasattr(enc, "alarm")  # commands.backup raised the alarm (an AlarmedBackup)
    data.write_bytes(b"")
    _, g = run()
    assert g["verdict"] in ("suspicious", "infected") and any("source emptied" in r for r in g["reasons"]), g
