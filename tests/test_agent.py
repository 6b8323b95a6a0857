"""ops/agent.py: the agent runs every system's jobs on schedule (fake clock), records them in the state store,
keeps going when one system's repository is unreachable, notifies, and — with three agent processes on one real
PostgreSQL — runs each system once per schedule slot."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import FAST_KDF, PASSWORD

from cermin.backend.local import LocalBackend
from cermin.ops.agent import Agent
from cermin.ops.config import ConfigError, load_config
from cermin.ops.schedule import JOB_KINDS, latest_slot
from cermin.ops.state import StateStore
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots

# Snapshots carry the real time, so the fake clock starts at the real one and only moves forward.
T0 = datetime.now(UTC).replace(microsecond=0)


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def make_site(tmp, broken: bool = False, notify_url: str = "", state: str = "") -> str:
    """Two tenants: a SQLite application (primary + tenant mirror) and a file share (primary only)."""
    (tmp / "pw").write_text(PASSWORD + "\n")
    (tmp / "mirror.pw").write_text("the tenant's own password\n")
    for name, pw in (("dc-app", PASSWORD), ("app-own", "the tenant's own password"), ("dc-files", PASSWORD)):
        Repository.init(LocalBackend(str(tmp / name)), pw.encode(), kdf=FAST_KDF)
    app = tmp / "app"
    app.mkdir()
    db = sqlite3.connect(app / "app.db")
    db.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, who TEXT)")
    db.executemany("INSERT INTO tickets (who) VALUES (?)", [(f"citizen {i}",) for i in range(200)])
    db.commit()
    db.close()
    share = tmp / "share"
    share.mkdir()
    for i in range(20):
        (share / f"doc{i}.txt").write_text(f"document {i}\n" * 200)
    (tmp / "notify.urls").write_text(notify_url + "\n")
    files_url = tmp / ("missing-repo" if broken else "dc-files")
    cfg = tmp / "cermin.toml"
    cfg.write_text(
        f"""
[agent]
workdir = "{tmp / "work"}"
name = "agent-1"
retries = 1
retry_backoff = "1s"
{f'state = "{state}"' if state else ""}
{'notify_file = "' + str(tmp / "notify.urls") + '"' if notify_url else ""}

[classes.app]
rpo = "1h"
rto = "1h"
retention = {{ last = 5 }}
copies = ["primary", "mirror"]
drill_every = "1d"
verify_every = "2d"

[classes.files]
rpo = "4h"
rto = "4h"
retention = {{ last = 3 }}
drill_every = "1d"
verify_every = "1d"

[repositories.dc-app]
url = "{tmp / "dc-app"}"
password_file = "{tmp / "pw"}"
[repositories.app-own]
url = "{tmp / "app-own"}"
password_file = "{tmp / "mirror.pw"}"
[repositories.dc-files]
url = "{files_url}"
password_file = "{tmp / "pw"}"

[tenants.dukcapil.systems.antrian]
class = "app"
primary = "dc-app"
mirror = "app-own"
[[tenants.dukcapil.systems.antrian.sources]]
type = "sqlite"
path = "{app / "app.db"}"
[[tenants.dukcapil.systems.antrian.checks]]
type = "sqlite"
query = "SELECT 1 FROM tickets WHERE who = 'citizen 7'"

