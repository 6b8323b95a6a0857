"""Guard verdicts through a mirror (engine/mirror.py, docs/mirror.md "Guard verdicts through a mirror"):
A's marks, scans and (with copy_acks) acknowledgements are copied into B, targets translated to B's
copies, so B's effective verdicts match A's; reruns copy nothing twice; hostile records are skipped;
an interrupted run ends consistent after a rerun."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from conftest import PASSWORD
from helpers import SMALL, backup, make_source, reopen, verdict_snapshot

from cermin.backend.base import Kind
from cermin.backend.faulty import FaultyBackend
from cermin.backend.memory import MemoryBackend
from cermin.engine.forget import KeepPolicy, forget
from cermin.engine.mirror import MirrorOptions, evidence_origin_chain, mirror
from cermin.errors import CerminError
from cermin.format import crypto, records
from cermin.format.records import AuxRecord
from cermin.guard.verdict import AUX_GUARD_ACK, AUX_GUARD_MARK, effective_verdicts, guard_view, write_ack, write_mark
from cermin.ops import commands
from cermin.repo.repository import Repository
from cermin.repo.snapshots import aux_records, list_snapshots
from cermin.util import ns_to_rfc3339

PW = PASSWORD.encode()
NOW = datetime.now(UTC).replace(microsecond=0)
SCAN = "guard_scan"
RANK = {"clean": 0, "unknown": 1, "suspicious": 2, "infected": 3}  # unknown is not trusted as clean


def ts(t: datetime) -> str:
    return ns_to_rfc3339(int(t.timestamp() * 1e9))


def ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


def new_repo(secrets_from=None, backend=None) -> Repository:
    return Repository.init(backend or MemoryBackend(), PW, secrets_from=secrets_from, **SMALL)


def aux(repo, type_, time, target="", data=None) -> str:
    return repo.save_object(Kind.AUX, records.encode(AuxRecord(type=type_, time=time, target=target, data=data or {})))


def scan(repo, sid, verdict, time, **data) -> str:
    return aux(repo, SCAN, ts(time), sid, {"verdict": verdict, "incomplete": False, "reasons": ["rescan"], **data})


def copies(b) -> dict[str, str]:
    """A snapshot id -> B snapshot id, for B's copies."""
    return {r.snapshot.extra["origin"]["snapshot"]: r.id for r in list_snapshots(b, include_forgotten=True)}


def verdicts(repo) -> dict[str, str]:
    return {sid: v.verdict for sid, v in effective_verdicts(repo, list_snapshots(repo)).items()}


def b_verdicts_by_origin(b) -> dict[str, str]:
    """B's effective verdicts keyed by the A snapshot each copy came from."""
    v = verdicts(b)
    return {a: v[bid] for a, bid in copies(b).items()}


def evidence_in(repo) -> list[tuple[str, AuxRecord]]:
    return [(n, r) for n, r in aux_records(repo) if r.type in (AUX_GUARD_MARK, AUX_GUARD_ACK, SCAN)]


@pytest.fixture
def tree(tmp_path):
    """A repository A with one real backup: its root tree id, for snapshot records with chosen
    times and verdicts that a mirror can copy."""
    a = new_repo()
    src = str(tmp_path / "src")
    make_source(src, files=4)
    sid = backup(a, src)
    t = a.load_snapshot(sid).tree
    a.backend.remove(Kind.SNAPSHOT, sid)
    return a, t


def incident(a: Repository, t: bytes) -> dict[str, str]:
    """A's history: clean days, a suspicious backup the operator acknowledged, an EDR mark over
    another, a scan that found one infected, a pre-guard snapshot a scan found clean."""
    s = {
        "pre": verdict_snapshot(a, ago(days=9), None, tree=t),
        "old": verdict_snapshot(a, ago(days=5), "clean", tree=t),
        "marked": verdict_snapshot(a, ago(days=3), "clean", tree=t),
        "acked": verdict_snapshot(a, ago(days=2), "suspicious", tree=t, reasons=["entropy rose"]),
        "scanned": verdict_snapshot(a, ago(days=1), "clean", tree=t),
        "new": verdict_snapshot(a, ago(hours=2), "clean", tree=t),
    }
    write_mark(a, ts(ago(days=3, hours=1)), ts(ago(days=2, hours=12)), "EDR alert 7", "infected", ts(ago(hours=30)))
    write_ack(a, s["acked"], "a user's gpg archive", ts(ago(hours=20)))
    scan(a, s["scanned"], "infected", ago(hours=10))
    scan(a, s["pre"], "clean", ago(hours=9))
    return s


