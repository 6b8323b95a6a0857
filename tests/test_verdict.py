"""guard/verdict.py and what verdicts change: effective verdicts with marks and acknowledgements
(hostile records ignored), forget never removing the newest clean snapshot, keep rules counting only
clean snapshots during an alarm, the backup alarm hook, and the guard CLI."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta

import pytest
from helpers import guard_extra, verdict_snapshot

from cermin.backend.base import Kind
from cermin.engine.backup import BackupOptions
from cermin.engine.forget import KeepPolicy, forget, remove_snapshots
from cermin.errors import UsageError
from cermin.format import records
from cermin.format.records import AuxRecord, Snapshot
from cermin.guard.verdict import (
    AUX_GUARD_ACK,
    AUX_GUARD_MARK,
    effective_verdicts,
    own_verdict,
    write_ack,
    write_mark,
)
from cermin.ops import commands
from cermin.repo.snapshots import list_snapshots
from cermin.util import ns_to_rfc3339

NOW = datetime.now(UTC).replace(microsecond=0)


def ts(t: datetime) -> str:
    return ns_to_rfc3339(int(t.timestamp() * 1e9))


def ago(**kw) -> datetime:
    return NOW - timedelta(**kw)


def verdicts(repo) -> dict:
    return {sid: v.verdict for sid, v in effective_verdicts(repo, list_snapshots(repo)).items()}


def aux(repo, type_, time, target="", data=None) -> str:
    rec = AuxRecord(type=type_, time=time, target=target, data=data or {})
    return repo.save_object(Kind.AUX, records.encode(rec))


# ---- effective verdicts -----------------------------------------------------------------------
def test_own_verdict_is_validated_as_hostile_input():
    def snap(extra):
        return Snapshot(time=ts(NOW), tree=b"\0" * 32, paths=[b"/x"], extra=extra)

    assert own_verdict(snap({}))[0] == "unknown"
    assert own_verdict(snap({"guard": "infected"}))[0] == "unknown"
    assert own_verdict(snap({"guard": {"verdict": "pwned"}}))[0] == "unknown"
    v, score, reasons, paths = own_verdict(
        snap(
            {
                "guard": {
                    "verdict": "infected",
                    "score": float("nan"),
                    "reasons": ["x\n\x1b[31m" * 1000, 5, None] + ["r"] * 100,
                    "paths": "not a list",
                }
            }
        )
    )
    assert v == "infected" and score is None and paths == []
    assert len(reasons) <= 50 and len(reasons[0]) <= 500 and "\x1b" not in reasons[0] and "\n" not in reasons[0]
    assert own_verdict(snap({"guard": {"verdict": "clean", "score": True}}))[1] is None


def test_marks_flag_their_window_and_acks_clear_only_older_evidence(mem_repo):
    repo = mem_repo
    old = verdict_snapshot(repo, ago(days=3), "clean")
    mid = verdict_snapshot(repo, ago(days=2), "clean")
    bad = verdict_snapshot(repo, ago(days=1), "suspicious", reasons=["entropy rose"])
    new = verdict_snapshot(repo, ago(hours=1), "clean")
    pre = verdict_snapshot(repo, ago(days=9), None)
    # `new` is clean on its own but taken after an unacknowledged alarm: it may still hold what `bad` found
    assert verdicts(repo) == {old: "clean", mid: "clean", bad: "suspicious", new: "suspicious", pre: "unknown"}
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert eff[new].inherited_from == bad and eff[new].judged == "clean" and eff[new].alarm_open
    assert eff[new].to_json()["inherited_from"] == bad

    write_mark(repo, ts(ago(days=2, hours=1)), ts(ago(hours=12)), "EDR alert 42", "infected", ts(ago(hours=2)))
    v = verdicts(repo)
    assert (v[old], v[mid], v[bad], v[new]) == ("clean", "infected", "infected", "suspicious")
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert any("EDR alert 42" in r for r in eff[mid].reasons)
    assert eff[new].alarm_open, "the newest snapshot inherits the unacknowledged alarm"

    write_ack(repo, bad, "a user's gpg archive", ts(ago(hours=1)))
    v = verdicts(repo)
    assert v[bad] == "clean" and v[mid] == "infected", "the ack clears its own snapshot and older marks only"
    assert v[new] == "clean", "the acknowledged snapshot ends what `mid` passed on"
    write_mark(repo, ts(ago(days=1, hours=1)), ts(ago(hours=20)), "second alert", "suspicious", ts(ago(minutes=30)))
    assert verdicts(repo)[bad] == "suspicious", "a mark recorded after the ack is never cleared by it"
    assert verdicts(repo)[new] == "suspicious"

    write_mark(repo, ts(ago(minutes=10)), "", "ongoing incident", "suspicious", ts(ago(minutes=5)))
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert all(v.alarm_open for v in eff.values()), "an open mark opens the alarm everywhere"
    write_mark(repo, ts(ago(minutes=10)), ts(ago(minutes=1)), "incident over", "suspicious", ts(ago(minutes=1)))
    write_ack(repo, new, "restored and checked", ts(ago(seconds=30)))  # the newest data is known good
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert eff[new].verdict == "clean" and not eff[new].inherited_from
    assert not eff[new].alarm_open, "a later mark with the same start closes the open one"


def test_hostile_and_future_dated_evidence_is_ignored(mem_repo):
    repo = mem_repo
    bad = verdict_snapshot(repo, ago(days=1), "infected")
    good = verdict_snapshot(repo, ago(days=2), "clean")
    future = ts(NOW + timedelta(days=365))
    aux(repo, AUX_GUARD_ACK, future, bad, {"reason": "planted ack from the future"})
    aux(repo, AUX_GUARD_ACK, "yesterday", bad, {"reason": "bad date"})
    aux(repo, AUX_GUARD_ACK, ts(ago(hours=1)), bad[:8], {"reason": "short target"})
    aux(repo, AUX_GUARD_ACK, ts(ago(hours=1)), bad, ["not", "a", "dict"])  # type: ignore[arg-type]
    assert verdicts(repo)[bad] == "infected"
    span = {"from": ts(ago(days=3)), "to": "", "reason": "r", "verdict": "infected"}
    aux(repo, AUX_GUARD_MARK, future, data=span)  # a future-dated open mark would block forget forever
    aux(repo, AUX_GUARD_MARK, ts(ago(hours=1)), data={**span, "from": 12})
    aux(repo, AUX_GUARD_MARK, ts(ago(hours=1)), data={**span, "to": ts(ago(days=4))})  # ends before it starts
    aux(repo, AUX_GUARD_MARK, ts(ago(hours=1)), data={**span, "to": ["x"]})
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert eff[good].verdict == "clean" and not eff[good].marks and eff[bad].alarm_open
    aux(repo, AUX_GUARD_MARK, ts(ago(hours=1)), data={**span, "to": ts(ago(hours=1)), "verdict": "odd"})
    assert verdicts(repo)[good] == "suspicious", "a mark with an unknown verdict still flags (as suspicious)"


# ---- forget -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "policy",
    [KeepPolicy(last=1), KeepPolicy(last=3), KeepPolicy(daily=2), KeepPolicy(within="2d"), KeepPolicy(tags=["x"])],
)
def test_forget_never_removes_the_newest_clean_snapshot(mem_repo, policy):
    repo = mem_repo
    clean = [verdict_snapshot(repo, ago(days=10 - d), "clean") for d in range(5)]  # days 10..6 ago
    infected = [verdict_snapshot(repo, ago(days=5 - d), "infected") for d in range(5)]  # days 5..1 ago
    res = forget(repo, policy=policy, now=NOW)
    live = {r.id for r in list_snapshots(repo)}
    assert clean[-1] in live, "the newest clean snapshot survives every policy"
    assert set(infected) <= live, "during an alarm the infected snapshots are kept"
    kept = {d.ref.id: d.reasons for g in res.groups for d in g.keep}
    assert any("newest clean" in r for r in kept[clean[-1]])
    if policy.last == 3:
        assert set(clean[-3:]) <= live and clean[0] not in live, "keep-last counts only clean snapshots"
    if policy.daily == 2:
        assert set(clean[-2:]) <= live and clean[0] not in live, "daily slots go to clean snapshots only"

    with pytest.raises(UsageError, match="newest clean"):
        forget(repo, [clean[-1]], now=NOW)
    with pytest.raises(UsageError, match="newest clean"):
        remove_snapshots(repo, [clean[-1]], now=NOW)
    forget(repo, [infected[0]], now=NOW)  # by id, anything else can go
    assert infected[0] not in {r.id for r in list_snapshots(repo)}


def test_by_id_the_last_clean_snapshot_goes_only_when_no_alarm_is_open(mem_repo):
    repo = mem_repo
    only = verdict_snapshot(repo, ago(days=2), "clean", host="retired")
    forget(repo, [only], now=NOW)  # retiring a host: the operator's explicit choice
    assert only not in {r.id for r in list_snapshots(repo)}
    clean = verdict_snapshot(repo, ago(days=2), "clean")
    write_mark(repo, ts(ago(days=1)), "", "incident", "suspicious", ts(ago(hours=1)))
    with pytest.raises(UsageError, match="alarm is open"):
        forget(repo, [clean], now=NOW)


def test_keep_rules_count_every_snapshot_once_the_alarm_is_closed(mem_repo):
    repo = mem_repo
    a = [verdict_snapshot(repo, ago(days=10 - d), "clean") for d in range(3)]
    bad = verdict_snapshot(repo, ago(days=5), "infected")
    b = [verdict_snapshot(repo, ago(days=3 - d), "clean") for d in range(3)]
    assert verdicts(repo)[b[-1]] == "suspicious", "the alarm is open until someone vouches for the data"
    write_ack(repo, b[0], "restored from the last clean snapshot, checked", ts(ago(days=2)))
    forget(repo, policy=KeepPolicy(last=2), now=NOW)
    live = {r.id for r in list_snapshots(repo)}
    assert live == set(b[-2:]), "no alarm: the old infected snapshot is counted and forgotten like any other"
    assert bad not in live and not set(a) & live


def test_alarm_keeps_other_groups_normal_and_unknown_before_the_guard_counts(mem_repo):
    repo = mem_repo
    pre = [verdict_snapshot(repo, ago(days=20 - d), None) for d in range(3)]  # before the guard
    bad = verdict_snapshot(repo, ago(days=1), "suspicious")
    other = [verdict_snapshot(repo, ago(days=5 - d), None, host="other") for d in range(3)]
    forget(repo, policy=KeepPolicy(last=1), now=NOW)
    live = {r.id for r in list_snapshots(repo)}
    assert bad in live and pre[-1] in live and not set(pre[:2]) & live
    assert other[-1] in live and not set(other[:2]) & live


def test_unjudged_snapshots_after_the_guard_are_not_the_last_clean(mem_repo):
    """An attacker who switched the guard off makes snapshots without a verdict: not trusted as clean."""
    repo = mem_repo
    judged = verdict_snapshot(repo, ago(days=5), "infected")
    blind = [verdict_snapshot(repo, ago(days=3 - d), None) for d in range(3)]
    res = forget(repo, policy=KeepPolicy(last=1), now=NOW, dry_run=True)
    keep = {d.ref.id for g in res.groups for d in g.keep}
    assert judged in keep and blind[-1] in keep


# ---- the backup hook --------------------------------------------------------------------------
def test_alarm_hook_runs_with_the_verdict_and_not_for_clean_snapshots(local_repo, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    out = tmp_path / "hook.json"
    hook = f"{sys.executable} -c 'import json,os,sys; json.dump(dict(os.environ), open(sys.argv[1], \"w\"))' {out}"
    opts = BackupOptions(paths=[os.fsencode(str(src))], workers=2)
    res = commands.backup(local_repo, opts, on_alarm=hook)
    assert res.snapshot_id and not out.exists(), "a snapshot that is not flagged runs no hook"
    assert not any(d["message_type"] == "guard_alarm" for d in res.to_json())

    write_mark(local_repo, ts(ago(minutes=5)), "", "SIEM alert 7", "infected", ts(ago(minutes=1)))
    res = commands.backup(local_repo, opts, on_alarm=hook)
    env = json.loads(out.read_text())
    assert env["CERMIN_SNAPSHOT_ID"] == res.snapshot_id and env["CERMIN_VERDICT"] == "infected"
    assert "SIEM alert 7" in env["CERMIN_GUARD_REASONS"] and env["CERMIN_REPOSITORY_ID"] == local_repo.config.id
    alarm = [d for d in res.to_json() if d["message_type"] == "guard_alarm"]
    assert alarm[0]["verdict"] == "infected" and alarm[0]["hook"]["exit_code"] == 0
    assert res.exit_code == 0 and any("INFECTED" in ln.text for ln in res.to_text())

    res = commands.backup(local_repo, opts, on_alarm="/nonexistent/hook")
    assert res.snapshot_id and res.alarm.hook_error, "a failing hook is a warning; the snapshot is saved"


# ---- CLI --------------------------------------------------------------------------------------
def jlines(r) -> list[dict]:
    return [json.loads(x) for x in r.stdout.decode().splitlines() if x.strip()]


def test_guard_cli_mark_ack_report_and_snapshots(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"one")
    cli("backup", str(src))
    first = jlines(cli("--json", "snapshots"))[0]["snapshots"][0]
    assert first["guard"]["verdict"] in ("unknown", "clean")
    start = ts(datetime.now(UTC) - timedelta(minutes=1))
    r = jlines(cli("--json", "guard", "mark", "--from", start, "--reason", "EDR alert 99", "--infected"))[0]
    assert r["message_type"] == "guard_mark" and r["to"] == "" and r["verdict"] == "infected"
    (src / "f").write_bytes(b"two")
    r = cli("backup", str(src))
    assert b"INFECTED" in r.stderr
    snaps = jlines(cli("--json", "snapshots"))[0]["snapshots"]
    second = snaps[-1]
    assert second["guard"]["verdict"] == "infected" and second["guard"]["alarm_open"]
    table = cli("snapshots")
    assert "infected" in table.stdout.decode() and b"guard report" in table.stderr

    rep = cli("guard", "report", second["short_id"]).stdout.decode()
    assert "infected" in rep and "EDR alert 99" in rep and "alarm is open" in rep
    r = jlines(cli("--json", "guard", "ack", second["short_id"], "--reason", "false positive"))[0]
    assert r["before"] == "infected" and r["verdict"] == "clean", "the ack clears the mark recorded before it"
    rep = jlines(cli("--json", "guard", "report", second["short_id"]))[0]
    assert rep["acks"][0]["reason"] == "false positive" and rep["alarm_open"], "the open mark still holds the alarm"
    assert "clean*" in cli("snapshots").stdout.decode(), "an acknowledged alarm is shown with a star"
    assert cli("guard", "mark", "--from", "bad", "--reason", "x", ok=False).returncode == 2
    assert cli("guard", "report", "deadbeef", ok=False).returncode == 1


def test_guard_extra_round_trips_through_the_helper(mem_repo):
    sid = verdict_snapshot(mem_repo, ago(days=1), "suspicious", reasons=["r"], affected=["/a"])
    assert mem_repo.load_snapshot(sid).extra == guard_extra("suspicious", reasons=["r"], paths=["/a"])


def test_a_clean_backup_after_an_attack_does_not_close_the_alarm(mem_repo):
    """The backup after an attack changes nothing new and is clean on its own, yet still holds the encrypted
    files: it must not become the last clean restore point, nor close the alarm for forget."""
    from cermin.guard.lastclean import last_clean
    from cermin.guard.verdict import guard_view

    repo = mem_repo
    before = verdict_snapshot(repo, ago(days=3), "clean")
    attack = verdict_snapshot(repo, ago(days=2), "infected", reasons=["compress_loss"])
    after = [verdict_snapshot(repo, ago(days=1 - d / 4), "clean") for d in range(3)]
    assert last_clean(repo).id == before
    view = guard_view(repo, list_snapshots(repo))
    assert view.alarm_open(after[-1]) and not view.counts(after[-1]) and before in view.last_clean
    forget(repo, policy=KeepPolicy(last=1), now=NOW)
    assert {before, attack, *after} <= {r.id for r in list_snapshots(repo)}, "nothing counts during the alarm"
    write_ack(repo, after[1], "restored and verified", ts(ago(hours=1)))
    assert last_clean(repo).id == after[-1] and verdicts(repo)[attack] == "infected"


def test_an_older_ack_does_not_end_an_alarm_recorded_later(mem_repo):
    """S2 was acknowledged (benign) at A; a SIEM mark recorded after A flags S1: S2 and later still inherit it."""
    repo = mem_repo
    s0 = verdict_snapshot(repo, ago(days=4), "clean")
    s1 = verdict_snapshot(repo, ago(days=3), "clean")
    s2 = verdict_snapshot(repo, ago(days=2), "suspicious", reasons=["log rotation"])
    s3 = verdict_snapshot(repo, ago(days=1), "clean")
    write_ack(repo, s2, "log rotation", ts(ago(days=1, hours=12)))
    assert verdicts(repo) == {s0: "clean", s1: "clean", s2: "clean", s3: "clean"}
    # an EDR alert about day 3, recorded now: S1 infected, and nothing after it was vouched for since
    write_mark(repo, ts(ago(days=3, hours=1)), ts(ago(days=2, hours=12)), "EDR 77", "infected", ts(ago(hours=1)))
    v = verdicts(repo)
    assert v[s1] == "infected" and v[s2] == "suspicious" and v[s3] == "suspicious"
    eff = effective_verdicts(repo, list_snapshots(repo))
    assert eff[s3].inherited_from == s1
    write_ack(repo, s3, "restored and checked after the EDR alert", ts(ago(minutes=5)))
    v = verdicts(repo)
    assert v[s3] == "clean" and v[s2] == "suspicious" and v[s1] == "infected"