[tenants.arsip.systems.share]
class = "files"
primary = "dc-files"
[[tenants.arsip.systems.share.sources]]
type = "paths"
paths = ["{share}"]
[[tenants.arsip.systems.share.checks]]
type = "files"
min_files = 20
"""
    )
    return str(cfg)


def agent_for(cfg_path: str, clock: Clock, name: str = "agent-1") -> Agent:
    cfg = load_config(cfg_path)
    store = StateStore.open(cfg.agent.state or f"sqlite:///{cfg.agent.workdir}/state.db", clock=clock)
    a = Agent(cfg, store, name=name, clock=clock, sleep=lambda s: None)
    a.start()
    return a


def test_once_runs_every_job_and_the_fleet_meets_its_classes(tmp_path):
    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    outcomes = a.tick()
    got = {(o.system, o.kind): o for o in outcomes}
    assert set(got) == {(s, k) for s in ("dukcapil/antrian", "arsip/share") for k in ("backup", "maintain", "drill")}
    assert all(o.status == "ok" for o in outcomes), [(o.system, o.kind, o.message) for o in outcomes]
    steps = {(s.kind, s.copy) for s in got[("dukcapil/antrian", "backup")].steps}
    assert steps == {("backup", "primary"), ("forget", "primary"), ("mirror", "mirror"), ("forget", "mirror")}
    # the tenant's own mirror holds the copy, under its own key
    own = Repository.open(LocalBackend(str(tmp_path / "app-own")), b"the tenant's own password")
    assert len(list_snapshots(own)) == 1
    status = {s.id: s for s in a.store.status(clock())}
    assert all(s.meets_class for s in status.values()), {k: s.reasons for k, s in status.items()}
    assert status["dukcapil/antrian"].last_drill.verdict == "pass"
    assert status["dukcapil/antrian"].copies["mirror"].fresh

    assert a.tick() == [], "nothing is due again at the same time"
    later = T0 + timedelta(minutes=31)  # antrian backs up every 30 min (half its 1h RPO)
    expected = {(s.id, k) for s in a.cfg.systems for k in JOB_KINDS if latest_slot(s, k, later) > latest_slot(s, k, T0)}
    assert ("dukcapil/antrian", "backup") in expected
    clock.t = later
    assert {(o.system, o.kind) for o in a.tick()} == expected


def test_catch_up_runs_each_job_once_after_downtime(tmp_path):
    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    a.tick()
    clock.t = T0 + timedelta(days=3)  # the agent was down for three days
    outcomes = a.tick()
    kinds = sorted((o.system, o.kind) for o in outcomes)
    assert kinds == sorted(
        {(s, k) for s in ("dukcapil/antrian", "arsip/share") for k in ("backup", "maintain", "drill")}
    )
    backups = [r for r in a.store.runs("dukcapil/antrian", kind="backup")]
    assert len(backups) == 2, "one catch-up backup, not one per missed slot"


def test_one_unreachable_repository_does_not_stop_the_others(tmp_path, monkeypatch):
    got: list[dict] = []

    class H(BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        clock = Clock(T0)
        url = f"json://127.0.0.1:{srv.server_port}/hook"
        a = agent_for(make_site(tmp_path, broken=True, notify_url=url), clock)
        outcomes = {(o.system, o.kind): o for o in a.tick()}
        assert outcomes[("arsip/share", "backup")].status == "failed"
        assert "no repository" in outcomes[("arsip/share", "backup")].message
        assert outcomes[("dukcapil/antrian", "backup")].status == "ok"
        assert outcomes[("dukcapil/antrian", "drill")].status == "ok"
        failed = [r for r in a.store.runs("arsip/share", kind="backup")]
        assert failed and failed[0].status == "failed" and failed[0].attempts == 1  # permanent: not retried
        titles = [g["title"] for g in got]
        assert "cermin: arsip/share breaches its RPO" in titles and "cermin: backup of arsip/share failed" in titles
        assert not any("antrian" in t for t in titles)
        n = len(got)
        clock.t = T0 + timedelta(minutes=5)
        a.tick()
        assert len(got) == n, "a condition that goes on is not sent again"
        other = agent_for(str(tmp_path / "cermin.toml"), clock, name="agent-2")  # or this one, restarted
        clock.t = T0 + timedelta(minutes=6)
        other.tick()
        assert len(got) == n, "what the store says was told is not told again by another agent"
        notes = a.store.notifications(limit=50)
        assert notes and all("hook" not in x.target for x in notes)  # the URL's path never reaches the store
    finally:
        srv.shutdown()


def test_a_failing_source_fails_its_run_and_later_breaches_the_rpo(tmp_path):
    clock = Clock(T0)
    cfg_path = make_site(tmp_path)
    a = agent_for(cfg_path, clock)
    a.tick()
    os.remove(tmp_path / "app" / "app.db")  # the application's database disappears
    clock.t = T0 + timedelta(minutes=40)
    out = {(o.system, o.kind): o for o in a.tick()}
    assert out[("dukcapil/antrian", "backup")].status == "failed"
    st = {s.id: s for s in a.store.status(clock())}["dukcapil/antrian"]
    assert st.meets_class, "40 minutes old: still within the 1h RPO"
    clock.t = T0 + timedelta(minutes=75)
    a.tick()
    st = {s.id: s for s in a.store.status(clock())}["dukcapil/antrian"]
    assert not st.meets_class and any("older than the RPO" in r for r in st.reasons), st.reasons


def test_a_stop_during_a_pass_finishes_the_job_in_flight_and_starts_nothing_new(tmp_path):
    """SIGTERM (`agent run`) while a pass works: the job running ends, the rest of the pass is left due."""
    from cermin.ops.drill import run_drill

    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    a.cfg.agent.parallel = 1  # one system after the other
    stop = threading.Event()

    def drill_then_stop(*args, **kw):
        stop.set()  # SIGTERM arrives while the first system's drill runs
        return run_drill(*args, **kw)

    a._drill = drill_then_stop
    a.run(stop, interval=0)
    first = {r.system_id for r in a.store.runs(limit=100)}
    assert len(first) == 1, "the second system was started after the stop"
    (done,) = first
    assert {r.kind for r in a.store.runs(done, limit=100)} >= {"backup", "verify", "drill"}
    # the next start runs what the stop left due, in the same slots
    again = agent_for(str(tmp_path / "cermin.toml"), clock)
    outcomes = again.tick()
    assert {o.system for o in outcomes} == {"dukcapil/antrian", "arsip/share"} - first
    assert all(o.status == "ok" for o in outcomes), [(o.system, o.kind, o.message) for o in outcomes]


def test_a_stop_cuts_a_retry_wait_short(tmp_path):
    clock = Clock(T0)
    cfg = load_config(make_site(tmp_path))
    os.remove(tmp_path / "app" / "app.db")  # a failure a retry may fix: the agent waits, then tries again
    cfg.agent.retry_backoff = "1h"
    cfg.agent.retries = 3
    store = StateStore.open(f"sqlite:///{cfg.agent.workdir}/state.db", clock=clock)
    a = Agent(cfg, store, name="agent-1", clock=clock)  # waits on the real clock
    stop = threading.Event()
    runner = threading.Thread(target=a.run, args=(stop, 0), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while not store.runs("dukcapil/antrian", kind="backup") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # in the first wait
    stop.set()
    runner.join(30)
    assert not runner.is_alive(), "the agent sat out an hour's retry wait after it was told to stop"
    (backup,) = store.runs("dukcapil/antrian", kind="backup")
    assert backup.status == "failed" and backup.attempts == 1


def test_a_failed_drill_is_recorded_with_why_and_its_report_digest(tmp_path):
    import hashlib

    from cermin.ops.drill import run_drill
    from cermin.ops.drillreport import load_report_file

    cfg_path = make_site(tmp_path)
    text = open(cfg_path).read().replace("who = 'citizen 7'", "who = 'nobody'")
    open(cfg_path, "w").write(text)
    clock = Clock(T0)
    a = agent_for(cfg_path, clock)
    results = []
    a._drill = lambda *args, **kw: results.append(run_drill(*args, **kw)) or results[-1]
    out = {(o.system, o.kind): o for o in a.tick()}
    failed = out[("dukcapil/antrian", "drill")]
    assert failed.status == "failed" and "check sqlite-1 failed" in failed.message, failed.message
    (drill,) = a.store.drills("dukcapil/antrian")
    res = next(r for r in results if r.report.system == "dukcapil/antrian")
    assert drill.verdict == "fail" and drill.error == failed.message
    envelope = json.loads(load_report_file(res.json_path))
    assert (
        drill.report_digest
        == res.digest
        == hashlib.sha256(
            b"cermin drill report v1\n" + json.dumps(envelope["report"], sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    )
    st = {s.id: s for s in a.store.status(clock())}["dukcapil/antrian"]
    assert any(r.startswith("last drill failed: check sqlite-1 failed") for r in st.reasons), st.reasons


def test_a_drill_that_restores_nothing_fails_once_and_notifies(tmp_path):
    import shutil

    clock = Clock(T0)
    a = agent_for(make_site(tmp_path, notify_url="json://127.0.0.1:9/oncall"), clock)
    a.tick()
    shutil.rmtree(tmp_path / "dc-files")  # the share's only copy is gone
    clock.t = T0 + timedelta(days=1, hours=1)
    out = {(o.system, o.kind): o for o in a.tick()}
    drill = out[("arsip/share", "drill")]
    assert drill.status == "failed" and "dc-files" in drill.message and "snapshot id" not in drill.message
    newest = a.store.runs("arsip/share", kind="drill")[0]
    assert newest.status == "failed" and newest.attempts == 1, "a drill that ran and failed is not run again"
    assert len(list((tmp_path / "work" / "reports").glob("*arsip-share*.json"))) == 2  # day 0's, and this one
    sent = {(n.event, n.system_id) for n in a.store.notifications(limit=100)}
    assert ("drill_failed", "arsip/share") in sent, sent


def _agent_process(cfg_path: str, name: str, t: str, q) -> None:
    clock = Clock(datetime.fromisoformat(t))
    a = agent_for(cfg_path, clock, name)
    q.put([(o.system, o.kind, o.status) for o in a.tick()])


def test_three_agents_on_one_postgres_run_each_slot_once(tmp_path, postgres):
    db = postgres.new_database("agents")
    cfg_path = make_site(tmp_path, state=postgres.url_for(db))
    StateStore.open(postgres.url_for(db))  # the schema, before the race
    ctx = multiprocessing.get_context("spawn")
    for t in (T0, T0 + timedelta(minutes=31), T0 + timedelta(days=1, minutes=1)):
        q = ctx.Queue()
        procs = [ctx.Process(target=_agent_process, args=(cfg_path, f"agent-{i}", t.isoformat(), q)) for i in range(3)]
        for p in procs:
            p.start()
        results = [q.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(60)
        done = [(s, k) for r in results for s, k, status in r if status == "ok"]
        assert len(done) == len(set(done)), f"a job ran twice: {results}"
    store = StateStore.open(postgres.url_for(db))
    runs = store.runs(limit=1000)
    keys = [(r.system_id, r.kind, r.copy, r.slot) for r in runs]
    assert len(keys) == len(set(keys))
    backups = sorted(r.slot for r in runs if r.system_id == "dukcapil/antrian" and r.kind == "backup")
    assert len(backups) >= 2 and len(set(backups)) == len(backups)


def test_a_second_live_agent_with_the_same_name_is_refused(tmp_path):
    """`agent once` next to a running service with the same name would mark its runs abandoned."""
    import subprocess
    import sys

    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    twin = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        a.store.heartbeat(
            "agent-1", T0, host=__import__("socket").gethostname(), pid=twin.pid, version="x", started=True
        )
        with pytest.raises(ConfigError, match="is running .*pid"):
            a.start()
    finally:
        twin.kill()
        twin.wait()
    a.start()  # its process is gone: this agent takes the name over


def test_a_store_error_after_a_drill_does_not_run_the_drill_again(tmp_path):
    """The drill's signed report is made once; only the store write is retried."""
    from cermin.errors import CerminError
    from cermin.ops.drillreport import drill_reports

    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    real, calls = a.store.record_drill, []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise CerminError("the state store went away for a moment")
        return real(*args, **kw)

    a.store.record_drill = flaky
    out = {(o.system, o.kind): o for o in a.tick()}
    assert out[("arsip/share", "drill")].status == "ok"
    repo = Repository.open(LocalBackend(str(tmp_path / "dc-files")), PASSWORD.encode())
    assert len(drill_reports(repo)) == 1, "one drill, one signed report"
    assert len(a.store.drills("arsip/share")) == 1


