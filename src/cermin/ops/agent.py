"""The agent: every configured system's jobs, on schedule, recorded in the state store (docs/agent.md).

`Agent.tick()` is one pass: heartbeat, the due jobs (ops/schedule.py) grouped per system and run at most
`parallel` systems at once, then notifications for what changed. `Agent.run()` repeats it until stopped
(`cermin agent run`); `cermin agent once` is one tick.

Several agents may share one state store (PostgreSQL): a system is *claimed* by one agent at a time
(a claim expires after `claim_ttl` if its agent dies, and is renewed while a job runs), and a run is
recorded for its (system, kind, copy, slot) once — the store refuses a second start — so each slot
runs exactly once across agents. One system failing never stops the others: every job's errors end
up in its run record, never in the loop.

A system's jobs, in order:
- backup: every source into the primary copy (ops/sources.py: hooks, pg_dump, SQLite, commands),
  retried with backoff; guard alarms of the new snapshots opened in the store; forget by the class
  retention on the primary; then each other copy (immutable tier, tenant mirror) mirrored from the
  primary and forgotten by the same retention;
- maintain: per copy, prune, Object Lock extension (immutable copies with a lock policy), and the
  day's slice of the read-data verification (`check --read-data-subset k/n`);
- drill: restore, verify, app checks, measured RTO, signed report (ops/drill.py), from the copies in
  turn (primary, immutable, mirror), so every copy is proven.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cermin import __version__
from cermin.errors import CerminError
from cermin.ops import notify, schedule
from cermin.ops.config import Config, ConfigError, ResolvedSystem, parse_duration
from cermin.ops.schedule import BACKUP, DRILL, MAINTAIN, Job

SLOT_SKEW = 300  # seconds: a recorded slot further in the future than this came from a clock ahead
RECOVERED = "_ok"  # suffix of the event recorded when a condition ends ("rpo_breach_ok")
# the runs a job records (any of them started means the job's slot was taken)
_JOB_OF_RUN = {"backup": BACKUP, "prune": MAINTAIN, "verify": MAINTAIN, "lock_extend": MAINTAIN, "drill": DRILL}
# errors that no retry can fix: the configuration, the password, a missing repository, an unusable agent key
_PERMANENT = ("ConfigError", "WrongPassword", "RepositoryNotFound", "UsageError", "AgentKeyError")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ManualJob(Job):
    """A backup or drill asked for on the dashboard: recorded as a manual run (slot None), so the schedule
    is untouched; `slot` is when the agent took it (the drill's copy rotation and the outcome use it)."""

    request_id: int = 0


@dataclass
class Step:
    """One recorded run within a job (a backup, a mirror to one copy, a forget...)."""

    kind: str
    copy: str
    status: str  # ok | warning | failed | skipped
    message: str = ""
    run_id: int | None = None


@dataclass
class JobOutcome:
    system: str
    kind: str
    slot: datetime
    status: str  # ok | warning | failed | skipped (claimed elsewhere, slot already run)
    message: str = ""
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "system": self.system,
            "kind": self.kind,
            "slot": self.slot.isoformat().replace("+00:00", "Z"),
            "status": self.status,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "steps": [s.__dict__ for s in self.steps],
        }


def _permanent(e: BaseException) -> bool:
    return any(c.__name__ in _PERMANENT for c in type(e).__mro__)


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:500]


