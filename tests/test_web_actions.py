"""The dashboard asks, the agent runs: action requests in the store (cermin.ops.webstore) taken by
`Agent.tick()` as manual runs, and the two-person rule's approvals; and the dashboard's actions over a real
repository: Back up now / Drill now, acknowledging a guard alarm (a guard_ack record in the repository, then
the store), and forgetting a snapshot under the two-person rule, carried out through the library."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

import pytest
from conftest import PASSWORD as REPO_PASSWORD
from fastapi.testclient import TestClient
from helpers import guard_backup, make_source, small_repo, verdict_snapshot
from web_helpers import T0, Clock, add_user, cheap_argon2, csrf_of, fleet_toml, login, store_url  # noqa: F401

from cermin.backend.local import LocalBackend
from cermin.guard.verdict import AUX_GUARD_ACK, effective_verdicts
from cermin.ops import alarms, approvals
from cermin.ops.agent import Agent
from cermin.ops.config import parse_config
from cermin.ops.schedule import BACKUP, Job
from cermin.ops.state import SeenSnapshot, StateError, StateStore
from cermin.ops.webstore import WebStore
from cermin.repo.repository import Repository
from cermin.repo.snapshots import aux_records, list_snapshots, resolve
from cermin.web.app import create_app
from cermin.web.settings import WebSettings

SYSTEMS = {"imigrasi/paspor": "rendah", "dukcapil/ktp": "rendah"}


class StubAgent(Agent):
    """The agent's loop, with jobs that record a run and do nothing else (no repositories)."""

    scheduled: list = []

    def due(self, now):
        return list(self.scheduled)

    def _backup(self, job, out):
        self._step(job, out, "backup", "primary", lambda: ("ok", "", None, {}))

    def _drill_job(self, job, out):
        self._step(job, out, "drill", "primary", lambda: ("failed", "restore failed", None, {}))


@pytest.fixture
def site(store_url):  # noqa: F811 (the fixture from web_helpers)
    clock = Clock(T0)
    cfg = parse_config(fleet_toml(SYSTEMS), "fleet.toml", environ={})
    store = StateStore.open(store_url, clock=clock)
    store.sync_config(cfg, T0)
    agent = StubAgent(cfg, store, name="agent-1", clock=clock, sleep=lambda s: None)
    yield agent, WebStore(store), clock
    store.close()


def test_requests_are_taken_and_run_as_manual_runs(site):
    agent, ws, clock = site
    b = ws.request_action("imigrasi/paspor", "backup", "ana", now=T0)
    d = ws.request_action("dukcapil/ktp", "drill", "ana", now=T0)
    assert ws.request_action("imigrasi/paspor", "backup", "budi", now=T0).id == b.id  # one pending per kind
    clock.advance(minutes=1)
    outcomes = agent.tick()
    assert sorted((o.system, o.kind, o.status) for o in outcomes) == [
        ("dukcapil/ktp", "drill", "failed"),
        ("imigrasi/paspor", "backup", "ok"),
    ]
    got = {r.id: r for r in ws.action_requests()}
    assert got[b.id].status == "done" and got[b.id].agent == "agent-1" and got[b.id].run_id is not None
    assert got[d.id].status == "failed" and got[d.id].message == "restore failed"
    run = agent.store.run(got[b.id].run_id)
    assert run.kind == "backup" and run.slot is None  # a manual run: the schedule's slots are untouched
    assert agent.store.last_slots() == {}
    assert agent.tick() == []  # nothing left to take


def test_a_due_job_serves_a_request_of_its_kind(site):
    agent, ws, clock = site
    system = agent.cfg.system("imigrasi/paspor")
    agent.scheduled = [Job(system, BACKUP, T0, 0.0)]
    r = ws.request_action(system.id, "backup", "ana", now=T0)
    outcomes = agent.tick()
    assert len(outcomes) == 1 and outcomes[0].slot == T0
    done = ws.action_requests(system_id=system.id)[0]
    assert done.id == r.id and done.status == "done"
    assert agent.store.run(done.run_id).slot == T0


def test_a_request_for_a_system_another_agent_holds_stays_pending(site):
    agent, ws, clock = site
    agent.store.claim("imigrasi/paspor", "agent-2", "backup", 600, T0)
    ws.request_action("imigrasi/paspor", "backup", "ana", now=T0)
    [o] = agent.tick()
    assert o.status == "skipped"
    [r] = ws.action_requests()
    assert r.status == "pending" and r.agent is None


