"""guard/observer.py: the verdict a backup writes (Snapshot.extra["guard"]) for attacks and benign churn
on a synthetic tree, the per-file fingerprints in tree nodes, canaries, and the engine hook."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import shutil
import sqlite3
import zipfile

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import _words, encrypt_file, guard_backup, guard_tree

from cermin.backend.memory import MemoryBackend
from cermin.engine.backup import BackupOptions, run_backup
from cermin.engine.observer import BackupObserver, FileRead, FileRemoved
from cermin.guard import canary
from cermin.guard.observer import KEY, GuardObserver
from cermin.repo.repository import Repository
from cermin.repo.snapshots import resolve


@pytest.fixture
def repo():
    return Repository.init(MemoryBackend(), PASSWORD.encode(), kdf=FAST_KDF)  # default chunker (1 MiB average)


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    texts = guard_tree(src)
    return src, texts


def _first(repo, src):
    sid, g = guard_backup(repo, src)
    assert g["verdict"] == "clean", g
    return sid


@pytest.mark.parametrize("how", ["whole", "first_mib", "intermittent"])
def test_encryption_in_place_is_infected(repo, tree, how):
    src, texts = tree
    _first(repo, src)
    rnd = random.Random(1)
    for p in texts:
        encrypt_file(p, how, rnd)
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "infected", g
    assert g["version"] == 1 and 0.9 <= g["score"] <= 1
    assert g["reasons"] and len(g["paths"]) <= 100 and any("file" in p for p in g["paths"])
    assert g["signals"]["points"] >= 10


def test_every_format_encrypted(repo, tree):
    """PDF, DOCX, PNG, gzip, JPEG, SQLite: encrypted whole, their magic is gone."""
    src, _ = tree
    _first(repo, src)
    rnd = random.Random(2)
    victims = ["docs/report.pdf", "docs/letter.docx", "notes/chart.png", "src/data.gz", "notes/photo.jpg"]
    victims.append("src/app.sqlite")
    for v in victims:
        encrypt_file(str(src / v), "whole", rnd)
    _, g = guard_backup(repo, src)
    assert g["verdict"] != "clean", g
    assert g["signals"]["format_broken"] == 6


def test_low_and_slow_ten_files_names_kept(repo, tmp_path):
    """3% of ~340 files encrypted, names kept, no notes: an attack on 10 files is flagged."""
    src = tmp_path / "src"
    texts = guard_tree(src, files=330, big=0, seed=3)
    _first(repo, src)
    rnd = random.Random(3)
    for p in rnd.sample(texts, 10):
        encrypt_file(p, "whole", rnd)
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "infected", g
    assert g["signals"]["compress_loss"] == 10


def test_three_files_are_suspicious(repo, tree):
    src, texts = tree
    _first(repo, src)
    rnd = random.Random(4)
    for p in texts[:3]:
        encrypt_file(p, "intermittent", rnd)
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "suspicious", g


def test_rename_with_ransom_extension_and_notes(repo, tree):
    src, texts = tree
    _first(repo, src)
    rnd = random.Random(5)
    for p in texts[:12]:
        encrypt_file(p, "whole", rnd)
        os.rename(p, p + ".lockbit")
    for d in ("docs", "src", "notes"):
        (src / d / "HOW_TO_DECRYPT.txt").write_text("pay us\n")
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "infected", g
    s = g["signals"]
    assert s["ransom_ext"] == 12 and s["renamed_encrypted"] == 12 and s["note_dirs"] == 3
    assert any("HOW_TO_DECRYPT" in r for r in g["reasons"])


def test_rename_to_one_unknown_extension(repo, tree):
    src, texts = tree
    _first(repo, src)
    rnd = random.Random(6)
    for p in texts[:8]:
        encrypt_file(p, "whole", rnd)
        os.rename(p, p + ".qz7vx")
    _, g = guard_backup(repo, src)
    assert g["verdict"] != "clean", g
    assert any(".qz7vx" in r for r in g["reasons"])


def test_benign_churn_is_clean(repo, tree):
    """Log rotation into .gz, new zip/jpeg/pdf, a new gpg-like random file, an SQLite database rewritten
    through sqlite3, text edits, a deleted file: all clean."""
    src, texts = tree
    rnd = random.Random(7)
    log = src / "notes" / "app.log"
    log.write_bytes(_words(rnd, 300_000))
    _first(repo, src)
    # log rotation: app.log -> app.log.1.gz, a new empty app.log
    (src / "notes" / "app.log.1.gz").write_bytes(gzip.compress(log.read_bytes()))
    log.write_bytes(b"")
    os.rename(texts[5], texts[5] + ".gz")  # a user gzips a file in place (gzip removes the original)
    with open(texts[5] + ".gz", "wb") as f:
        f.write(gzip.compress(_words(rnd, 40_000)))
    with zipfile.ZipFile(src / "docs" / "new.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", _words(rnd, 30_000))
    for i in range(5):
        (src / "notes" / f"img{i}.jpg").write_bytes(b"\xff\xd8\xff\xe1" + rnd.randbytes(200_000))
    (src / "docs" / "secret.gpg").write_bytes(rnd.randbytes(150_000))  # no magic, never compressible
    (src / "docs" / "video.bin").write_bytes(rnd.randbytes(500_000))  # new, always incompressible
    db = sqlite3.connect(src / "src" / "app.sqlite")
    db.execute("delete from t where id % 2 = 0")
    db.executemany("insert into t (body) values (?)", [(_words(rnd, 600).decode(),) for _ in range(400)])
    db.commit()
    db.execute("vacuum")
    db.close()
    for p in texts[10:25]:
        with open(p, "ab") as f:
            f.write(_words(rnd, 3000))
    os.remove(texts[30])
    shutil.copy(texts[31], texts[31] + ".bak")
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "clean", g
    assert g["paths"] == []


def test_package_upgrade_like_rewrite_is_clean(repo, tree):
    """Every text file rewritten with new text of another size: mass rewrite alone stays clean."""
    src, texts = tree
    _first(repo, src)
    rnd = random.Random(8)
    for p in texts:
        with open(p, "wb") as f:
            f.write(_words(rnd, rnd.randint(5_000, 70_000)))
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "clean", g
    assert g["signals"]["files_changed"] >= len(texts)


def test_canary_change_and_removal_are_infected(repo, tree):
    src, _ = tree
    planted = canary.plant(str(src / "docs"))
    assert all(os.path.basename(p).startswith(canary.PREFIX) for p in planted)
    _first(repo, src)  # a new canary is fine
    with open(planted[0], "ab") as f:
        f.write(b"x")
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "infected" and g["score"] == 1.0
    assert "canary" in g["reasons"][0] and g["paths"][0].endswith(os.fsdecode(os.path.basename(planted[0])))
    os.remove(planted[1])
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "infected" and g["signals"]["canary"] == 1


def test_fingerprints_in_nodes_and_kept_for_unchanged(repo, tree):
    src, _ = tree
    sid = _first(repo, src)

    def nodes(snap_id):
        out = {}

        def walk(tid, prefix):
            for n in repo.load_tree(tid).nodes:
                if n.subtree:
                    walk(n.subtree, prefix + n.name + b"/")
                else:
                    out[prefix + n.name] = n

        walk(resolve(repo, snap_id).snapshot.tree, b"")
        return out

    first = nodes(sid)
    by_name = {os.path.basename(k): n.extra[KEY] for k, n in first.items()}
    assert set(by_name[b"file0.txt"]) == {"r", "e", "k"}
    assert by_name[b"file0.txt"]["r"] < 0.8 and by_name[b"file0.txt"]["k"] == ""
    assert by_name[b"report.pdf"]["k"] == "pdf" and by_name[b"app.sqlite"]["k"] == "sqlite"
    assert by_name[b"photo.jpg"]["k"] == "jpeg" and by_name[b"photo.jpg"]["r"] > 0.95
    assert 0 <= by_name[b"photo.jpg"]["e"] <= 8
    sid2, _ = guard_backup(repo, src)  # nothing changed: nodes keep their fingerprints
    assert {k: n.extra for k, n in nodes(sid2).items()} == {k: n.extra for k, n in first.items()}


def test_previous_fingerprint_reaches_events_and_pickles(repo, tree):
    src, texts = tree
    _first(repo, src)
    seen = []

    class Keep(BackupObserver):
        def file_read(self, ev):
            seen.append(ev)

        def file_removed(self, ev):
            seen.append(ev)

    with open(texts[0], "ab") as f:
        f.write(b"more text\n")
    os.remove(texts[1])
    s = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2, observers=[GuardObserver(), Keep()]))
    assert not s.errors
    read = [e for e in seen if isinstance(e, FileRead)]
    removed = [e for e in seen if isinstance(e, FileRemoved)]
    assert len(read) == 1 and len(removed) == 1
    assert dict(read[0].previous_fingerprint)["k"] == "" and "r" in dict(read[0].previous_fingerprint)
    assert "r" in dict(removed[0].fingerprint)
    for ev in read + removed:
        assert pickle.loads(pickle.dumps(ev)) == ev
    assert resolve(repo, s.snapshot_id).snapshot.extra["guard"]["verdict"] == "clean"


def test_commands_backup_attaches_guard_unless_disabled(tree):
    from cermin.ops import commands

    src, _ = tree
    repo = Repository.init(MemoryBackend(), PASSWORD.encode(), kdf=FAST_KDF)
    s = commands.backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2), no_lock=True)
    s = getattr(s, "summary", s)
    assert resolve(repo, s.snapshot_id).snapshot.extra["guard"]["verdict"] == "clean"
    s = commands.backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2, guard=False), no_lock=True)
    s = getattr(s, "summary", s)
    assert "guard" not in resolve(repo, s.snapshot_id).snapshot.extra


def test_memory_is_bounded_by_directories_in_flight_and_counts_stay_whole():
    """A directory's new and removed files are settled at its `directory` event and dropped; a mass
    rename beyond the kept paths still counts every file."""
    from cermin.engine.observer import DirectoryDone

    obs = GuardObserver()
    n = 3000
    for i in range(n):  # d/f<i>.txt (compressible) renamed to d/f<i>.txt.qz7vx and encrypted
        obs.file_removed(FileRemoved(b"/d/f%d.txt" % i, "file", 5000, (("k", ""), ("r", 0.3), ("e", 4.5))))
        ev = FileRead(b"/d/f%d.txt.qz7vx" % i, 5000, 0, ((5000, 5020),), bytes(range(200, 216)), 7.96)
        obs.node_fingerprint(ev)
        obs.file_read(ev)
    obs.directory(DirectoryDone(b"/d", n, 0, 0, n))
    assert not obs._new and not obs._removed  # nothing kept per file once the directory is done
    g = obs.finish(None)["guard"]
    assert g["verdict"] == "infected"
    assert g["signals"]["mass_rename"] == n and g["signals"]["renamed_encrypted"] == n
    assert g["signals"]["points"] >= n * 1.5 and len(g["paths"]) == 100
    assert any(f"{n} files gained the extension .qz7vx" in r for r in g["reasons"])


def test_removed_directories_count_every_file_they_held(repo, tree):
    """Deleting whole directories is one removal event each: the parent's totals say how many files went."""
    src, texts = tree
    _first(repo, src)
    for d in ("docs", "src"):  # about 60% of the files, as two directory removals
        shutil.rmtree(os.path.join(src, d))
    _, g = guard_backup(repo, src)
    assert g["signals"]["files_removed_in_dirs"] >= 30
    assert any(r.startswith("mass deletion:") or r.startswith("source emptied:") for r in g["reasons"]), g


