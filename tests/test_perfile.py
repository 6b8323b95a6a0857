"""guard/perfile.py: `restore --per-file-last-clean SNAP` on real repositories — every path at its newest
version that no verdict or file-level flag marks, what came from where, and the cases around it (files
only in flagged snapshots, removed files, marks, acknowledgements, hard links, dry runs, the CLI)."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass

import pytest
from helpers import (
    assert_same_tree,
    encrypt_file,
    guard_backup,
    guard_extra,
    guard_tree,
    reopen,
    set_verdict,
    small_repo,
)

from cermin.backend.local import LocalBackend
from cermin.engine.restore import RestoreOptions
from cermin.errors import UsageError
from cermin.format.records import FILE, Node
from cermin.guard import perfile
from cermin.guard.perfile import KEPT, OLDER, RETURNED, SKIPPED, file_flag, fingerprint, judge_step
from cermin.guard.verdict import Ack, Mark, Verdict, write_ack, write_mark
from cermin.ops import commands
from cermin.repo.snapshots import SnapshotRef, resolve
from cermin.util import now_rfc3339


@dataclass
class History:
    repo: object
    src: str
    before: str  # the tree as the last clean snapshot saw it
    texts: list[str]
    snaps: list[str]  # clean, clean, flagged
    victims: list[str]  # encrypted in place
    renamed: list[str]  # encrypted and renamed to .locked (the originals are gone)
    notes: list[str]
    edited: str  # a benign edit in the flagged snapshot
    new: str  # a benign new file in the flagged snapshot
    deleted: str  # a benign deletion in the flagged snapshot


def attack(src, texts, rnd) -> tuple[list[str], list[str], list[str]]:
    victims = texts[4:16]
    for p in victims:
        encrypt_file(p, "whole", rnd)
    renamed = texts[16:21]
    for p in renamed:
        encrypt_file(p, "whole", rnd)
        os.rename(p, p + ".locked")
    notes = [os.path.join(src, d, "README_DECRYPT.txt") for d in ("docs", "src", "notes")]
    for p in notes:
        with open(p, "wb") as f:
            f.write(b"your files are encrypted, pay up\n")
    return victims, renamed, notes


@pytest.fixture
def history(tmp_path) -> History:
    """Two clean backups of a tree (the second after a benign edit), then one after ransomware encrypted 12
    files in place, encrypted and renamed 5 more and left notes, while a user edited, added and deleted a
    file: the attack's snapshot is flagged."""
    src = str(tmp_path / "src")
    texts = guard_tree(src, files=40, big=0)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    s1, g = guard_backup(repo, src)
    assert g["verdict"] == "clean"
    with open(texts[1], "ab") as f:
        f.write(b"a clean edit\n")
    s2, g = guard_backup(repo, src)
    assert g["verdict"] == "clean"
    before = str(tmp_path / "before")
    shutil.copytree(src, before, symlinks=True)
    victims, renamed, notes = attack(src, texts, random.Random(7))
    with open(texts[2], "ab") as f:
        f.write(b"edited by its user during the attack\n")
    new = os.path.join(src, "docs", "minutes.txt")
    with open(new, "wb") as f:
        f.write(b"minutes of the meeting, written during the attack\n" * 200)
    os.unlink(texts[3])
    s3, g = guard_backup(repo, src)
    assert g["verdict"] in ("suspicious", "infected") and len(g["paths"]) < 100, g
    return History(repo, src, before, texts, [s1, s2, s3], victims, renamed, notes, texts[2], new, texts[3])


def restored(target, path) -> str:
    return os.path.join(str(target), str(path).lstrip("/"))


def expected_tree(h: History, dst: str, removed: bool = True) -> str:
    """The source as the flagged snapshot saw it, with the encrypted files as they were before, notes and
    renamed ciphertext left out, and the removed files back (directories keep their times)."""
    shutil.copytree(h.src, dst, symlinks=True)
    for p in h.victims:
        shutil.copy2(restored(h.before, os.path.relpath(p, h.src)), restored(dst, os.path.relpath(p, h.src)))
    for p in h.notes + [r + ".locked" for r in h.renamed]:
        os.unlink(restored(dst, os.path.relpath(p, h.src)))
    for p in h.renamed + [h.deleted] if removed else []:
        shutil.copy2(restored(h.before, os.path.relpath(p, h.src)), restored(dst, os.path.relpath(p, h.src)))
    for d, dirs, _ in os.walk(h.src):
        for name in dirs:
            st = os.stat(os.path.join(d, name))
            os.utime(restored(dst, os.path.relpath(os.path.join(d, name), h.src)), ns=(st.st_atime_ns, st.st_mtime_ns))
    return dst