def test_two_agents_never_take_the_same_request(site):
    agent, ws, clock = site
    ws.request_action("imigrasi/paspor", "backup", "ana", now=T0)
    first = ws.take_actions(["imigrasi/paspor"], "agent-1", T0)
    second = ws.take_actions(["imigrasi/paspor"], "agent-2", T0)
    assert len(first) == 1 and second == []


def test_bad_requests_are_refused(site):
    agent, ws, clock = site
    with pytest.raises(StateError, match="bad action"):
        ws.request_action("imigrasi/paspor", "prune", "ana")
    with pytest.raises(StateError, match="unknown system"):
        ws.request_action("imigrasi/nope", "backup", "ana")


def test_two_person_rule(site):
    agent, ws, clock = site
    a = ws.request_approval("forget", {"system": "imigrasi/paspor", "snapshots": ["ab12"]}, "ana", "wrong data")
    with pytest.raises(StateError, match="two-person"):
        ws.decide_approval(a.id, "ana", "approve")
    assert not ws.mark_executed(a.id)  # not approved yet
    assert ws.decide_approval(a.id, "budi", "approve")
    assert not ws.decide_approval(a.id, "citra", "reject")  # decided once
    assert ws.mark_executed(a.id, {"removed": 1})
    assert not ws.mark_executed(a.id)
    got = ws.approval(a.id)
    assert (got.decided_by, got.decision, got.result) == ("budi", "approve", {"removed": 1})
    with pytest.raises(StateError, match="reason"):
        ws.request_approval("forget", {}, "ana", "  ")


# ---- the dashboard's actions: Back up now / Drill now, acknowledging alarms, the two-person rule -------------
# A real repository (a guarded backup, an older clean snapshot, a newer one the guard flagged), its system in a
# configuration and a state store, and the dashboard over them with two operators, an auditor and a viewer.
SYSTEM = "dukcapil/berkas"
REASON = "412 files became ciphertext"


class Real:
    """The site: `client[name]` logged in, the store, the repository's path and snapshot ids."""

    def __init__(self, tmp_path, clock):
        self.tmp = tmp_path
        self.clock = clock
        self.repo_dir = str(tmp_path / "repo")
        repo = small_repo(LocalBackend(self.repo_dir))
        src = tmp_path / "src"
        make_source(str(src), files=6)
        self.clean, guard = guard_backup(repo, src)  # the newest clean snapshot
        assert guard["verdict"] == "clean"
        snap = resolve(repo, self.clean).snapshot
        like = {"host": snap.hostname, "paths": snap.paths, "tree": snap.tree}
        now = datetime.now(UTC)
        self.older = verdict_snapshot(repo, now - timedelta(hours=2), "clean", **like)
        self.flagged = verdict_snapshot(repo, datetime.now(UTC), "suspicious", reasons=[REASON], score=0.9, **like)
        pw = tmp_path / "repo.password"
        pw.write_text(REPO_PASSWORD + "\n")
        os.chmod(pw, 0o600)
        self.config = tmp_path / "cermin.toml"
        self.config.write_text(
            f"[repositories.dukcapil]\nurl = '{self.repo_dir}'\npassword_file = '{pw}'\nkind = 'primary'\n\n"
            "[tenants.dukcapil]\nname = 'Dukcapil'\n\n"
            "[tenants.dukcapil.systems.berkas]\nclass = 'rendah'\nprimary = 'dukcapil'\n"
            f"[[tenants.dukcapil.systems.berkas.sources]]\ntype = 'paths'\npaths = ['{src}']\n\n"
            "[tenants.imigrasi]\nname = 'Imigrasi'\n\n"
            "[tenants.imigrasi.systems.paspor]\nclass = 'rendah'\nprimary = 'dukcapil'\n"
            f"[[tenants.imigrasi.systems.paspor.sources]]\ntype = 'paths'\npaths = ['{src}']\n"
        )
        from cermin.ops.config import load_config

        cfg = load_config(str(self.config))
        self.store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
        self.store.sync_config(cfg, T0)
        times = {sid: resolve(repo, sid).snapshot.time for sid in (self.older, self.clean, self.flagged)}
        seen = [
            SeenSnapshot(sid, datetime.fromisoformat(times[sid][:26] + "+00:00"), size=4096, files=6, verdict=v)
            for sid, v in ((self.older, "clean"), (self.clean, "clean"), (self.flagged, "suspicious"))
        ]
        self.store.record_snapshots(SYSTEM, "primary", seen, T0)
        self.alarm = self.store.open_alarm(SYSTEM, "primary", self.flagged, "suspicious", [REASON], score=0.9, now=T0)
        for name, role, tenant in (
            ("ana", "operator", None),
            ("budi", "operator", None),
            ("aud", "auditor", None),
            ("vera", "viewer", "dukcapil"),
            ("ivan", "viewer", "imigrasi"),
        ):
            add_user(self.store, name, role, tenant)
        app = create_app(
            WebSettings(state_url=str(self.store.url), config_path=str(self.config)), store=self.store, clock=clock
        )
        self.client, self.csrf = {}, {}
        for name in ("ana", "budi", "aud", "vera", "ivan"):
            c = self.client[name] = TestClient(app)
            login(c, name)
            self.csrf[name] = csrf_of(c.get("/alerts").text)

    def post(self, who: str, url: str, data: dict | None = None, csrf: bool = True, **kw):
        data = dict(data or {})
        if csrf:
            data["csrf_token"] = self.csrf[who]
        return self.client[who].post(url, data=data, follow_redirects=False, **kw)

    def repo(self) -> Repository:
        return Repository.open(LocalBackend(self.repo_dir), REPO_PASSWORD.encode())

    def audit(self, action: str) -> list:
        return WebStore(self.store).audit_log(action=action)