def test_verdicts_match_with_copy_acks_and_stay_flagged_without(tree):
    a, t = tree
    s = incident(a, t)
    want = verdicts(a)
    assert (want[s["marked"]], want[s["acked"]], want[s["scanned"]], want[s["pre"]]) == (
        "infected",
        "clean",
        "infected",
        "clean",
    )

    # without --copy-acks: marks and alarm scans travel, the ack and the clean scan do not
    b = new_repo(secrets_from=a)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert len(res.copied) == 6 and not res.skipped
    assert res.evidence_copied == {AUX_GUARD_MARK: 1, SCAN: 1} and res.evidence_withheld == 2
    assert res.evidence_rejected == 0 and res.exit_code == 0
    got = b_verdicts_by_origin(reopen(b.backend))
    assert got[s["acked"]] == "suspicious", "A's ack does not clear B's copy unless the tenant asks"
    assert got[s["pre"]] == "unknown", "a clean scan is clearing evidence too: it makes an unjudged snapshot clean"
    assert {k: v for k, v in got.items() if k not in (s["acked"], s["pre"])} == {
        k: v for k, v in want.items() if k not in (s["acked"], s["pre"])
    }
    text = "\n".join(ln.text for ln in res.to_text())
    assert "2 acknowledgements" in text and "--copy-acks" in text

    # the tenant opts in: now B says exactly what A says
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(copy_acks=True))
    assert res.copied == [] and res.evidence_copied == {AUX_GUARD_ACK: 1, SCAN: 1}
    assert res.evidence_present == 2 and res.evidence_withheld == 0
    b = reopen(b.backend)
    assert b_verdicts_by_origin(b) == want
    # each copy names B's snapshot, keeps A's time, and says where it came from
    by_name = dict(aux_records(a))
    for _, rec in evidence_in(b):
        ((repo_id, a_name),) = evidence_origin_chain(rec.data)
        orig = by_name[a_name]
        assert repo_id == a.config.id and rec.type == orig.type and rec.time == orig.time
        assert rec.target == (copies(b)[orig.target] if orig.target else "")
        assert {k: v for k, v in rec.data.items() if k != "origin"} == orig.data

    # a rerun copies nothing
    before = {n for n, _ in evidence_in(b)}
    again = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(copy_acks=True))
    assert again.evidence_copied == {} and again.evidence_present == 4
    assert {n for n, _ in evidence_in(reopen(b.backend))} == before
    j = again.to_json()[-1]
    assert j["evidence_copied"] == {} and j["evidence_present"] == 4 and j["copy_acks"] is True


def test_forget_in_the_mirror_keeps_what_a_keeps(tree):
    """B's newest clean snapshot and alarm state follow A's evidence: a mark over A's newest backup
    opens the alarm in B too, and B's forget keeps the flagged copies."""
    a, t = tree
    clean = [verdict_snapshot(a, ago(days=6 - d), "clean", tree=t) for d in range(4)]  # 6..3 days ago
    hit = [verdict_snapshot(a, ago(days=2 - d), "clean", tree=t) for d in range(2)]  # 2, 1 days ago
    write_mark(a, ts(ago(days=2, hours=1)), "", "ongoing incident", "infected", ts(ago(hours=1)))
    b = new_repo(secrets_from=a)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    b = reopen(b.backend)
    c = copies(b)
    view = guard_view(b, list_snapshots(b))
    assert set(view.last_clean) == {c[clean[-1]]}
    assert all(view.alarm_open(c[x]) for x in clean + hit)
    forget(b, policy=KeepPolicy(last=1), now=NOW)
    live = {r.id for r in list_snapshots(b)}
    assert {c[x] for x in hit} | {c[clean[-1]]} <= live, "flagged copies and the last clean one stay in B"


def test_ack_order_follows_record_time_not_copy_order(tree):
    """A mark recorded after an ack is not cleared by it, in A and in B — though B stores the mark
    before the ack (marks are copied first)."""
    a, t = tree
    sid = verdict_snapshot(a, ago(days=1), "suspicious", tree=t)
    write_mark(a, ts(ago(days=2)), ts(ago(hours=20)), "earlier alert", "suspicious", ts(ago(hours=6)))
    write_ack(a, sid, "benign", ts(ago(hours=5)))
    write_mark(a, ts(ago(days=1, hours=1)), ts(ago(hours=22)), "later alert", "infected", ts(ago(hours=4)))
    assert verdicts(a)[sid] == "infected"
    b = new_repo(secrets_from=a)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(copy_acks=True))
    assert res.evidence_copied == {AUX_GUARD_MARK: 2, AUX_GUARD_ACK: 1}
    b = reopen(b.backend)
    (bsid,) = copies(b).values()
    v = effective_verdicts(b, list_snapshots(b))[bsid]
    assert v.verdict == "infected"
    assert any("earlier alert" in r and "acknowledged later" in r for r in v.reasons)


