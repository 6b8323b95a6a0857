"""The dashboard asks, the agent runs: action requests in the store (cermin.ops.webstore) taken by
`Agent.tick()` as manual runs, and the two-person rule's approvals."""

from __future__ import annotations

import pytest
from web_helpers import T0, Clock, cheap_argon2, fleet_toml, store_url  # noqa: F401

from cermin.ops.agent import Agent
from cermin.ops.config import parse_config
from cermin.ops.schedule import BACKUP, Job
from cermin.ops.state import StateError, StateStore
from cermin.ops.webstore import WebStore

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