@pytest.fixture
def real(tmp_path):
    site = Real(tmp_path, Clock(T0))
    yield site
    site.store.close()


def test_back_up_now_and_drill_now_ask_the_agent(real):
    r = real.post("ana", "/systems/dukcapil/berkas/backup")
    assert r.status_code == 303 and r.headers["location"] == "/systems/dukcapil/berkas#requests"
    r = real.post("ana", "/systems/dukcapil/berkas/drill", headers={"HX-Request": "true"})
    assert r.status_code == 200 and "<html" not in r.text and 'hx-trigger="every 5s"' in r.text
    assert "pending: waiting for the agent" in r.text
    reqs = WebStore(real.store).action_requests(system_id=SYSTEM)
    assert sorted((q.kind, q.status, q.user_name) for q in reqs) == [
        ("backup", "pending", "ana"),
        ("drill", "pending", "ana"),
    ]
    [entry] = real.audit("action.backup")
    assert entry.user_name == "ana" and entry.target == SYSTEM and entry.detail["request"] == reqs[-1].id
    # the agent takes one and finishes it: the page shows taken, then done with its run
    ws = WebStore(real.store)
    [taken] = ws.take_actions([SYSTEM], "agent-1", T0, kinds=["backup"])
    page = real.client["vera"].get("/systems/dukcapil/berkas").text
    assert "taken: running" in page and "agent-1" in page and 'action="/systems/' not in page
    run_id = real.store.start_run(SYSTEM, "backup", None, "agent-1", copy="primary", now=T0)
    ws.finish_action(taken.id, "done", run_id=run_id, now=T0)
    frag = real.client["aud"].get("/systems/dukcapil/berkas/requests").text
    assert f"#{run_id}" in frag and ">done<" in frag


def test_actions_need_an_operator_and_the_csrf_token(real):
    assert real.post("ana", "/systems/dukcapil/berkas/backup", csrf=False).status_code == 403
    for who in ("aud", "vera"):
        assert real.post(who, "/systems/dukcapil/berkas/backup").status_code == 403
        assert real.post(who, "/systems/dukcapil/berkas/drill").status_code == 403
        assert real.post(who, f"/alerts/{real.alarm}/ack", {"note": "fine"}).status_code == 403
        assert real.post(who, "/approvals/1/approve").status_code == 403
        form = {"snapshot": real.older, "copy": "primary", "reason": "x"}
        assert real.post(who, "/systems/dukcapil/berkas/snapshots/forget", form).status_code == 403
    assert real.post("ana", "/systems/dukcapil/berkas/prune").status_code == 404
    assert real.post("ana", "/systems/dukcapil/nope/backup").status_code == 404
    assert WebStore(real.store).action_requests() == []
    assert alarms.alarm(real.store, real.alarm).acknowledged_at is None