def per_file(repo, snap, target=None, **kw):
    opts = RestoreOptions(target=str(target or ""), verify=True, workers=2, subpath=kw.pop("subpath", b"/"))
    return commands.restore_per_file(repo, snap, opts, **kw)


def actions(result) -> dict[str, tuple[str, str | None]]:
    return {os.fsdecode(c.path): (c.action, c.source) for c in result.choices}


# ---- the main case ------------------------------------------------------------------------------
def test_encrypted_files_come_from_before_the_attack_and_benign_changes_stay(history, tmp_path):
    h = history
    s1, s2, s3 = h.snaps
    r = per_file(h.repo, s3, tmp_path / "out")
    assert not r.restore.errors and r.exit_code == 0
    assert r.restore.verified_files == r.restore.files
    assert_same_tree(expected_tree(h, str(tmp_path / "expected")), restored(tmp_path / "out", h.src))

    got = actions(r)
    for p in h.victims:
        assert got[p] == (OLDER, s2), p  # the newest version before the encryption
    for p in h.renamed:
        assert got[p] == (RETURNED, s2)  # removed by the encryptor in a flagged snapshot: back
        assert got[p + ".locked"] == (SKIPPED, None)  # only in the flagged snapshot, named by its verdict
    for p in h.notes:
        assert got[p] == (SKIPPED, None)
    assert got[h.edited] == (KEPT, s3) and got[h.new] == (KEPT, s3)  # changed in the attack, nothing marks them
    assert got[h.deleted] == (RETURNED, s2)
    assert h.texts[1] not in got and h.texts[30] not in got  # unchanged since the last clean snapshot: from s3
    assert len(got) == len(h.victims) + 2 * len(h.renamed) + len(h.notes) + 3

    assert r.last_clean == s2 and r.verdict in ("suspicious", "infected")
    assert [s[0] for s in r.searched] == [s3, s2, s1]
    assert r.sources() == {s2: len(h.victims) + len(h.renamed) + 1}
    c = {x.path: x for x in r.choices}[os.fsencode(h.victims[0])]
    assert c.reasons == [f"{s3[:8]}: named by its {r.verdict} verdict"]
    assert "no clean version (no older version)" in {x.path: x for x in r.choices}[os.fsencode(h.notes[0])].reasons


def test_listing_as_text_and_json(history, tmp_path):
    h = history
    s1, s2, s3 = h.snaps
    r = per_file(h.repo, s3, tmp_path / "out")
    text = "\n".join(line.text for line in r.to_text())
    assert f"per-file last clean of snapshot {s3[:8]}" in text and f"last clean {s2[:8]}" in text
    assert "12 files from an older version" in text and f"{len(h.victims) + len(h.renamed) + 1} from {s2[:8]}" in text
    assert "6 entries brought back" in text and "2 files kept" in text and "8 entries not restored" in text
    assert h.notes[0] in text and h.victims[0] not in text  # skipped entries always, the rest with -v
    verbose = "\n".join(line.text for line in r.to_text(1))
    assert f"older    {h.victims[0]} <- {s2[:8]}" in verbose and f"kept     {h.new}" in verbose

    lines = r.to_json()
    entries = [d for d in lines if d["message_type"] == "per_file"]
    assert {d["path"] for d in entries} == {os.fsdecode(c.path) for c in r.choices}
    one = next(d for d in entries if d["path"] == h.victims[0])
    assert one == {
        "message_type": "per_file",
        "path": h.victims[0],
        "action": "older",
        "snapshot": s2,
        "type": "file",
        "reasons": [f"{s3[:8]}: named by its {r.verdict} verdict"],
    }
    (summary,) = [d for d in lines if d["message_type"] == "per_file_summary"]
    assert summary["snapshot_id"] == s3 and summary["last_clean"] == s2 and not summary["dry_run"]
    assert (summary["older"], summary["returned"], summary["kept"], summary["skipped"]) == (12, 6, 2, 8)
    assert summary["sources"] == {s2: 18} and [s["id"] for s in summary["searched"]] == [s3, s2, s1]
    assert lines[-1]["message_type"] == "summary" and lines[-1]["snapshot_id"] == s3