def test_small_files_turned_into_ciphertext_are_caught(repo, tmp_path):
    """Ten text files under 1 KiB encrypted in place (names kept, no notes): no entropy estimate applies, but
    ciphertext never compresses, however short; editing them instead stays clean."""
    src = tmp_path / "small"
    rnd = random.Random(3)
    paths = []
    for i in range(40):
        d = src / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"note{i}.txt"
        p.write_bytes(_words(rnd, rnd.randint(400, 900)))
        paths.append(str(p))
    _first(repo, src)
    for p in paths[:10]:  # benign: a line appended
        with open(p, "ab") as f:
            f.write(b"one more line of ordinary text\n")
    _, g = guard_backup(repo, src)
    assert g["verdict"] == "clean", g
    for p in paths[10:20]:
        encrypt_file(p, "whole", rnd)
    _, g = guard_backup(repo, src)
    assert g["verdict"] != "clean", g
    assert g["signals"].get("compress_loss", 0) >= 10


def test_documentation_named_like_notes_is_clean(repo, tree):
    """A system's own docs (howto.txt, recover.txt, 00_README.txt, FOO_WARNING.txt in one or two directories
    each, a dozen on a Debian /usr/share) and icon themes (dialog-warning.png in every size directory)
    do not make a first backup suspicious; the same names beside encrypted files still count."""
    src, texts = tree
    docs = {"doc/util-linux": ("howto-debug.txt", "howto-build.txt"), "doc/vim": ("recover.txt", "howto.txt")}
    docs |= {"doc/xz": ("00_README.txt",), "doc/cmake": ("LINK_WARNING.txt", "DIRS_WARNING.txt")}
    for d, names in docs.items():
        os.makedirs(src / d)
        for name in names:
            (src / d / name).write_text("plain documentation " * 40)
    for size in (16, 24, 32, 48, 64, 96):
        os.makedirs(src / f"icons/{size}x{size}")
        (src / f"icons/{size}x{size}/dialog-warning-symbolic.symbolic.png").write_bytes(
            b"\x89PNG\r\n\x1a\n" + bytes(300)
        )
    _first(repo, src)
    rnd = random.Random(3)
    for p in texts[:3]:
        encrypt_file(p, "whole", rnd)
    (src / "doc/vim/HOW_TO_DECRYPT.txt").write_text("pay")
    _, g = guard_backup(repo, src)
    assert g["verdict"] != "clean" and g["signals"]["ransom_note"] >= 1, g