class Agent:
    def __init__(
        self,
        cfg: Config,
        store,
        *,
        name: str | None = None,
        notifier: notify.Notifier | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], object] | None = None,
        environ: dict | None = None,
        drill=None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.name = name or cfg.agent.name or socket.gethostname()
        self.clock = clock
        self.sleep = sleep  # a retry's wait; default: until the backoff ends or the agent is stopped
        self.stopping = threading.Event()  # run()'s stop: the job in flight finishes, nothing else starts
        self.environ = dict(os.environ if environ is None else environ)
        self.ttl = parse_duration(cfg.agent.claim_ttl)
        self.backoff = parse_duration(cfg.agent.retry_backoff)
        self.notifier = notifier if notifier is not None else self._notifier()
        self._drill = drill  # tests may pass a stand-in with run_drill's signature; default ops.drill.run_drill
        self._held: set[str] = set()
        self._lost: set[str] = set()  # systems whose claim another agent took over while a job ran
        self._held_lock = threading.Lock()

    def _notifier(self) -> notify.Notifier:
        a = self.cfg.agent
        urls = notify.read_urls(a.notify_file, a.notify_env, self.environ)
        tenants = {t: notify.read_urls(v.notify_file, "", self.environ) for t, v in self.cfg.tenants.items()}
        return notify.Notifier(urls, {t: u for t, u in tenants.items() if u})

    # ---- the loop --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Register, drop what a previous life of this agent left running, and write the configuration."""
        now = self.clock()
        self._refuse_twin(now)
        self.store.heartbeat(
            self.name, now, host=socket.gethostname(), pid=os.getpid(), version=__version__, started=True
        )
        self.store.abandon_runs(self.name, now, "the agent restarted before it finished")
        self.store.sync_config(self.cfg, now)

    def _refuse_twin(self, now: datetime) -> None:
        """Another live agent with this name would have its runs in flight marked abandoned and its claims
        dropped by start(): a process of this host that still exists, or one elsewhere seen recently."""
        host = socket.gethostname()
        for a in self.store.agents():
            if a.name != self.name or (a.host == host and a.pid == os.getpid()):
                continue
            # seen recently (a pass renews it; a job renews its claims) — and, on this host, its process
            # still exists: after a reboot the old pid may belong to anything
            alive = (now - a.last_seen).total_seconds() < max(120.0, 4 * self.ttl)
            if alive and a.host == host and a.pid:
                try:
                    os.kill(a.pid, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if alive:
                where = f"pid {a.pid} on this host" if a.host == host else f"host {a.host}"
                raise ConfigError(
                    f"an agent named {self.name!r} is running ({where}): stop it, or give this one another --name"
                )

    def due(self, now: datetime) -> list[Job]:
        done: dict[tuple[str, str], datetime] = {}
        horizon = now + timedelta(seconds=SLOT_SKEW)
        for (sid, kind), slot in self.store.last_slots().items():
            if slot > horizon:  # run by an agent whose clock is ahead: it must not hold the schedule back
                continue
            job = _JOB_OF_RUN.get(kind)
            if job is not None and ((sid, job) not in done or slot > done[(sid, job)]):
                done[(sid, job)] = slot
        return schedule.due_jobs(self.cfg, done, now)

    def tick(self, kinds=None, systems=None) -> list[JobOutcome]:
        """One pass: every due job, systems in parallel (at most `parallel`), a system's jobs in order.
        `kinds` (backup, maintain, drill) and `systems` (ids) limit it to those jobs; the others stay due."""
        now = self.clock()
        self.store.heartbeat(self.name, now)
        per_system: dict[str, list[Job]] = {}
        for job in self.due(now):
            if (kinds is None or job.kind in kinds) and (systems is None or job.system.id in systems):
                per_system.setdefault(job.system.id, []).append(job)
        requested = self._take_requests(now, per_system, kinds, systems)
        outcomes: list[JobOutcome] = []
        if per_system:
            stop = threading.Event()
            renewer = threading.Thread(target=self._renew_claims, args=(stop,), daemon=True)
            renewer.start()
            try:
                with ThreadPoolExecutor(self.cfg.agent.parallel, thread_name_prefix="cermin-agent") as pool:
                    for result in pool.map(self._run_system, per_system.values()):
                        outcomes += result
            finally:
                stop.set()
                renewer.join()
        if requested:
            self._finish_requests(requested, [j for jobs in per_system.values() for j in jobs], outcomes)
        self.notify(self.clock())
        return outcomes

    # ---- backups and drills asked for on the dashboard (action_requests, docs/dashboard.md) -------------
    def _take_requests(self, now, per_system, kinds=None, systems=None) -> dict[int, Job]:
        """Take the pending requests for this agent's systems; each is served by a due job of its kind, or
        by a manual run (slot None) after the system's due jobs. Returns request id -> its job."""
        from cermin.ops.webstore import WebStore

        ids = [s.id for s in self.cfg.systems if systems is None or s.id in systems]
        try:
            taken = WebStore(self.store).take_actions(ids, self.name, now, kinds=kinds)
        except CerminError:
            return {}
        by_id = {s.id: s for s in self.cfg.systems}
        served: dict[int, Job] = {}
        for req in taken:
            jobs = per_system.setdefault(req.system_id, [])
            job = next((j for j in jobs if j.kind == req.kind), None)
            if job is None:
                job = ManualJob(by_id[req.system_id], req.kind, now, 0.0, request_id=req.id)
                jobs.append(job)
            served[req.id] = job
        return served

    def _finish_requests(self, served: dict[int, Job], jobs: list[Job], outcomes: list[JobOutcome]) -> None:
        from cermin.ops.webstore import WebStore

        by_job = {id(j): o for j, o in zip(jobs, outcomes, strict=False)}
        ws = WebStore(self.store)
        for request_id, job in served.items():
            o = by_job.get(id(job))
            status = "pending" if o is None or o.status == "skipped" else "failed" if o.status == "failed" else "done"
            run_id = next((s.run_id for s in o.steps if s.run_id), None) if o is not None else None
            try:
                ws.finish_action(request_id, status, run_id=run_id, message=o.message if o else None, now=self.clock())
            except CerminError:
                pass  # stays taken; the dashboard shows by whom and since when

    def run(self, stop: threading.Event, interval: float = 30.0, on_outcome=None) -> None:
        """Tick until `stop` is set; a tick that fails (the state store unreachable) is retried next time.
        Once `stop` is set the job in flight finishes (its retries end), and nothing else starts: what the
        pass had left stays due for the next start."""
        self.stopping = stop
        self.start()
        while not stop.is_set():
            try:
                for o in self.tick():
                    if on_outcome is not None:
                        on_outcome(o)
            except Exception as e:  # the store unreachable, a bug: one line, and the next pass tries again
                if on_outcome is not None:
                    on_outcome(JobOutcome("", "tick", self.clock(), "failed", f"{type(e).__name__}: {_first_line(e)}"))
            stop.wait(interval)

    def _renew_claims(self, stop: threading.Event) -> None:
        while not stop.wait(max(1.0, self.ttl / 3)):
            with self._held_lock:
                held = list(self._held)
            for sid in held:
                try:
                    if not self.store.renew(sid, self.name, self.ttl, self.clock()):
                        self._lost.add(sid)  # another agent took it over: start nothing more for it
                except CerminError:
                    pass  # the store is away: the claim may lapse, the slot's run record still guards it

    # ---- one system ------------------------------------------------------------------------------------
    @staticmethod
    def _stopped(job: Job) -> JobOutcome:
        return JobOutcome(job.system.id, job.kind, job.slot, "skipped", "the agent is stopping: still due")

    def _run_system(self, jobs: list[Job]) -> list[JobOutcome]:
        system = jobs[0].system
        if self.stopping.is_set():
            return [self._stopped(j) for j in jobs]
        now = self.clock()
        try:
            # a claim names a run kind: a maintenance job starts with prune
            kind = "prune" if jobs[0].kind == MAINTAIN else jobs[0].kind
            claimed = self.store.claim(system.id, self.name, kind, self.ttl, now)
        except CerminError as e:
            return [JobOutcome(system.id, j.kind, j.slot, "failed", f"state store: {_first_line(e)}") for j in jobs]
        if not claimed:
            return [JobOutcome(system.id, j.kind, j.slot, "skipped", "claimed by another agent") for j in jobs]
        with self._held_lock:
            self._held.add(system.id)
        self._lost.discard(system.id)
        try:
            out = []
            for job in jobs:
                if system.id in self._lost:
                    out.append(JobOutcome(system.id, job.kind, job.slot, "skipped", "claim lost to another agent"))
                else:
                    out.append(self._stopped(job) if self.stopping.is_set() else self._run_job(job))
            return out
        finally:
            with self._held_lock:
                self._held.discard(system.id)
            try:
                self.store.release(system.id, self.name)
            except CerminError:
                pass  # the claim expires on its own

    def _run_job(self, job: Job) -> JobOutcome:
        t0 = time.monotonic()
        out = JobOutcome(job.system.id, job.kind, job.slot, "ok")
        try:
            {BACKUP: self._backup, MAINTAIN: self._maintain, DRILL: self._drill_job}[job.kind](job, out)
        except Exception as e:  # one system's failure never stops the loop; it is in the outcome
            out.status, out.message = "failed", _first_line(e)
        if out.status == "ok" and out.steps:
            worst = max(out.steps, key=lambda s: ("skipped", "ok", "warning", "failed").index(s.status))
            if worst.status in ("warning", "failed"):
                out.status, out.message = worst.status, worst.message
            elif all(s.status == "skipped" for s in out.steps):
                out.status, out.message = "skipped", out.steps[0].message
        out.seconds = time.monotonic() - t0
        return out

    def _step(self, job: Job, out: JobOutcome, kind: str, copy: str, fn) -> object | None:
        """Run fn() as one recorded run of (system, kind, copy, slot): retried with backoff on errors that
        a retry can fix; fn returns (status, message, result, finish fields). None when not run."""
        slot = None if isinstance(job, ManualJob) else job.slot  # a manual run never takes a schedule slot
        run_id = self.store.start_run(job.system.id, kind, slot, self.name, copy=copy, now=self.clock())
        if run_id is None:
            out.steps.append(Step(kind, copy, "skipped", f"{kind} {copy}: this slot already ran"))
            return None
        attempts, result = 0, None
        while True:
            attempts += 1
            try:
                status, message, result, fields = fn()
                break
            except Exception as e:
                status, message, fields = "failed", _first_line(e), {}
                if _permanent(e) or attempts > self.cfg.agent.retries or self.stopping.is_set():
                    break
                delay = self.backoff * 2 ** (attempts - 1)
                if self.sleep is not None:
                    self.sleep(delay)
                elif self.stopping.wait(delay):
                    break
        self._store_write(
            lambda: self.store.finish_run(
                run_id, status, self.clock(), error=message if status != "ok" else None, attempts=attempts, **fields
            )
        )
        out.steps.append(Step(kind, copy, status, message, run_id))
        return result

    def _store_write(self, write, attempts: int = 4):
        """A write to the state store after the work it records is done: retried on its own (a short
        backoff), so a store hiccup never makes the agent redo the work (a second backup, a second signed
        drill report). Raises the last error if the store stays away."""
        for n in range(attempts):
            try:
                return write()
            except CerminError:
                if n == attempts - 1 or self.stopping.wait(min(30.0, 2.0**n)):
                    raise

    def _open(self, system: ResolvedSystem, copy: str):
        from cermin.ops.repos import open_config_repo

        return open_config_repo(self.cfg, system.copies[copy], self.environ)

    # ---- backup ----------------------------------------------------------------------------------------
    def _backup(self, job: Job, out: JobOutcome) -> None:
        from cermin.ops.sources import backup_system

        s = job.system
        repos: dict[str, object] = {}

        def backup():
            repos["primary"] = repo = repos.get("primary") or self._open(s, "primary")
            tmp = os.path.join(self.cfg.agent.workdir, "tmp")
            os.makedirs(tmp, mode=0o700, exist_ok=True)
            result = backup_system(repo, s, environ=self.environ, tmpdir=tmp)
            snaps = [r.summary for r in result.sources if r.summary is not None and r.summary.snapshot_id]
            if not result.ok and not snaps and not result.hook_errors:
                raise CerminError("; ".join(result.errors) or "no source was saved")
            status = "ok" if result.ok else "warning" if snaps and len(snaps) == len(s.sources) else "failed"
            times = [_parse(x.snapshot.time) for x in snaps]
            fields = dict(
                bytes=sum(x.snapshot.summary.total_bytes for x in snaps),
                files=sum(x.snapshot.summary.total_files for x in snaps),
                snapshot_id=snaps[0].snapshot_id if len(snaps) == 1 else None,
                # the copy's data is as new as its oldest source saved in this run, and only a complete run counts
                data_time=min(times) if status != "failed" and times else None,
                details={"sources": [r.to_json() for r in result.sources], "hook_errors": result.hook_errors},
            )
            return status, "; ".join(result.errors), snaps, fields

        snaps = self._step(job, out, "backup", "primary", backup)
        if snaps:
            self._record_new(s, "primary", snaps, repos.get("primary"))
        if "primary" not in repos:
            return
        self._forget(job, out, repos["primary"], "primary")
        self._sync_copy(s, "primary", repos["primary"])
        for copy in ("immutable", "mirror"):
            if copy in s.copies:
                self._mirror(job, out, repos["primary"], copy)

    def _record_new(self, s: ResolvedSystem, copy: str, summaries, repo=None) -> None:
        """The new snapshots in the store's timeline, with the guard's effective verdict (marks and scans
        already in the repository included), and an alarm for each one the evidence flags itself (one
        flagged only because it follows an older alarm adds none: that alarm is open already)."""
        from cermin.ops.state import SeenSnapshot
        from cermin.repo.snapshots import SnapshotRef

        refs = [SnapshotRef(x.snapshot_id, x.snapshot) for x in summaries]
        eff = {}
        if repo is not None and refs:
            from cermin.guard.verdict import effective_verdicts

            try:
                eff = effective_verdicts(repo, refs)
            except CerminError:
                eff = {}  # the snapshots' own verdicts below
        seen, alarms = [], []
        for x in summaries:
            g = x.snapshot.extra.get("guard") if isinstance(x.snapshot.extra, dict) else None
            g = g if isinstance(g, dict) else {}
            v = eff.get(x.snapshot_id)
            verdict = v.verdict if v is not None else g.get("verdict")
            score = v.score if v is not None else g.get("score")
            score = float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
            seen.append(
                SeenSnapshot(
                    x.snapshot_id,
                    _parse(x.snapshot.time),
                    size=x.snapshot.summary.total_bytes,
                    files=x.snapshot.summary.total_files,
                    verdict=verdict if isinstance(verdict, str) else None,
                    score=score,
                )
            )
            own = (v.judged or v.verdict) if v is not None and v.inherited_from else verdict
            if own in ("suspicious", "infected"):
                reasons = v.reasons if v is not None else g.get("reasons")
                reasons = [str(r) for r in reasons][:20] if isinstance(reasons, list) else []
                alarms.append((x.snapshot_id, own, reasons, score))
        now = self.clock()
        for sid, own, reasons, score in alarms:
            self._store_write(
                lambda a=(sid, own, reasons, score): self.store.open_alarm(s.id, copy, *a[:3], score=a[3], now=now)
            )
        self._store_write(lambda: self.store.record_snapshots(s.id, copy, seen, now))

    def _forget(self, job: Job, out: JobOutcome, repo, copy: str) -> None:
        from cermin.engine.forget import KeepPolicy
        from cermin.ops import commands

        r = job.system.policy.retention
        policy = KeepPolicy(r.last, r.hourly, r.daily, r.weekly, r.monthly, r.yearly, r.within or None)

        def forget():
            res = commands.forget(repo, commands.ForgetOptions(policy=policy, hosts=(job.system.hostname,)))
            done = res.parts[0]
            if done.approval:  # a server under the two-person rule: the removal waits for an admin
                return "warning", f"forget waits for approval {done.approval}", res, {}
            return "ok", "", res, {"details": {"removed": len(done.ids), "locked": len(done.locked)}}

        self._step(job, out, "forget", copy, forget)

    def _mirror(self, job: Job, out: JobOutcome, primary, copy: str) -> None:
        from cermin.engine.mirror import MirrorOptions
        from cermin.ops import commands

        s = job.system
        holder: dict[str, object] = {}

        def mirror():
            holder["repo"] = dst = holder.get("repo") or self._open(s, copy)
            res = commands.mirror(primary, dst, MirrorOptions(hosts=(s.hostname,)))
            status = "ok" if not res.skipped else "warning"
            msg = "; ".join(f"{k[:8]}: {v}" for k, v in list(res.skipped.items())[:5])
            newest = _newest_time(dst, s.hostname)
            fields = dict(
                bytes=res.bytes_uploaded,
                files=len(res.copied),
                data_time=newest,
                details={"copied": len(res.copied), "present": res.present},
            )
            return status, msg, res, fields

        self._step(job, out, "mirror", copy, mirror)
        if "repo" in holder:
            self._forget(job, out, holder["repo"], copy)
            self._sync_copy(s, copy, holder["repo"], primary.config.id)

    def _sync_copy(self, s: ResolvedSystem, copy: str, repo, primary_id: str = "") -> None:
        """The copy's whole listing of this system's snapshots in the store (the dashboard's timeline shows
        which copies hold each; forgotten ones are marked gone), with effective verdicts, and the Object
        Lock retention of the newest one in an immutable copy. Best effort: the copy's runs hold the truth."""
        from cermin.engine.mirrorstatus import origin_of
        from cermin.guard.verdict import effective_verdicts
        from cermin.ops.state import SeenSnapshot
        from cermin.repo.snapshots import list_snapshots

        def key(r) -> str:
            # a copy mirrored from the primary is recorded under the primary's snapshot id: one snapshot,
            # held by several copies (the timeline's "held by"), not one row per copy's own id
            o = origin_of(r.snapshot) if primary_id else None
            return o[1] if o is not None and o[0] == primary_id else r.id

        try:
            refs = [r for r in list_snapshots(repo, hosts=(s.hostname,)) if not r.future]
            eff = effective_verdicts(repo, refs, context=refs)
            newest = max(refs, key=lambda r: r.snapshot.time, default=None)
            until = _retention(repo, newest.id) if newest is not None and copy == "immutable" else None
            seen = [
                SeenSnapshot(
                    key(r),
                    _parse(r.snapshot.time),
                    size=r.snapshot.summary.total_bytes if r.snapshot.summary else None,
                    files=r.snapshot.summary.total_files if r.snapshot.summary else None,
                    verdict=eff[r.id].verdict if r.id in eff else None,
                    score=eff[r.id].score if r.id in eff else None,
                    retain_until=until if newest is not None and r.id == newest.id else None,
                )
                for r in refs
            ]
            self._store_write(lambda: self.store.record_snapshots(s.id, copy, seen, self.clock(), complete=True))
        except CerminError:
            pass

    # ---- maintenance -----------------------------------------------------------------------------------
    def _last_slices(self, system_id: str) -> dict[str, tuple[int, int]]:
        """copy -> (k, n) of the newest successful verify slice (from its run's details)."""
        out: dict[str, tuple[int, int]] = {}
        for r in self.store.runs(system_id, limit=50, kind="verify", status="ok"):
            subset = (r.details or {}).get("subset") if isinstance(r.details, dict) else None
            if r.copy not in out and isinstance(subset, str) and "/" in subset:
                a, _, b = subset.partition("/")
                if a.isdigit() and b.isdigit():
                    out[r.copy] = (int(a), int(b))
        return out

    def _maintain(self, job: Job, out: JobOutcome) -> None:
        from cermin.ops import commands

        s = job.system
        day_k, n = schedule.verify_slice(s, job.slot)
        last = self._last_slices(s.id)
        for copy in s.copies:
            opened: dict[str, object] = {}
            # the slice after the last one verified (so a day the agent was down skips no slice); the
            # calendar's slice when none was verified yet
            k = _next_slice(last.get(copy), n, day_k)

            def repo(copy=copy, opened=opened):
                if "repo" not in opened:
                    opened["repo"] = self._open(s, copy)
                return opened["repo"]

            def prune(repo=repo):
                res = commands.prune(repo(), commands.PruneOptions())
                return ("ok" if res.exit_code == 0 else "warning"), "", res, {}

            def extend(repo=repo):
                return "ok", "", commands.lock_extend(repo()), {}

            def verify(repo=repo, k=k):
                res = commands.check(repo(), commands.CheckOptions(read_data=True, subset=f"{k}/{n}"))
                report = res.parts[-1]
                ok = report.exit_code == 0
                why = "" if ok else _check_problem(report)
                return ("ok" if ok else "failed"), why, res, {"details": {"subset": f"{k}/{n}"}}

            self._step(job, out, "prune", copy, prune)
            if copy == "immutable" and "repo" in opened and _has_lock(opened["repo"]):
                self._step(job, out, "lock_extend", copy, extend)
            self._step(job, out, "verify", copy, verify)

    # ---- drills ----------------------------------------------------------------------------------------
    def _drill_job(self, job: Job, out: JobOutcome) -> None:
        s = job.system
        copies = list(s.copies)
        n = int((job.slot - datetime(2020, 1, 1, tzinfo=UTC)).total_seconds() // max(1, s.policy.drill_every))
        copy = copies[n % len(copies)]  # every copy in turn
        run_drill = self._drill
        if run_drill is None:
            from cermin.ops.drill import run_drill
        started = self.clock()

        def drill():
            res = run_drill(self.cfg, s, copy=copy, agent_name=self.name, environ=self.environ)
            r = res.report
            msg = "" if res.passed else _drill_problem(r)
            status = "ok" if res.passed else "failed"
            return status, msg, res, {"details": {"rto_s": r.rto_measured_s, "report": r.id, "met": r.met}}

        res = self._step(job, out, "drill", copy, drill)
        if res is not None and res.report.snapshots:  # one that restored nothing: its run holds the failure
            r = res.report
            self._store_write(
                lambda: self.store.record_drill(
                    s.id,
                    r.snapshots[0].id,
                    copy,
                    started_at=started,
                    rto_measured_s=r.rto_measured_s,
                    rto_target_s=r.rto_target_s,
                    verdict=r.verdict,
                    report_id=res.aux or r.id,
                    report_digest=res.digest,
                    error=(None if res.passed else _drill_problem(r)) or None,
                    now=self.clock(),
                    **_drill_extra(res),
                )
            )

    # ---- notifications ---------------------------------------------------------------------------------
    def conditions(self, now: datetime) -> tuple[list[notify.Event], list[tuple[str, str]]]:
        """What is wrong now, per system, as notification events (and which (kind, system) were checked)."""
        events: list[notify.Event] = []
        checked: list[tuple[str, str]] = []
        for st in self.store.status(now):
            sid = st.id
            checked += [(k, sid) for k in notify.KINDS]
            primary = st.copies.get("primary")
            if primary is not None and not primary.fresh:
                age = "never" if primary.age_s is None else f"{primary.age_s / 3600:.1f} h ago"
                events.append(
                    notify.Event(
                        notify.RPO_BREACH,
                        sid,
                        f"cermin: {sid} breaches its RPO",
                        f"{sid}: last good backup {age}; RPO {st.system.rpo_s // 60} min",
                    )
                )
            for kind, c in st.copies.items():
                if kind != "primary" and c.required and c.newest is not None and not c.fresh:
                    events.append(
                        notify.Event(
                            notify.MIRROR_LAG,
                            sid,
                            f"cermin: {sid} {kind} copy lags",
                            f"{sid}: the {kind} copy {c.repository} is {c.age_s / 3600:.1f} h old",
                        )
                    )
            if st.open_alarms:
                a = st.open_alarms[0]
                events.append(
                    notify.Event(
                        notify.GUARD_ALARM,
                        sid,
                        f"cermin: guard alarm on {sid}",
                        f"{sid}: snapshot {a.snapshot_id[:8]} is {a.verdict}: " + "; ".join(a.reasons[:3]),
                    )
                )
            failed = [r for (kind, _), r in st.last_runs.items() if r.status == "failed" and kind != "drill"]
            if failed:
                r = failed[0]
                events.append(
                    notify.Event(
                        notify.FAILED,
                        sid,
                        f"cermin: {r.kind} of {sid} failed",
                        f"{sid}: {r.kind} ({r.copy or '-'}) failed: {r.error or ''}",
                    )
                )
            drill_runs = [r for (kind, _), r in st.last_runs.items() if kind == "drill"]
            newest_drill = max(drill_runs, key=lambda r: r.started_at, default=None)
            if (st.last_drill is not None and st.last_drill.verdict != "pass") or (
                newest_drill is not None and newest_drill.status == "failed"
            ):
                events.append(
                    notify.Event(
                        notify.DRILL_FAILED,
                        sid,
                        f"cermin: drill of {sid} failed",
                        f"{sid}: the last restore drill failed",
                    )
                )
        return events, checked

    def notify(self, now: datetime) -> list[notify.Event]:
        """Send what started or ended since it was last told; every delivery is recorded (by URL name).
        What was told comes from the store, so agents sharing it, or one restarted, do not repeat a
        condition that goes on (two agents deciding in the same second may both send it)."""
        events, checked = self.conditions(now)
        sent = self.store.last_sent()
        told = set()
        for (sid, ev), at in sent.items():
            ended = sent.get((sid, ev + RECOVERED))
            if ev in notify.KINDS and sid is not None and (ended is None or at > ended):
                told.add((ev, sid))
        self.notifier.set_open(told)
        before = len(self.notifier.sent)
        changed = self.notifier.update(events, checked)
        for e, target, ok in self.notifier.sent[before:]:
            kind = e.kind if e.failure else e.kind + RECOVERED
            self.store.record_notification(kind, target, e.title, system_id=e.system, ok=ok, now=now)
        del self.notifier.sent[:before]  # the store keeps the history
        return changed


# ---- helpers ------------------------------------------------------------------------------------------
def _next_slice(last: tuple[int, int] | None, n: int, calendar: int) -> int:
    """The read-data slice to verify now: the one after the last verified (same cycle length), else the
    calendar's (ops/schedule.py verify_slice)."""
    if last is None or last[1] != n or not 1 <= last[0] <= n:
        return calendar
    return last[0] % n + 1


def _parse(t: str) -> datetime:
    from cermin.repo.snapshots import timestamp

    ts = timestamp(t)
    if ts is None:
        raise ConfigError(f"bad snapshot time {t!r}")
    return datetime.fromtimestamp(ts, UTC)


def _newest_time(repo, hostname: str) -> datetime | None:
    from cermin.repo.snapshots import list_snapshots

    refs = [r for r in list_snapshots(repo, hosts=(hostname,)) if not r.future]
    return max((_parse(r.snapshot.time) for r in refs), default=None)


def _retention(repo, snapshot_id: str) -> datetime | None:
    """The Object Lock retain-until of a snapshot object (one request), or None."""
    from cermin.backend.base import Kind

    b = repo.backend
    while b is not None and not hasattr(b, "retention"):
        b = getattr(b, "inner", None)
    if b is None:
        return None
    try:
        until = b.retention(Kind.SNAPSHOT, snapshot_id)
    except Exception:
        return None
    return until if isinstance(until, datetime) else None


def _has_lock(repo) -> bool:
    b = repo.backend
    while b is not None:
        if getattr(getattr(b, "caps", None), "retention", False) and getattr(b, "lock", None) is not None:
            return True
        b = getattr(b, "inner", None)
    return False


def _check_problem(report) -> str:
    errors = getattr(report, "errors", None)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return _first_line(getattr(errors[0], "message", str(errors[0]))) + more
    return "check found damage"


def _drill_problem(r) -> str:
    """Why a drill failed, in one line: its errors, else the checks that failed, else the RTO."""
    if r.errors:
        return "; ".join(r.errors[:3])
    failed = [f"check {c.name} failed: {c.detail}" for c in r.checks if not c.ok and not c.skipped]
    if failed:
        return _first_line("; ".join(failed[:3]))
    if not r.met:
        return f"restored in {r.rto_measured_s:.0f}s, over the RTO of {r.rto_target_s:.0f}s"
    return "the drill failed"


def _drill_extra(res) -> dict:
    r = res.report
    total = sum(getattr(x, "bytes", 0) or 0 for x in r.snapshots)
    files = sum(getattr(x, "files", 0) or 0 for x in r.snapshots)
    rate = total / r.rto_measured_s if r.rto_measured_s > 0 else None
    return {"bytes": total, "files": files, "bytes_per_s": rate}


def next_wakeup(agent: Agent, now: datetime) -> datetime:
    """The earliest next slot of any job (for `agent status`)."""
    return min(
        (schedule.next_slot(s, k, now) for s in agent.cfg.systems for k in schedule.JOB_KINDS),
        default=now + timedelta(minutes=1),
    )