def test_a_stale_heartbeat_with_a_recycled_pid_does_not_block_the_start(tmp_path):
    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    host = __import__("socket").gethostname()
    a.store.heartbeat("agent-1", T0 - timedelta(days=3), host=host, pid=1, version="x", started=True)
    a.start()  # pid 1 exists, but that agent was last seen three days ago (a reboot since)


def test_a_slot_recorded_by_an_agent_whose_clock_is_ahead_does_not_stop_the_schedule(tmp_path):
    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    a.store.start_run("arsip/share", "backup", T0 + timedelta(days=2), "skewed", copy="primary", now=T0)
    assert ("arsip/share", "backup") in {(j.system.id, j.kind) for j in a.due(T0)}


def test_marks_already_in_the_repository_open_an_alarm_for_the_new_snapshot(tmp_path):
    """An EDR mark with an open window: the next backup is flagged by it, and the store says so."""
    from cermin.guard.verdict import write_mark
    from cermin.util import now_rfc3339

    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    repo = Repository.open(LocalBackend(str(tmp_path / "dc-files")), PASSWORD.encode())
    write_mark(repo, "2020-01-01T00:00:00Z", "", "EDR alert 4711", "infected", now_rfc3339())
    a.tick()
    alarms = [al for al in a.store.alarms() if al.system_id == "arsip/share"]
    assert alarms and alarms[0].verdict == "infected" and any("EDR alert 4711" in r for r in alarms[0].reasons)