def test_acks_and_scans_wait_for_their_snapshot(tree):
    """Evidence naming a snapshot B has no copy of (not selected, or damaged in A) waits; once the
    snapshot is copied, the next run brings its evidence."""
    a, t = tree
    one = verdict_snapshot(a, ago(days=2), "clean", tree=t, host="one")
    two = verdict_snapshot(a, ago(days=1), "clean", tree=t, host="two")
    scan(a, two, "suspicious", ago(hours=3))
    b = new_repo(secrets_from=a)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(hosts=("one",)))
    assert [x for x, _ in res.copied] == [one] and res.evidence_waiting == 1 and res.evidence_copied == {}
    dry = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(dry_run=True))
    assert dry.to_copy == [two] and dry.evidence_copied == {SCAN: 1}
    assert evidence_in(reopen(b.backend)) == []
    assert "would copy 1 record (1 scan)" in "\n".join(ln.text for ln in dry.to_text())
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert res.evidence_copied == {SCAN: 1} and res.evidence_waiting == 0
    assert b_verdicts_by_origin(reopen(b.backend)) == verdicts(a)


def test_hostile_source_records_are_skipped_and_reported(tree):
    a, t = tree
    sid = verdict_snapshot(a, ago(days=1), "infected", tree=t)
    good = write_mark(a, ts(ago(days=3)), ts(ago(days=2)), "real alert", "suspicious", ts(ago(hours=2)))
    junk = os.urandom(300)  # planted: no key
    a.backend.save(Kind.AUX, crypto.file_id(junk), junk)
    future = ts(NOW + timedelta(days=300))
    bad = {
        aux(a, AUX_GUARD_ACK, future, sid, {"reason": "from the future"}),
        aux(a, AUX_GUARD_ACK, ts(ago(hours=1)), sid[:10], {"reason": "short target"}),
        aux(a, AUX_GUARD_ACK, ts(ago(hours=1)), "z" * 64, {"reason": "not hex"}),
        aux(a, AUX_GUARD_MARK, ts(ago(hours=1)), data={"from": ts(ago(days=1)), "to": ts(ago(days=2)), "reason": "x"}),
        aux(a, AUX_GUARD_MARK, "last tuesday", data={"from": ts(ago(days=1)), "to": "", "reason": "x"}),
        aux(a, SCAN, ts(ago(hours=1)), sid, {"verdict": "pwned"}),
    }
    # a forged record whose origin claims to be a copy of the real mark must not stop the real one
    forged = aux(
        a,
        AUX_GUARD_MARK,
        ts(ago(hours=1)),
        data={
            "from": ts(ago(days=30)),
            "to": ts(ago(days=29)),
            "reason": "f",
            "origin": {"repository": a.config.id, "aux": good},
        },
    )
    aux(a, "protection", ts(ago(hours=1)), sid, {"until": ts(NOW + timedelta(days=9))})  # not evidence: not copied
    b = new_repo(secrets_from=a)
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions(copy_acks=True))
    assert len(res.copied) == 1 and res.exit_code == 0
    assert res.evidence_copied == {AUX_GUARD_MARK: 2}
    assert res.evidence_rejected == len(bad) + 1
    assert set(res.evidence_rejected_sample) == bad | {crypto.file_id(junk)}
    assert any("not valid guard evidence" in w for w in res.warnings + res._notes())
    b = reopen(b.backend)
    names = {evidence_origin_chain(r.data)[0][1] for _, r in evidence_in(b)}
    assert names == {good, forged}
    assert not [r for _, r in aux_records(b) if r.type == "protection"]
    assert b_verdicts_by_origin(b) == verdicts(a)


def test_a_mark_of_the_source_does_not_close_the_targets_own_alarm(tree):
    a, t = tree
    verdict_snapshot(a, ago(days=1), "clean", tree=t)
    start = ts(ago(days=2))
    b = new_repo(secrets_from=a)
    write_mark(b, start, "", "the tenant's own EDR", "suspicious", ts(ago(hours=3)))
    # A opens and closes an alarm with the same start: its open mark travels, its closer does not
    write_mark(a, start, "", "dc incident", "suspicious", ts(ago(hours=2)))
    write_mark(a, start, ts(ago(days=1, hours=12)), "dc incident over", "suspicious", ts(ago(hours=1)))
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert res.evidence_copied == {AUX_GUARD_MARK: 1} and res.marks_withheld == 1
    assert any("would close an alarm" in w for w in res._notes())
    b = reopen(b.backend)
    assert all(v.alarm_open for v in effective_verdicts(b, list_snapshots(b)).values())
    # without an alarm of its own in B, A's open and closing marks both travel, and close it
    b2 = new_repo(secrets_from=a)
    res = mirror(reopen(a.backend), reopen(b2.backend), MirrorOptions())
    assert res.evidence_copied == {AUX_GUARD_MARK: 2} and res.marks_withheld == 0
    b2 = reopen(b2.backend)
    assert not any(v.alarm_open for v in effective_verdicts(b2, list_snapshots(b2)).values())