def test_acknowledging_an_alarm_writes_a_guard_ack_in_the_repository_and_the_store(real):
    page = real.client["ana"].get("/alerts").text
    assert f'action="/alerts/{real.alarm}/ack"' in page and REASON in page
    assert re.search(r'Alerts <span class="nav-count"[^>]*>1</span>', page)
    r = real.post("ana", f"/alerts/{real.alarm}/ack", {"note": "   "})  # a note is required
    assert r.status_code == 409 and "needs a note" in r.text
    assert alarms.alarm(real.store, real.alarm).acknowledged_at is None
    real.clock.advance(minutes=5)
    r = real.post("ana", f"/alerts/{real.alarm}/ack", {"note": "the scheduled archive re-encryption"})
    assert r.status_code == 303 and r.headers["location"] == f"/alerts?acked={real.alarm}#acked-{real.alarm}"
    a = alarms.alarm(real.store, real.alarm)
    assert a.acknowledged_by == "ana" and a.acknowledged_at == T0 + timedelta(minutes=5)
    assert a.note == "the scheduled archive re-encryption"
    # in the repository: a guard_ack record for the snapshot, and the guard now calls it clean
    repo = real.repo()
    acks = [rec for _, rec in aux_records(repo) if rec.type == AUX_GUARD_ACK]
    assert [x.target for x in acks] == [real.flagged]
    assert "the scheduled archive re-encryption" in acks[0].data["reason"] and "ana" in acks[0].data["reason"]
    ref = resolve(repo, real.flagged)
    assert effective_verdicts(repo, [ref])[ref.id].verdict == "clean"
    # shown with who and when; audited
    page = real.client["vera"].get(r.headers["location"]).text
    row = re.search(rf'<tr id="acked-{real.alarm}".*?</tr>', page, re.S).group(0)
    assert ">ana<" in row and "2026-03-02 12:05" in row and "the scheduled archive re-encryption" in row
    assert "is acknowledged" in page and "nav-count" not in page
    [entry] = real.audit("alarm.ack")
    assert entry.user_name == "ana" and entry.target == SYSTEM
    assert entry.detail["snapshot"] == real.flagged and entry.detail["repository"] == "dukcapil"
    # once only
    r = real.post("budi", f"/alerts/{real.alarm}/ack", {"note": "again"})
    assert r.status_code == 409 and "acknowledged already, by ana" in r.text


def test_an_acknowledgement_the_repository_refuses_leaves_the_alarm_open(real):
    os.rename(real.repo_dir, real.repo_dir + ".away")  # the repository is unreachable
    r = real.post("ana", f"/alerts/{real.alarm}/ack", {"note": "benign"})
    assert r.status_code == 409
    assert "could not acknowledge snapshot" in r.text and "in the repository dukcapil" in r.text
    assert "the alarm stays open" in r.text and 'role="alert"' in r.text
    assert alarms.alarm(real.store, real.alarm).acknowledged_at is None
    [entry] = real.audit("alarm.ack_failed")
    assert entry.user_name == "ana" and entry.target == SYSTEM and "could not acknowledge" in entry.detail["error"]
    os.rename(real.repo_dir + ".away", real.repo_dir)
    assert real.post("ana", f"/alerts/{real.alarm}/ack", {"note": "benign"}).status_code == 303


def test_acknowledge_alarm_is_a_library_function(real):
    from cermin.ops.config import load_config

    cfg = load_config(str(real.config))
    with pytest.raises(alarms.AlarmError, match="no alarm 999"):
        alarms.acknowledge_alarm(cfg, real.store, 999, "cli", "note")
    out = alarms.acknowledge_alarm(cfg, real.store, real.alarm, "cli", "known good")
    assert (out.before, out.after, out.repository) == ("suspicious", "clean", "dukcapil")
    assert out.alarm.acknowledged_by == "cli" and out.to_json()["message_type"] == "alarm_ack"
    assert alarms.open_count(real.store) == 0 and [a.id for a in alarms.acknowledged(real.store)] == [real.alarm]


def _forget_request(real, who: str, snapshot: str, reason: str = "holds data taken by mistake"):
    form = {"snapshot": snapshot, "copy": "primary", "reason": reason}
    return real.post(who, "/systems/dukcapil/berkas/snapshots/forget", form)


