"""guard/scan.py (`cermin guard scan`): a snapshot made without the guard, replayed from its data, gets the
verdict the guard gives the same backup inline; the guard_scan aux record raises verdicts (and gives one
to a snapshot without), never lowers; hostile scan records are ignored; YARA rules flag matching files."""

from __future__ import annotations

import json
import os
import random
import sys
from datetime import UTC, datetime, timedelta

import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import encrypt_file, guard_backup, guard_tree, pack_entries, verdict_snapshot

from cermin.backend.base import Kind
from cermin.backend.memory import MemoryBackend
from cermin.engine.backup import BackupOptions, run_backup
from cermin.errors import CerminError, UsageError
from cermin.format import pack, records
from cermin.format.records import AuxRecord
from cermin.guard import scan as scan_mod
from cermin.guard.lastclean import last_clean
from cermin.guard.scan import ScanOptions, load_yara, run_scan
from cermin.guard.verdict import AUX_GUARD_SCAN, effective_verdicts, write_ack
from cermin.ops import commands
from cermin.repo.repository import Repository
from cermin.repo.snapshots import aux_records, list_snapshots, resolve
from cermin.util import ns_to_rfc3339

NOW = datetime.now(UTC).replace(microsecond=0)


def ts(t: datetime) -> str:
    return ns_to_rfc3339(int(t.timestamp() * 1e9))


def ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


def plain_backup(repo: Repository, src) -> str:
    """A backup without the guard (as `backup --no-guard`, or a repository made before it)."""
    s = run_backup(repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2))
    assert not s.errors and "guard" not in s.snapshot.extra
    return s.snapshot_id


def verdicts(repo) -> dict:
    return {sid: v.verdict for sid, v in effective_verdicts(repo, list_snapshots(repo)).items()}


def scan(repo, *sids, **kw):
    return run_scan(repo, [resolve(repo, s) for s in sids], ScanOptions(**kw))


@pytest.fixture
def pair():
    """Two repositories with the same chunker and blob ids: one backed up with the guard, one without."""
    guarded = Repository.init(MemoryBackend(), PASSWORD.encode(), kdf=FAST_KDF)
    plain = Repository.init(MemoryBackend(), PASSWORD.encode(), kdf=FAST_KDF, secrets_from=guarded)
    return guarded, plain


def _attack(src, texts, how: str) -> None:
    rnd = random.Random(11)
    if how == "rename_notes":
        for p in texts[:12]:
            encrypt_file(p, "whole", rnd)
            os.rename(p, p + ".lockbit")
        for d in ("docs", "src", "notes"):
            (src / d / "HOW_TO_DECRYPT.txt").write_text("pay us\n")
    elif how == "formats":
        for v in ("docs/report.pdf", "docs/letter.docx", "notes/chart.png", "src/data.gz", "src/app.sqlite"):
            encrypt_file(str(src / v), "whole", rnd)
    else:
        for p in texts[:10]:
            encrypt_file(p, how, rnd)


# ---- the replay gives the inline verdict ------------------------------------------------------
@pytest.mark.parametrize("how", ["whole", "first_mib", "intermittent", "rename_notes", "formats"])
def test_scan_of_a_no_guard_snapshot_gives_the_inline_verdict(pair, tmp_path, how, monkeypatch):
    monkeypatch.setattr(scan_mod, "READ_BATCH", 7)  # heads fetched and judged in several batches
    guarded, plain = pair
    src = tmp_path / "src"
    texts = guard_tree(src, files=40, big=1, seed=5)
    _, first = guard_backup(guarded, src)
    p1 = plain_backup(plain, src)
    _attack(src, texts, how)
    _, inline = guard_backup(guarded, src)
    p2 = plain_backup(plain, src)
    assert inline["verdict"] != "clean", inline

    # alone: the parent has no fingerprints, the scan computes them from the parent's data
    res = scan(plain, p2, record=False)
    got = res.scans[0].data
    assert res.scans[0].parent == p1 and not res.scans[0].errors
    for k in ("verdict", "score", "reasons", "paths", "signals"):
        assert got[k] == inline[k], (k, got[k], inline[k])
    assert verdicts(plain)[p2] == "unknown", "a dry run writes nothing"

    # both, oldest first: the first scan's fingerprints serve the second, and both are recorded
    res = scan(plain, p2, p1)
    assert [s.snapshot_id for s in res.scans] == [p1, p2]
    assert res.scans[0].data["verdict"] == first["verdict"] == "clean"
    assert {k: res.scans[1].data[k] for k in ("verdict", "signals")} == {k: inline[k] for k in ("verdict", "signals")}
    v = verdicts(plain)
    assert v[p1] == "clean" and v[p2] == inline["verdict"]
    assert (res.scans[1].before, res.scans[1].after) == ("unknown", inline["verdict"])
    assert last_clean(plain).id == p1