def test_mirror_back_and_mirror_of_a_mirror(tree):
    a, t = tree
    sid = verdict_snapshot(a, ago(days=1), "clean", tree=t)
    mark = write_mark(a, ts(ago(days=2)), ts(ago(hours=1)), "alert", "suspicious", ts(ago(hours=1)))
    scan(a, sid, "infected", ago(hours=1))
    b = new_repo(secrets_from=a)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    # B -> C: the copies in C name B as their origin and A upstream
    c = new_repo(secrets_from=a)
    res = mirror(reopen(b.backend), reopen(c.backend), MirrorOptions())
    assert res.evidence_copied == {AUX_GUARD_MARK: 1, SCAN: 1}
    c = reopen(c.backend)
    chains = [evidence_origin_chain(r.data) for _, r in evidence_in(c)]
    assert all(ch[0][0] == b.config.id and ch[1][0] == a.config.id for ch in chains)
    assert mark in {ch[1][1] for ch in chains}
    assert set(verdicts(c).values()) == {"infected"}
    # B -> A: nothing of A's comes back to it
    before = {n for n, _ in a.backend.list(Kind.AUX)}
    res = mirror(reopen(b.backend), reopen(a.backend), MirrorOptions(copy_acks=True))
    assert res.evidence_copied == {} and res.evidence_present == 2 and res.copied == []
    assert [n for n, _ in sorted(a.backend.list(Kind.AUX)) if n not in before] == [
        n for n, r in aux_records(reopen(a.backend)) if r.type == "mirror_run"
    ]


def test_a_snapshot_copied_twice_gets_its_evidence_on_both_copies(tree):
    a, t = tree
    sid = verdict_snapshot(a, ago(days=1), "clean", tree=t)
    scan(a, sid, "infected", ago(hours=1))
    b = new_repo(secrets_from=a)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    b = reopen(b.backend)
    (first,) = list_snapshots(b)
    second = b.save_snapshot(first.snapshot)  # two runs at once both copied it (another salt: another id)
    assert second != first.id
    assert verdicts(b) == {first.id: "infected", second: "clean"}
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert res.evidence_copied == {SCAN: 1}
    assert verdicts(reopen(b.backend)) == {first.id: "infected", second: "infected"}
    res = mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    assert res.evidence_copied == {} and res.evidence_present == 1