def test_two_person_rule_the_engine_still_refuses_the_newest_clean_snapshot(real):
    page = real.client["ana"].get("/systems/dukcapil/berkas").text
    assert page.count("Ask for approval") == 3  # one form per snapshot the store holds
    assert _forget_request(real, "ana", real.clean, reason=" ").status_code == 422  # a reason is required
    r = _forget_request(real, "ana", real.clean)
    assert r.status_code == 303 and r.headers["location"].startswith("/approvals#approval-")
    [pending] = WebStore(real.store).approvals(undecided_only=True)
    assert pending.requested_by == "ana" and pending.target == {
        "system": SYSTEM,
        "copy": "primary",
        "snapshots": [real.clean],
    }
    listing = real.client["ana"].get("/approvals").text
    row = re.search(rf'<tr id="approval-{pending.id}".*?</tr>', listing, re.S).group(0)
    assert "your request: another operator decides" in row and "/approve" not in row
    # the requester cannot approve their own request
    r = real.post("ana", f"/approvals/{pending.id}/approve")
    assert r.status_code == 403 and "two-person rule" in r.text
    assert WebStore(real.store).approval(pending.id).decided_at is None
    # a second operator can; the engine refuses: the newest clean snapshot while an alarm is open
    row = re.search(rf'<tr id="approval-{pending.id}".*?</tr>', real.client["budi"].get("/approvals").text, re.S)
    assert "Approve and carry out" in row.group(0)
    r = real.post("budi", f"/approvals/{pending.id}/approve")
    assert r.status_code == 303
    done = WebStore(real.store).approval(pending.id)
    assert (done.decision, done.decided_by) == ("approve", "budi") and done.executed_at is not None
    assert done.result["ok"] is False and "newest clean snapshot" in done.result["error"]
    assert real.clean in [s.id for s in list_snapshots(real.repo())]  # still there
    shown = re.search(rf'<tr id="approval-{pending.id}".*?</tr>', real.client["ana"].get("/approvals").text, re.S)
    assert "refused: snapshot" in shown.group(0) and "newest clean snapshot" in shown.group(0)
    assert "approved by budi" in shown.group(0)
    # decided once
    assert real.post("budi", f"/approvals/{pending.id}/reject").status_code == 409
    # audited at each step
    assert [e.user_name for e in real.audit("approval.request")] == ["ana"]
    assert [e.user_name for e in real.audit("approval.refused")] == ["budi", "ana"]
    assert [e.user_name for e in real.audit("approval.approve")] == ["budi"]
    [ex] = real.audit("approval.execute")
    assert ex.user_name == "budi" and ex.detail["result"]["ok"] is False and ex.target == SYSTEM


def test_two_person_rule_an_approved_forget_runs_through_the_library(real):
    r = _forget_request(real, "ana", real.older)
    approval = int(r.headers["location"].rsplit("-", 1)[1])
    assert real.post("budi", f"/approvals/{approval}/approve").status_code == 303
    done = WebStore(real.store).approval(approval)
    assert done.result["ok"] is True and done.result["removed"] == [real.older]
    assert real.older not in [s.id for s in list_snapshots(real.repo())]
    # the timeline shows it forgotten from the primary, and offers no second forget of it
    page = real.client["ana"].get("/systems/dukcapil/berkas").text
    row = re.search(rf'<tr id="snap-{real.older}">.*?</tr>', page, re.S).group(0)
    assert "primary: forgotten" in row and "Ask for approval" not in row
    assert _forget_request(real, "budi", real.older).status_code == 422
    assert "removed " + real.older[:8] in real.client["budi"].get("/approvals").text


def test_two_person_rule_a_rejection_carries_nothing_out(real):
    _forget_request(real, "ana", real.older)
    [pending] = WebStore(real.store).approvals(undecided_only=True)
    assert real.post("budi", f"/approvals/{pending.id}/reject", csrf=False).status_code == 403  # CSRF
    assert real.post("budi", f"/approvals/{pending.id}/reject").status_code == 303
    got = WebStore(real.store).approval(pending.id)
    assert got.decision == "reject" and got.executed_at is None and got.result is None
    assert real.older in [s.id for s in list_snapshots(real.repo())]
    assert "rejected by budi" in real.client["ana"].get("/approvals").text
    assert real.audit("approval.execute") == []


def test_approvals_library_rules(real):
    with pytest.raises(approvals.ApprovalError, match="reason"):
        approvals.request_forget(real.store, SYSTEM, "primary", real.older, "ana", "")
    with pytest.raises(approvals.ApprovalError, match="holds no snapshot"):
        approvals.request_forget(real.store, SYSTEM, "mirror", real.older, "ana", "why")
    with pytest.raises(approvals.ApprovalError, match="full id"):
        approvals.request_forget(real.store, SYSTEM, "primary", real.older[:8], "ana", "why")
    a = approvals.request_forget(real.store, SYSTEM, "primary", real.older, "ana", "why")
    with pytest.raises(approvals.OwnRequest):
        approvals.decide(None, real.store, a.id, "ana", "reject")
    with pytest.raises(approvals.ApprovalError, match="no configuration"):
        approvals.decide(None, real.store, a.id, "budi", "approve")
    assert WebStore(real.store).approval(a.id).decided_at is None
    assert "forget snapshot " + real.older[:8] in approvals.describe(a)