def test_benign_churn_stays_clean(pair, tmp_path):
    _, plain = pair
    src = tmp_path / "src"
    texts = guard_tree(src, files=40, big=0, seed=6)
    p1 = plain_backup(plain, src)
    for p in texts[::10]:  # appended lines, a deleted file, a new text file
        with open(p, "ab") as f:
            f.write(b"one more line of plain text\n")
    os.remove(texts[1])
    (src / "notes" / "todo.txt").write_text("buy milk\n" * 500)
    p2 = plain_backup(plain, src)
    res = scan(plain, p2)
    s = res.scans[0]
    assert s.data["verdict"] == "clean" and s.parent == p1 and s.record and res.exit_code == 0
    assert s.data["signals"]["files_changed"] == 4 and s.data["signals"]["files_removed"] == 1
    assert s.data["files_read"] == 5, "only new and changed files are read"
    assert verdicts(plain)[p2] == "clean" and s.before == "unknown"
    assert [r.type for _, r in aux_records(plain)] == [AUX_GUARD_SCAN]


def test_a_guarded_snapshot_keeps_its_own_verdict_and_a_scan_only_raises(pair, tmp_path):
    guarded, _ = pair
    src = tmp_path / "src"
    texts = guard_tree(src, files=30, big=0, seed=7)
    g1, _ = guard_backup(guarded, src)
    _attack(src, texts, "whole")
    g2, own = guard_backup(guarded, src)
    assert own["verdict"] == "infected"
    res = scan(guarded, g1, g2)
    assert [s.after for s in res.scans] == ["clean", "infected"]
    write_ack(guarded, g2, "test data", ts(datetime.now(UTC)))
    assert verdicts(guarded)[g2] == "clean", "an ack clears the own verdict and the scans recorded before it"
    res = scan(guarded, g2)
    assert res.scans[0].before == "clean" and res.scans[0].after == "infected", "a later scan raises again"


# ---- verdicts from scan records --------------------------------------------------------------
def _scan_rec(repo, target, time, data) -> str:
    rec = AuxRecord(type=AUX_GUARD_SCAN, time=time, target=target, data=data)
    return repo.save_object(Kind.AUX, records.encode(rec))


def _data(verdict, **kw):
    return {"verdict": verdict, "score": 0.5, "reasons": ["r"], "paths": ["/p"], "incomplete": False} | kw


def test_scan_records_raise_give_a_verdict_and_never_lower(mem_repo):
    repo = mem_repo
    pre = verdict_snapshot(repo, ago(days=3), None)
    bad = verdict_snapshot(repo, ago(days=2), "infected")
    good = verdict_snapshot(repo, ago(days=1), "clean")
    _scan_rec(repo, pre, ts(ago(hours=5)), _data("clean", score=0.01))
    _scan_rec(repo, bad, ts(ago(hours=5)), _data("clean"))
    _scan_rec(repo, good, ts(ago(hours=5)), _data("suspicious", reasons=["3 file(s) stopped compressing"]))
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert {k: v.verdict for k, v in eff.items()} == {pre: "clean", bad: "infected", good: "suspicious"}
    assert eff[pre].own == "unknown" and eff[pre].score == 0.01 and len(eff[pre].scans) == 1
    assert any("stopped compressing" in r for r in eff[good].reasons) and "/p" in eff[good].paths
    assert eff[good].alarm_open, "the newest snapshot is suspicious after the scan"
    write_ack(repo, good, "benign", ts(ago(hours=4)))
    assert verdicts(repo)[good] == "clean"
    _scan_rec(repo, good, ts(ago(hours=3)), _data("infected"))
    assert verdicts(repo)[good] == "infected", "a scan recorded after the ack counts"
    # an incomplete clean scan gives no verdict; an incomplete alarm still counts
    pre2 = verdict_snapshot(repo, ago(days=4), None, host="other")
    _scan_rec(repo, pre2, ts(ago(hours=2)), _data("clean", incomplete=True))
    assert verdicts(repo)[pre2] == "unknown"
    _scan_rec(repo, pre2, ts(ago(hours=1)), _data("suspicious", incomplete=True))
    assert verdicts(repo)[pre2] == "suspicious"