def test_a_new_empty_file_is_assessed_as_the_general_case_would():
    """The shortcut for new empty files (the walker assesses them itself, one per file) gives what the
    general assessment gives, for every kind of name."""
    from cermin.guard import observer as gobs
    from cermin.guard import signals as gsig

    rnd = random.Random(5)
    names = [b"a", b"", b".hidden", b"noext.", b"README_DECRYPT.txt", b"HOW_TO_RECOVER_FILES.html", b"_readme.txt"]
    names += [b"x." + ext for ext in sorted(gsig.RANSOM_EXTENSIONS)[:40]]
    names += [b"photo.jpg", b"!!!READ_ME!!!.png", b"\xff\xfe.txt", b"a" * 90 + b".txt", b"data.tar.gz.locked"]
    names += [bytes(rnd.choices(b"abcXYZ._-!0123456789\xe9", k=rnd.randint(1, 30))) for _ in range(300)]
    for name in names:
        ev = FileRead(b"/some/dir/" + name, 0, 123, (), b"", -1.0)
        assert gobs.assess(ev) == gobs._assess(ev, name), name
    changed = FileRead(b"/d/a.txt", 0, 1, (), b"", -1.0, 10, 1, 8, False, (("r", 0.5),))
    assert gobs.assess(changed) == gobs._assess(changed, b"a.txt")  # not new: the general case