def test_verify_slices_continue_after_downtime(tmp_path):
    """Every pack read within the cycle: after a missed day the next slice follows the last verified one."""
    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    a.tick()

    def slices():
        return [r.details["subset"] for r in a.store.runs("arsip/share", kind="verify") if r.copy == "primary"]

    first = slices()
    assert len(first) == 1  # share: verify_every 1d -> n = 1; antrian: 2d -> n = 2
    runs = [r for r in a.store.runs("dukcapil/antrian", kind="verify") if r.copy == "primary"]
    k0 = int(runs[0].details["subset"].split("/")[0])
    clock.t = T0 + timedelta(days=2)  # a day missed in between
    a.tick()
    runs = [r for r in a.store.runs("dukcapil/antrian", kind="verify") if r.copy == "primary"]
    assert [r.details["subset"] for r in runs][0] == f"{k0 % 2 + 1}/2"


def test_every_copy_s_snapshots_are_in_the_store(tmp_path):
    """The dashboard's timeline says which copies hold each snapshot: the mirror's too, and forgotten ones gone."""
    clock = Clock(T0)
    a = agent_for(make_site(tmp_path), clock)
    a.tick()
    snaps = a.store.snapshots("dukcapil/antrian")
    assert {s.copy for s in snaps} == {"primary", "mirror"}
    assert len({s.snapshot_id for s in snaps}) == 1, "the mirror's copy is recorded under the primary's id"