def test_hostile_scan_records_are_ignored(mem_repo):
    repo = mem_repo
    pre = verdict_snapshot(repo, ago(days=2), None)
    bad = verdict_snapshot(repo, ago(days=1), "infected")
    future = ts(NOW + timedelta(days=365))
    _scan_rec(repo, pre, future, _data("infected"))  # from the future: would hold an alarm forever
    _scan_rec(repo, pre, "yesterday", _data("infected"))
    _scan_rec(repo, pre[:8], ts(ago(hours=1)), _data("infected"))  # not a full id
    _scan_rec(repo, "z" * 64, ts(ago(hours=1)), _data("infected"))
    _scan_rec(repo, pre, ts(ago(hours=1)), _data("pwned"))
    _scan_rec(repo, pre, ts(ago(hours=1)), ["not", "a", "dict"])  # type: ignore[arg-type]
    _scan_rec(repo, pre, ts(ago(hours=1)), {"verdict": "clean"})  # no explicit complete: proves nothing
    _scan_rec(repo, bad, ts(ago(hours=1)), _data("clean"))  # a clean scan never lowers
    assert verdicts(repo) == {pre: "unknown", bad: "infected"}
    wild = _data(
        "suspicious",
        score=float("nan"),
        reasons=["x\n\x1b[31m" * 1000, 5, None] + ["r"] * 100,
        paths="not a list",
        yara={"rules": 7, "matches": [{"rule": "R", "path": 3}, "x", {"rule": "\x1bR", "path": "/a"}]},
    )
    _scan_rec(repo, pre, ts(ago(minutes=30)), wild)
    v = effective_verdicts(repo, list_snapshots(repo))[pre]
    assert v.verdict == "suspicious" and v.score is None and v.paths == []
    s = v.scans[-1]
    assert len(s.reasons) <= 50 and all(len(r) <= 500 and "\x1b" not in r and "\n" not in r for r in s.reasons)
    assert s.yara_rules == "" and s.yara_matches == [("?R", "/a")]
    json.dumps(v.to_json())


# ---- YARA ------------------------------------------------------------------------------------
RULE = 'rule cermin_test_marker { strings: $a = "CERMIN-YARA-MARKER-7731" condition: $a }\n'


def test_missing_yara_extra_is_one_clear_line(monkeypatch, tmp_path):
    rules = tmp_path / "r.yar"
    rules.write_text(RULE)
    monkeypatch.setitem(sys.modules, "yara_x", None)
    with pytest.raises(CerminError, match=r"pip install 'cermin\[yara\]'"):
        load_yara(str(rules))


def test_yara_rule_flags_a_marker(mem_repo, tmp_path):
    pytest.importorskip("yara_x")
    src = tmp_path / "src"
    guard_tree(src, files=12, big=0, seed=8)
    (src / "docs" / "old" / "kept.txt").write_bytes(b"harmless " * 200 + b"CERMIN-YARA-MARKER-7731 old\n")
    p1 = plain_backup(mem_repo, src)
    (src / "notes" / "dropper.sh").write_bytes(b"#!/bin/sh\n" + b"echo hi\n" * 300 + b"CERMIN-YARA-MARKER-7731\n")
    p2 = plain_backup(mem_repo, src)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "marker.yar").write_text(RULE)
    (rules / "other.yara").write_text('rule never { strings: $a = "NEVER-THERE-91" condition: $a }\n')
    (rules / "README").write_text("not a rule file")

    res = run_scan(mem_repo, [resolve(mem_repo, p2)], ScanOptions(yara=str(rules), record=False))
    d = res.scans[0].data
    assert d["verdict"] == "infected" and d["score"] == 1.0
    assert d["reasons"][0].startswith("YARA rule cermin_test_marker matched 1 file")
    assert d["paths"][0].endswith("/notes/dropper.sh"), "only new and changed files are matched"
    y = d["yara"]
    assert y["files"] == 1 and y["rule_files"] == ["marker.yar", "other.yara"] and len(y["rules"]) == 64
    assert y["matches"] == [{"rule": "cermin_test_marker", "path": d["paths"][0]}]

    res = run_scan(
        mem_repo, [resolve(mem_repo, p2)], ScanOptions(yara=load_yara(str(rules)), all_files=True, record=True)
    )
    d = res.scans[0].data
    assert {m["path"].rsplit("/", 1)[1] for m in d["yara"]["matches"]} == {"dropper.sh", "kept.txt"}
    assert d["yara"]["files"] == resolve(mem_repo, p2).snapshot.summary.total_files
    v = effective_verdicts(mem_repo, list_snapshots(mem_repo))
    assert v[p2].verdict == "infected" and v[p1].verdict == "unknown"
    assert v[p2].scans[0].yara_matches and any("YARA rule" in r for r in v[p2].reasons)

    # a first snapshot: every file is new, so the old marker is matched too
    res = run_scan(mem_repo, [resolve(mem_repo, p1)], ScanOptions(yara=str(rules), record=False))
    assert res.scans[0].parent is None and res.scans[0].data["verdict"] == "infected"

    bad = tmp_path / "bad.yar"
    bad.write_text("rule { broken")
    with pytest.raises(CerminError, match="do not compile"):
        load_yara(str(bad))
    with pytest.raises(UsageError):
        run_scan(mem_repo, [resolve(mem_repo, p2)], ScanOptions(all_files=True))