@pytest.mark.parametrize("same_key", [True, False], ids=["same-key", "rechunk"])
@pytest.mark.parametrize(("mode", "crash_after"), [("fail", False), ("crash", False), ("crash", True)])
def test_interrupted_run_then_rerun_ends_consistent(tree, same_key, mode, crash_after):
    """A fault at every call to B, then a clean rerun: B's verdicts equal A's, and every record of
    A's is in B exactly once."""
    a, t = tree
    incident(a, t)
    want = verdicts(a)
    opts = MirrorOptions(copy_acks=True)

    def fresh(backend):
        return new_repo(secrets_from=a if same_key else None, backend=backend)

    probe_inner = MemoryBackend()
    fresh(probe_inner)
    probe = FaultyBackend(probe_inner)
    commands.mirror(reopen(a.backend), Repository.open(probe, PW), opts)
    calls = probe.calls
    n_evidence = len(evidence_in(reopen(a.backend)))
    interrupted = 0
    for at in range(1, calls + 1, max(1, calls // 25)):
        inner = MemoryBackend()
        fresh(inner)
        fb = FaultyBackend(inner, mode=mode, at=at, crash_after=crash_after)
        try:
            commands.mirror(reopen(a.backend), Repository.open(fb, PW), opts)
        except CerminError:
            pass
        # whatever the interrupted run left, no copy in B is less flagged than its original in A
        # (marks first, then what raises, what clears last)
        partial = b_verdicts_by_origin(reopen(inner))
        assert all(RANK[v] >= RANK[want[x]] for x, v in partial.items()), (
            at,
            {x[:6]: (v, want[x]) for x, v in partial.items() if RANK[v] < RANK[want[x]]},
        )
        interrupted += partial != want
        res = commands.mirror(reopen(a.backend), reopen(inner), opts)
        assert not res.skipped and res.evidence_rejected == 0, at
        b = reopen(inner)
        assert b_verdicts_by_origin(b) == want, at
        origins = [(evidence_origin_chain(r.data)[0][1], r.target) for _, r in evidence_in(b)]
        live = {r.id for r in list_snapshots(b)}
        named = [o for o in origins if o[1] in live or not o[1]]
        assert len(named) == len(set(named)) == n_evidence, at
        # the rest name a copy the interrupted run sealed but never stored: they name nothing
        assert len(origins) - len(named) <= 1, at
    assert interrupted, "some faults left B behind A"


@pytest.mark.parametrize("mode", ["truncate", "flip"])
def test_evidence_stored_damaged_is_written_again(tree, mode):
    """B keeps one object damaged (a snapshot copy, or an evidence copy) and says it stored it: the
    run seals it again, and B's verdicts are A's."""
    a, t = tree
    incident(a, t)
    want = verdicts(a)
    opts = MirrorOptions(copy_acks=True)
    probe_inner = MemoryBackend()
    new_repo(secrets_from=a, backend=probe_inner)
    probe = FaultyBackend(probe_inner, only="save")
    commands.mirror(reopen(a.backend), Repository.open(probe, PW), opts)
    for at in range(1, probe.calls + 1):
        inner = MemoryBackend()
        new_repo(secrets_from=a, backend=inner)
        fb = FaultyBackend(inner, mode=mode, at=at, only="save")
        res = commands.mirror(reopen(a.backend), Repository.open(fb, PW), opts)
        assert fb.fired and not res.skipped, at
        assert b_verdicts_by_origin(reopen(inner)) == want, at
        again = commands.mirror(reopen(a.backend), reopen(inner), opts)
        assert again.evidence_copied == {} and again.copied == [], at


def _json_lines(r) -> list[dict]:
    import json

    return [json.loads(ln) for ln in r.stdout.decode().splitlines() if ln.strip()]


def test_cli_mirror_copies_marks_and_acks_only_when_asked(cli, tmp_path):
    src = tmp_path / "src"
    make_source(str(src), files=2)
    a = cli.repo
    cli("init")
    cli("backup", str(src))
    (snap,) = [d for d in _json_lines(cli("snapshots", "--json")) if d["message_type"] == "snapshots"][0]["snapshots"]
    day = snap["time"][:10]
    cli("guard", "mark", "--from", day, "--reason", "EDR 12", "--infected")
    cli("guard", "ack", snap["id"], "--reason", "drill")
    b = str(tmp_path / "B")
    env = {"CERMIN_FROM_PASSWORD": PASSWORD}
    cli("-r", b, "init", "--copy-chunker-params-from", a, password="b-pass", env=env)
    r = cli("mirror", "--from", a, "--to", b, "--json", password="b-pass", env=env)
    (summary,) = [d for d in _json_lines(r) if d["message_type"] == "mirror_summary"]
    assert summary["evidence_copied"] == {"guard_mark": 1} and summary["evidence_withheld"] == 1
    assert summary["copy_acks"] is False
    r = cli("mirror", "--from", a, "--to", b, "--copy-acks", password="b-pass", env=env)
    assert "guard evidence: copied 1 record (1 ack), 1 already in the target" in r.stdout.decode()
    r = cli("-r", b, "snapshots", "--json", password="b-pass")
    (listed,) = [d for d in _json_lines(r) if d["message_type"] == "snapshots"]
    assert [d["guard"]["verdict"] for d in listed["snapshots"]] == [
        d["guard"]["verdict"] for d in [x for x in _json_lines(cli("snapshots", "--json"))][0]["snapshots"]
    ]


def test_a_scans_parent_is_translated_too(tree):
    a, t = tree
    one = verdict_snapshot(a, ago(days=2), "clean", tree=t)
    two = verdict_snapshot(a, ago(days=1), "clean", tree=t)
    scan(a, two, "suspicious", ago(hours=2), parent=one)
    scan(a, one, "suspicious", ago(hours=1), parent="f" * 64)  # a parent B has no copy of
    b = new_repo(secrets_from=a)
    mirror(reopen(a.backend), reopen(b.backend), MirrorOptions())
    b = reopen(b.backend)
    c = copies(b)
    parents = {r.target: r.data["parent"] for _, r in evidence_in(b)}
    assert parents == {c[two]: c[one], c[one]: ""}