def test_dry_run_lists_the_same_plan_and_writes_nothing(history, tmp_path):
    h = history
    dry = per_file(h.repo, h.snaps[2], dry_run=True)
    assert dry.restore is None and dry.exit_code == 0 and not (tmp_path / "out").exists()
    real = per_file(h.repo, h.snaps[2], tmp_path / "out")
    assert actions(dry) == actions(real)
    assert "dry run: nothing was restored" in [line.text for line in dry.to_text()]
    assert dry.to_json()[-1]["message_type"] == "per_file_summary" and dry.to_json()[-1]["dry_run"]


def test_a_part_of_the_snapshot(history, tmp_path):
    h = history
    docs = os.path.join(h.src, "docs")
    r = per_file(h.repo, h.snaps[2], tmp_path / "out", subpath=os.fsencode(docs))
    assert not r.restore.errors
    assert r.choices and all(c.path.startswith(os.fsencode(docs) + b"/") for c in r.choices)
    victim = next(p for p in h.victims if p.startswith(docs + "/"))
    with open(restored(h.before, victim[len(h.src) :]), "rb") as f:
        clean = f.read()
    assert (tmp_path / "out" / victim[len(docs) + 1 :]).read_bytes() == clean  # SNAP:PATH restores PATH's content
    gone = {os.path.basename(p) for p in h.notes} | {os.path.basename(p) + ".locked" for p in h.renamed}
    back = {os.path.basename(p) for p in h.renamed + [h.deleted] if os.path.dirname(p) == docs}
    assert set(os.listdir(tmp_path / "out")) == set(os.listdir(docs)) - gone | back
    one = per_file(h.repo, h.snaps[2], tmp_path / "one", subpath=os.fsencode(victim))
    assert [c.path for c in one.choices] == [os.fsencode(victim)] and one.restore.files == 1
    assert (tmp_path / "one" / os.path.basename(victim)).read_bytes() == clean


def test_removed_files_stay_out_when_asked(history, tmp_path):
    h = history
    r = per_file(h.repo, h.snaps[2], tmp_path / "out", removed=False)
    assert_same_tree(expected_tree(h, str(tmp_path / "expected"), removed=False), restored(tmp_path / "out", h.src))
    got = actions(r)
    assert got[h.deleted] == (SKIPPED, None) and all(got[p] == (SKIPPED, None) for p in h.renamed)
    assert "not brought back (--no-removed)" in {c.path: c for c in r.choices}[os.fsencode(h.deleted)].reasons


# ---- after the attack -----------------------------------------------------------------------------
def test_a_clean_backup_after_the_attack_does_not_end_the_search(history, tmp_path):
    """The next backup finds nothing new to complain about and is clean, but it still holds the
    ciphertext: per-file from it (or from `latest`) searches back past the attack."""
    h = history
    s1, s2, s3 = h.snaps
    with open(h.texts[25], "ab") as f:
        f.write(b"a later clean edit\n")
    s4, g = guard_backup(h.repo, h.src)
    assert g["verdict"] == "clean"
    r = per_file(h.repo, "latest", tmp_path / "out")
    assert [s[0] for s in r.searched] == [s4, s3, s2, s1] and r.last_clean == s2
    got = actions(r)
    assert all(got[p] == (OLDER, s2) for p in h.victims)
    assert got[h.new] == (KEPT, s4) and h.texts[25] not in got  # changed in a clean snapshot: as in s4
    with open(h.texts[25], "rb") as f:
        assert open(restored(tmp_path / "out", h.texts[25]), "rb").read() == f.read()


def test_a_file_new_in_one_flagged_snapshot_and_encrypted_in_the_next(history, tmp_path):
    h = history
    s3 = h.snaps[2]
    with open(h.new, "rb") as f:
        minutes = f.read()
    rnd = random.Random(9)
    for p in [h.new, *h.texts[21:33]]:
        encrypt_file(p, "whole", rnd)
    s4, g = guard_backup(h.repo, h.src)
    assert g["verdict"] != "clean" and h.new in g["paths"]
    r = per_file(h.repo, s4, tmp_path / "out")
    got = actions(r)
    assert got[h.new] == (OLDER, s3)  # its first version, from the first flagged snapshot, is unmarked
    assert open(restored(tmp_path / "out", h.new), "rb").read() == minutes
    assert all(got[p] == (OLDER, s3) for p in h.texts[21:33])  # as s3 (and the clean ones) had them
    assert all(got[p] == (OLDER, h.snaps[1]) for p in h.victims)