# ---- damage, options, library ------------------------------------------------------------------
def test_unreadable_data_makes_the_scan_incomplete(local_repo, tmp_path):
    src = tmp_path / "src"
    guard_tree(src, files=8, big=0, seed=9)
    p1 = plain_backup(local_repo, src)
    for name, entries in pack_entries(local_repo).items():
        if all(e.type == pack.DATA for e in entries):  # file data gone, trees kept
            local_repo.backend.remove(Kind.DATA, name)
    res = scan(local_repo, p1)
    s = res.scans[0]
    assert res.exit_code == 3 and s.error_count == 14 and s.data["incomplete"] and s.data["verdict"] == "clean"
    assert all("data unreadable" in e for e in s.errors), s.errors
    assert verdicts(local_repo)[p1] == "unknown", "an incomplete clean scan is no verdict"
    assert any("unreadable" in line.text for line in res.to_text())


def test_ops_guard_scan_takes_names_all_and_a_parent(mem_repo, tmp_path):
    src = tmp_path / "src"
    texts = guard_tree(src, files=10, big=0, seed=10)
    p1 = plain_backup(mem_repo, src)
    with open(texts[0], "ab") as f:
        f.write(b"more\n")
    p2 = plain_backup(mem_repo, src)
    res = commands.guard_scan(mem_repo, [], ScanOptions(record=False), all_snapshots=True)
    assert [s.snapshot_id for s in res.scans] == [p1, p2] and res.scans[1].parent == p1
    res = commands.guard_scan(mem_repo, ["latest"], ScanOptions(parent=p2[:8], record=False))
    assert res.scans[0].snapshot_id == p2 and res.scans[0].parent is None, "a snapshot is not its own parent"
    assert res.scans[0].data["files_read"] == 10 + 6
    with pytest.raises(UsageError):
        commands.guard_scan(mem_repo, [])
    assert not aux_records(mem_repo)


# ---- CLI -------------------------------------------------------------------------------------
def jlines(r) -> list[dict]:
    return [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]


def test_guard_scan_cli(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    texts = guard_tree(src, files=30, big=0, seed=12)
    cli("backup", "--no-guard", str(src))
    rnd = random.Random(3)
    for p in texts[:12]:
        encrypt_file(p, "whole", rnd)
    cli("backup", "--no-guard", str(src))
    snaps = jlines(cli("--json", "snapshots"))[0]["snapshots"]
    first, second = snaps[0]["short_id"], snaps[1]["short_id"]
    assert [s["guard"]["verdict"] for s in snaps] == ["unknown", "unknown"]

    r = cli("guard", "scan", second, "--dry-run")
    out = r.stdout.decode()
    assert "infected" in out and "not recorded" in out and "unknown -> infected" in out
    assert "guard report" in r.stderr.decode()
    assert all(s["guard"]["verdict"] == "unknown" for s in jlines(cli("--json", "snapshots"))[0]["snapshots"])

    lines = jlines(cli("--json", "guard", "scan", first, second))
    scans = [d for d in lines if d["message_type"] == "guard_scan"]
    assert [d["verdict"] for d in scans] == ["clean", "infected"] and all(d["recorded"] for d in scans)
    assert scans[1]["before"] == "unknown" and scans[1]["effective"] == "infected" and scans[1]["parent"]
    assert all(d["message_type"] in ("guard_scan", "status") for d in lines)

    table = cli("snapshots").stdout.decode()
    assert "clean" in table and "infected" in table
    rep = cli("guard", "report", second).stdout.decode()
    assert "scan" in rep and "infected" in rep and "file(s)" in rep
    rep = jlines(cli("--json", "guard", "report", second))[0]
    assert rep["verdict"] == "infected" and rep["own"] == "unknown" and rep["scans"][0]["verdict"] == "infected"
    snaps = jlines(cli("--json", "snapshots"))[0]["snapshots"]
    assert snaps[1]["guard"]["scans"][0]["id"] == scans[1]["record"]

    assert cli("guard", "scan", ok=False).returncode == 2
    assert cli("guard", "scan", first, "--all-files", ok=False).returncode == 2
    assert cli("guard", "scan", "deadbeef", ok=False).returncode == 1