# ---- file-level flags, acknowledgements, marks -----------------------------------------------------
@pytest.fixture
def slow(tmp_path):
    """One file encrypted in a snapshot the guard still called clean, then an attack on 12 more."""
    src = str(tmp_path / "src")
    texts = guard_tree(src, files=40, big=0)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    s1, _ = guard_backup(repo, src)
    with open(texts[0], "rb") as f:
        first = f.read()
    rnd = random.Random(3)
    encrypt_file(texts[0], "whole", rnd)
    s2, g = guard_backup(repo, src)
    assert g["verdict"] == "clean" and g["score"] > 0
    for p in texts[4:16]:
        encrypt_file(p, "whole", rnd)
    s3, g = guard_backup(repo, src)
    assert g["verdict"] != "clean"
    return repo, src, texts, first, (s1, s2, s3)


def test_a_file_encrypted_in_a_clean_snapshot_is_caught_by_its_fingerprint(slow, tmp_path):
    repo, src, texts, first, (s1, s2, s3) = slow
    r = per_file(repo, s3, tmp_path / "out")
    c = {x.path: x for x in r.choices}[os.fsencode(texts[0])]
    assert (c.action, c.source) == (OLDER, s1)
    assert len(c.reasons) == 1 and c.reasons[0].startswith(f"{s2[:8]}: stopped compressing")
    assert open(restored(tmp_path / "out", texts[0]), "rb").read() == first
    assert all(actions(r)[p] == (OLDER, s2) for p in texts[4:16])

    # --lookback 0 searches back to the last clean snapshot only: it is the floor, trusted as a whole
    r0 = per_file(repo, s3, tmp_path / "out0", lookback=0)
    assert [s[0] for s in r0.searched] == [s3, s2] and texts[0] not in actions(r0)


def test_an_acknowledged_snapshot_is_not_questioned(slow, tmp_path):
    repo, src, texts, first, (s1, s2, s3) = slow
    write_ack(repo, s2, "the user encrypted that file herself", now_rfc3339())
    r = per_file(repo, s3, tmp_path / "out")
    assert texts[0] not in actions(r)
    with open(texts[0], "rb") as f:
        assert open(restored(tmp_path / "out", texts[0]), "rb").read() == f.read()


def test_a_mark_makes_every_change_of_the_window_suspect(tmp_path):
    """An EDR alert flags a snapshot whose own verdict is clean: the guard named nothing, so every file
    it changed comes from before, and a file new in it has no clean version."""
    src = str(tmp_path / "src")
    texts = guard_tree(src, files=20, big=0)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    s1, _ = guard_backup(repo, src)
    before = {p: open(p, "rb").read() for p in texts[:2]}
    for p in texts[:2]:
        with open(p, "ab") as f:
            f.write(b"changed while the EDR saw something\n")
    with open(os.path.join(src, "notes", "new.txt"), "wb") as f:
        f.write(b"new\n")
    s2, g = guard_backup(repo, src)
    assert g["verdict"] == "clean"
    write_mark(repo, resolve(repo, s2).snapshot.time, "", "EDR alert 4711", "infected", now_rfc3339())
    r = per_file(repo, s2, tmp_path / "out")
    got = actions(r)
    assert got[texts[0]] == (OLDER, s1) and got[texts[1]] == (OLDER, s1)
    assert got[os.path.join(src, "notes", "new.txt")] == (SKIPPED, None)
    assert (
        "in the window of a mark (EDR alert 4711)" in {c.path: c for c in r.choices}[os.fsencode(texts[0])].reasons[0]
    )
    assert len(got) == 3 and r.verdict == "infected"
    for p, data in before.items():
        assert open(restored(tmp_path / "out", p), "rb").read() == data


def test_hard_links_never_join_two_versions(tmp_path):
    """a and b are one inode; the verdict names only a, so a comes from the older snapshot and b from the
    newer: restore must not link b to a's (older) content."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"first version\n" * 500)
    os.link(src / "a", src / "b")
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    s1, _ = guard_backup(repo, src)
    with open(src / "a", "r+b") as f:
        f.write(b"second")
    s2, _ = guard_backup(repo, src)
    s2 = set_verdict(repo, s2, "suspicious", paths=[str(src / "a")])
    r = per_file(repo, s2, tmp_path / "out")
    assert actions(r) == {str(src / "a"): (OLDER, s1), str(src / "b"): (KEPT, s2)}
    a, b = restored(tmp_path / "out", src / "a"), restored(tmp_path / "out", src / "b")
    assert open(a, "rb").read() == b"first version\n" * 500
    assert open(b, "rb").read() == (src / "b").read_bytes()
    assert os.stat(a).st_ino != os.stat(b).st_ino


def test_only_directories_that_differ_are_merged(history, tmp_path, monkeypatch):
    """Walk by directory: a directory with the same tree in every searched snapshot is restored as it is,
    never merged (nor are older versions of it read)."""
    h = history
    os.makedirs(os.path.join(h.src, "quiet", "deep"))
    with open(os.path.join(h.src, "quiet", "deep", "x.txt"), "wb") as f:
        f.write(b"never changes\n")
    s4, g = guard_backup(h.repo, h.src)
    assert g["verdict"] == "clean"
    with open(h.texts[24], "ab") as f:
        f.write(b"an edit\n")
    s5 = set_verdict(h.repo, guard_backup(h.repo, h.src)[0], "suspicious", paths=[h.texts[24]])
    merged: list[bytes] = []
    real = perfile.Planner._merge

    def spy(self, path, hist):
        merged.append(path)
        return real(self, path, hist)

    monkeypatch.setattr(perfile.Planner, "_merge", spy)
    r = per_file(h.repo, s5, tmp_path / "out", lookback=0)
    assert [s[0] for s in r.searched] == [s5, s4] and actions(r) == {h.texts[24]: (OLDER, s4)}
    docs = os.path.dirname(h.texts[24])
    parts = docs.split("/")
    assert sorted(merged) == sorted(os.fsencode("/".join(parts[:i])) for i in range(1, len(parts) + 1))
    assert os.path.exists(restored(tmp_path / "out", os.path.join(h.src, "quiet", "deep", "x.txt")))
    assert not r.restore.errors


# ---- judging, unit by unit ------------------------------------------------------------------------
def _ref(sid: str = "a" * 64, **extra) -> SnapshotRef:
    from cermin.format.records import Snapshot

    return SnapshotRef(sid, Snapshot(time="2026-01-01T00:00:00Z", tree=b"\0" * 32, paths=[b"/d"], extra=extra))


def test_when_a_verdict_cannot_say_which_files_it_means():
    full = [f"/d/f{i}" for i in range(100)]
    own = _ref(**guard_extra("infected", paths=full))
    assert "maybe not all" in judge_step(own, Verdict("infected", "infected", paths=full), set()).whole
    some = _ref(**guard_extra("infected", paths=full[:99]))
    assert not judge_step(some, Verdict("infected", "infected", paths=full[:99]), set()).whole
    assert "names no paths" in judge_step(_ref(), Verdict("suspicious", "suspicious"), set()).whole
    assert "no guard verdict" in judge_step(_ref(), Verdict("unknown", "unknown"), set()).whole
    pre = judge_step(_ref(), Verdict("unknown", "unknown"), {"a" * 64})  # made before the guard
    assert pre.trusted and not pre.whole
    named = judge_step(_ref(), Verdict("suspicious", "suspicious", paths=["/d/x"]), set())
    assert not named.trusted and not named.whole and named.named == {"/d/x"}
    mark = Mark("m", 10.0, 0.0, None, "", "", "EDR", "infected")
    ack = Ack("k", 20.0, "", "a" * 64, "fine")
    acked = judge_step(_ref(), Verdict("clean", "suspicious", marks=[mark], acks=[ack]), set())
    assert acked.trusted and acked.vouched
    later = Mark("m2", 30.0, 0.0, None, "", "", "EDR again", "infected")
    raised = judge_step(
        _ref(), Verdict("infected", "suspicious", paths=["/d/x"], marks=[mark, later], acks=[ack]), set()
    )
    assert "EDR again" in raised.whole  # a mark recorded after the acknowledgement


def _node(size=50_000, **g) -> Node:
    return Node(name=b"f", type=FILE, size=size, extra={"g": g} if g else {})


def test_file_level_flags_from_fingerprints():
    text = _node(r=0.3, e=4.5, k="")
    assert file_flag(text, _node(r=1.0, e=7.99, k="")).startswith("stopped compressing")
    assert file_flag(_node(r=0.97, e=7.9, k="pdf"), _node(r=1.0, e=7.99, k="")).startswith("lost its pdf format")
    assert file_flag(text, _node(r=0.6, e=7.9, k="")).startswith("its head turned")  # first block only
    assert file_flag(text, _node(r=0.6, e=5.0, k="")) is None  # an edit that compresses worse: not alone
    assert file_flag(text, _node(r=0.6, e=5.0, k=""), flagged=True).startswith("compresses much worse")
    assert file_flag(text, _node(r=1.0, e=7.99, k="gzip")) is None  # now a gzip: a format, not ciphertext
    assert file_flag(_node(r=0.99, e=7.9, k=""), _node(r=1.0, e=7.99, k="")) is None  # was never compressible
    assert file_flag(_node(size=100, r=0.3, e=0.0, k=""), _node(r=1.0, e=7.99, k="")) is None  # too small before
    assert file_flag(_node(), _node(r=1.0, e=7.99, k="")) is None  # no fingerprint before
    for bad in ({"r": "x", "e": 1.0, "k": ""}, {"r": float("nan"), "e": 1, "k": ""}, {"r": True, "e": 1, "k": ""}):
        assert fingerprint(Node(name=b"f", type=FILE, extra={"g": bad})) is None
    assert fingerprint(Node(name=b"f", type=FILE, extra={"g": {"r": 1, "e": 2, "k": 3}})) is None
    assert fingerprint(Node(name=b"f", type=FILE, extra={"g": []})) is None


def test_library_callers_get_the_same_checks(history, tmp_path):
    h = history
    with pytest.raises(UsageError, match="include"):
        commands.restore_per_file(h.repo, h.snaps[2], RestoreOptions(target=str(tmp_path / "o"), includes=["*.txt"]))
    with pytest.raises(UsageError, match="target"):
        commands.restore_per_file(h.repo, h.snaps[2], RestoreOptions(target=""))
    with pytest.raises(UsageError, match="lookback"):
        per_file(h.repo, h.snaps[2], tmp_path / "o", lookback=-1)


# ---- the command -----------------------------------------------------------------------------------
def test_cli(history, cli, tmp_path):
    h = history
    s1, s2, s3 = h.snaps
    out = tmp_path / "out"
    r = cli("--json", "restore", "--per-file-last-clean", s3[:10], "--target", str(out), "--verify")
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    kinds = [d["message_type"] for d in lines if d["message_type"] != "status"]
    assert kinds[-2:] == ["per_file_summary", "summary"] and set(kinds[:-2]) == {"per_file"}
    entries = {d["path"]: d for d in lines if d["message_type"] == "per_file"}
    assert entries[h.victims[0]]["snapshot"] == s2 and entries[h.notes[0]]["action"] == "skipped"
    assert_same_tree(expected_tree(h, str(tmp_path / "expected")), restored(out, h.src))

    r = cli("-v", "restore", "--per-file-last-clean", f"{s3}:{h.src}/docs", "--dry-run")
    text = r.stdout.decode()
    assert "dry run: nothing was restored" in text and f"older    {h.src}/docs/" in text
    assert f"{h.src}/src/" not in text

    for args, msg in [
        (["restore", "--per-file-last-clean", "--target", str(out)], "SNAPSHOT you name"),
        (["restore", "--per-file-last-clean", "--last-clean", "--target", str(out)], "SNAPSHOT you name"),
        (["restore", "latest", "--lookback", "2", "--target", str(out)], "go with --per-file-last-clean"),
        (["restore", "--per-file-last-clean", "latest"], "--target"),
        (["restore", "--per-file-last-clean", "latest", "-t", str(out), "--exclude", "x"], "SNAPSHOT:PATH"),
    ]:
        r = cli(*args, ok=False)
        assert r.returncode == 2 and msg in r.stderr.decode(), (args, r.stderr)


def test_an_unreadable_older_version_is_an_error_not_a_new_file(tmp_path):
    """Without the older version, a changed file would look new and unmarked: the directory is not
    restored and restore names why (exit 1)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"one\n" * 1000)
    repo = small_repo(LocalBackend(str(tmp_path / "repo")))
    guard_backup(repo, src)
    before = {os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "repo" / "data") for f in fs}
    (src / "f.txt").write_bytes(b"two\n" * 1000)
    s2, _ = guard_backup(repo, src)
    added = {os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "repo" / "data") for f in fs} - before
    (src / "f.txt").write_bytes(b"three\n" * 1000)
    s3 = set_verdict(repo, guard_backup(repo, src)[0], "suspicious", paths=[str(src / "f.txt")])
    assert added
    for p in added:
        os.chmod(p, 0o600)
        os.unlink(p)
    r = per_file(reopen(repo.backend), s3, tmp_path / "out")  # no tree in memory
    assert r.exit_code == 1 and any(f"cannot compare with its version in {s2[:8]}" in e for e in r.restore.errors), (
        r.restore.errors
    )
    assert not os.path.exists(restored(tmp_path / "out", src / "f.txt"))
