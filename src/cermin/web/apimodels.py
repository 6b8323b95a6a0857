"""The REST API's response models (pydantic): what `/api/v1/openapi.json` documents and every answer is
checked against. The rows keep the state store's names (cermin.ops.staterows, as `cermin agent status
--json` prints them, docs/json.md): a system's class is `policy`, durations are seconds (`_s`), times are
RFC 3339 UTC. The converters take the store's rows and the fleet page's view (web/fleetview.py), so the
API says what the pages say."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cermin.ops.fleetstatus import CopyStatus, SystemStatus
from cermin.ops.webstore import ActionRequest
from cermin.web import fleetview

CopyKind = Literal["primary", "immutable", "mirror"]
Color = Literal["green", "amber", "red"]


class Out(BaseModel):
    """Serialized by alias: `copy` is spelled `copy_` in Python (BaseModel has a method of that name)."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    @classmethod
    def of(cls, row):
        """From a store row (a dataclass with the same names)."""
        return cls(**{name: getattr(row, f.alias or name) for name, f in cls.model_fields.items()})


# ---- the store's rows --------------------------------------------------------------------------------------
class SystemOut(Out):
    """A system and its class terms, as the agent last synced them from the configuration."""

    id: str = Field(description="tenant/system")
    tenant: str
    name: str
    policy: str = Field(description="the class name (strategis, tinggi, rendah, ...)")
    rpo_s: int = Field(description="recovery point objective: the newest good data may be at most this old")
    rto_s: int = Field(description="recovery time objective: a drill must restore and prove the data within it")
    drill_every_s: int
    verify_every_s: int
    priority: int = Field(description="the class's priority (lower: more important)")
    required: list[str] = Field(description="copy kinds the class requires")
    copies: dict[str, str] = Field(description="copy kind -> repository name")
    schedule: str = Field(description="cron expression, or '' (every interval_s)")
    interval_s: int
    hostname: str
    description: str
    digest: str = Field(description="sha256 of the system's resolved configuration")
    updated_at: datetime
    retired_at: datetime | None


class RunOut(Out):
    id: int
    system_id: str
    kind: str = Field(description="backup, forget, prune, lock_extend, mirror, verify, drill, hook")
    copy_: str | None = Field(alias="copy", description="primary, immutable, mirror, or null when not about one copy")
    slot: datetime | None = Field(description="the schedule slot it served; null for a manual run")
    agent: str
    started_at: datetime
    finished_at: datetime | None
    status: str = Field(description="running, ok, warning, failed, skipped")
    duration_s: float | None
    bytes: int | None
    files: int | None
    snapshot_id: str | None
    data_time: datetime | None = Field(description="time of the newest data the run left in its copy")
    attempts: int
    error: str | None
    details: dict | None


class SnapshotOut(Out):
    system_id: str
    copy_: str = Field(alias="copy")
    snapshot_id: str
    time: datetime
    seen_at: datetime = Field(description="when the agent last saw it in the copy")
    run_id: int | None
    size: int | None
    files: int | None
    verdict: str | None = Field(description="the guard's verdict: clean, suspicious, infected, unknown")
    score: float | None
    retain_until: datetime | None = Field(description="Object Lock retention seen on the copy")
    gone_at: datetime | None = Field(description="no longer in the copy (forgotten)")


class DrillOut(Out):
    id: int
    run_id: int | None
    system_id: str
    snapshot_id: str
    copy_: str = Field(alias="copy")
    started_at: datetime
    finished_at: datetime
    rto_measured_s: float = Field(description="measured time to restore and prove the data")
    rto_target_s: float
    verdict: Literal["pass", "fail"]
    bytes: int | None
    files: int | None
    bytes_per_s: float | None
    report_id: str | None = Field(description="the signed drill report's aux record")
    report_digest: str | None
    signature_ok: bool | None
    error: str | None
    details: dict | None


class AlarmOut(Out):
    id: int
    system_id: str
    copy_: str = Field(alias="copy")
    snapshot_id: str
    verdict: str
    score: float | None
    reasons: list[str]
    opened_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    note: str | None


class ClaimOut(Out):
    """An agent works on the system now."""

    system_id: str
    agent: str
    kind: str
    claimed_at: datetime
    expires_at: datetime


class CopyOut(Out):
    """One copy of a system: where it is, how fresh, whether it is locked, how far it trails the primary."""

    kind: str
    repository: str
    required: bool = Field(description="the class requires this copy")
    newest: datetime | None = Field(description="time of the newest data a good backup or mirror left in it")
    age_s: float | None
    fresh: bool = Field(description="newest data no older than the RPO")
    immutable: bool
    lock_until: datetime | None = Field(description="Object Lock retention of its newest snapshot, when seen")
    lag_s: float | None = Field(description="how far its newest data trails the primary's (other copies)")


class CopyDetailOut(CopyOut):
    last_backup: RunOut | None
    last_mirror: RunOut | None
    last_verify: RunOut | None
    snapshot: SnapshotOut | None = Field(description="the newest snapshot the agent saw in it")


class DrillSummaryOut(Out):
    id: int
    finished_at: datetime
    verdict: Literal["pass", "fail"]
    rto_measured_s: float
    rto_target_s: float
    copy_: str = Field(alias="copy")


# ---- the fleet ---------------------------------------------------------------------------------------------
class SystemSummaryOut(Out):
    """One row of the fleet: what the fleet page shows for a system."""

    id: str
    tenant: str
    tenant_name: str
    name: str
    policy: str
    priority: int
    rpo_s: int
    rto_s: int
    meets_class: bool = Field(description="meets its policy now")
    reasons: list[str] = Field(description="why not, in words (empty when it does)")
    reason_codes: list[str] = Field(description="why not, as the codes the `why` filter takes")
    color: Color = Field(description="backup age against the RPO: green <= RPO/2 < amber <= RPO < red")
    last_backup: datetime | None
    backup_age_s: float | None
    last_verify: datetime | None
    verdict: str | None = Field(description="the guard's verdict of the primary's newest snapshot")
    open_alarms: int
    copies: list[CopyOut]
    last_drill: DrillSummaryOut | None
    running: str | None = Field(description="the run kind an agent works on now, if any")


class CauseOut(Out):
    code: str
    count: int
    text: str


class TotalsOut(Out):
    systems: int
    meeting: int
    failing: int
    sentence: str = Field(description='"212 of 240 systems meet their policy now; 28 do not, because: ..."')
    causes: list[CauseOut] = Field(description="why the others do not, most frequent first")


class FleetQueryOut(Out):
    sort: str
    tenant: str | None
    cls: str | None = Field(alias="class")
    state: str | None
    q: str
    why: str | None


class FleetOut(Out):
    now: datetime
    totals: TotalsOut = Field(
        description="over every system in scope (the tenant filter narrows it; the others do not)"
    )
    query: FleetQueryOut
    count: int = Field(description="systems listed (after the filters)")
    systems: list[SystemSummaryOut]


class TenantOut(Out):
    id: str
    name: str
    systems: int
    meeting: int
    failing: int


class TenantDetailOut(Out):
    """One tenant: its totals and its systems, as the tenant page shows them."""

    id: str
    name: str
    now: datetime
    totals: TotalsOut
    systems: list[SystemSummaryOut]


class SystemDetailOut(Out):
    """One system now: its class terms, copies, last runs, drill, alarms and whether it meets its policy."""

    now: datetime
    system: SystemOut
    tenant_name: str
    meets_class: bool
    reasons: list[str]
    reason_codes: list[str]
    color: Color
    last_backup: datetime | None
    backup_age_s: float | None
    last_mirror: datetime | None
    last_verify: datetime | None
    verdict: str | None
    copies: dict[str, CopyDetailOut]
    last_drill: DrillOut | None
    open_alarms: list[AlarmOut]
    last_runs: list[RunOut] = Field(description="the newest run per (kind, copy)")
    running: ClaimOut | None
    pending_actions: list[ActionRequestOut] = Field(description="backups and drills asked for, not yet finished")


# ---- lists -------------------------------------------------------------------------------------------------
class Page(Out):
    next: str | None = Field(description="pass as ?cursor= for the next page; null on the last one")


class RunPage(Page):
    items: list[RunOut]


class SnapshotPage(Page):
    items: list[SnapshotOut]


class DrillPage(Page):
    items: list[DrillOut]


class AlarmPage(Page):
    items: list[AlarmOut]


class AuditEntryOut(Out):
    id: int
    at: datetime
    user_name: str
    action: str
    target: str | None
    detail: dict | None
    ip: str | None


class AuditPage(Out):
    items: list[AuditEntryOut]
    next: int | None = Field(description="pass as ?before_id= for the next page; null on the last one")


class ActionRequestOut(Out):
    """A backup or drill asked for on the dashboard or the API; an agent takes it on its next pass."""

    id: int
    at: datetime
    user_name: str
    system_id: str
    kind: Literal["backup", "drill"]
    status: Literal["pending", "taken", "done", "failed"]
    agent: str | None
    taken_at: datetime | None
    finished_at: datetime | None
    run_id: int | None
    message: str | None


class ActionRequestList(Out):
    items: list[ActionRequestOut]


class ApprovalOut(Out):
    id: int
    action: str
    target: dict
    requested_by: str
    requested_at: datetime
    reason: str
    decided_by: str | None
    decided_at: datetime | None
    decision: Literal["approve", "reject"] | None
    executed_at: datetime | None
    result: dict | None


class ApprovalList(Out):
    items: list[ApprovalOut]


class AckIn(BaseModel):
    """Why the alarm is benign: kept in the repository's guard_ack record and in the store."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(min_length=1, max_length=2000, description="why this alarm is benign")


class AlarmAckOut(Out):
    """An acknowledged alarm: the store's record, and the guard_ack record written to the copy's repository."""

    alarm: AlarmOut
    repository: str = Field(description="the configured repository the guard_ack record was written to")
    record: str = Field(description="the guard_ack aux record's name")
    before: str = Field(description="the repository's verdict of the snapshot before the acknowledgement")
    verdict: str = Field(description="... and after it")


class MeOut(Out):
    name: str
    role: Literal["operator", "auditor", "viewer"]
    tenant: str | None = Field(description="a viewer's one tenant; null: every tenant")
    via: Literal["session", "token"]
    token: str | None = Field(description="the API token's name, when the request carried one")


SystemDetailOut.model_rebuild()


# ---- converters --------------------------------------------------------------------------------------------
def _copy(c: CopyStatus) -> CopyOut:
    return CopyOut(
        kind=c.kind,
        repository=c.repository,
        required=c.required,
        newest=c.newest,
        age_s=c.age_s,
        fresh=c.fresh,
        immutable=c.immutable,
        lock_until=c.lock_until,
        lag_s=c.lag_s,
    )


def _copy_detail(c: CopyStatus) -> CopyDetailOut:
    def run(r):
        return RunOut.of(r) if r is not None else None

    return CopyDetailOut(
        **_copy(c).__dict__,
        last_backup=run(c.last_backup),
        last_mirror=run(c.last_mirror),
        last_verify=run(c.last_verify),
        snapshot=SnapshotOut.of(c.snapshot) if c.snapshot is not None else None,
    )


def summary(row: fleetview.FleetRow) -> SystemSummaryOut:
    st, s = row.status, row.status.system
    d = st.last_drill
    return SystemSummaryOut(
        id=s.id,
        tenant=s.tenant,
        tenant_name=row.tenant_name,
        name=s.name,
        policy=s.policy,
        priority=s.priority,
        rpo_s=s.rpo_s,
        rto_s=s.rto_s,
        meets_class=st.meets_class,
        reasons=st.reasons,
        reason_codes=row.codes,
        color=row.color,
        last_backup=st.last_backup,
        backup_age_s=st.backup_age_s,
        last_verify=st.last_verify,
        verdict=st.verdict,
        open_alarms=len(st.open_alarms),
        copies=[_copy(c) for c in st.copies.values()],
        last_drill=None
        if d is None
        else DrillSummaryOut(
            id=d.id,
            finished_at=d.finished_at,
            verdict=d.verdict,
            rto_measured_s=d.rto_measured_s,
            rto_target_s=d.rto_target_s,
            copy_=d.copy,
        ),
        running=st.running.kind if st.running is not None else None,
    )


def totals(t: fleetview.Totals) -> TotalsOut:
    return TotalsOut(
        systems=t.systems,
        meeting=t.meeting,
        failing=t.failing,
        sentence=t.sentence,
        causes=[CauseOut(code=c.code, count=c.count, text=c.text) for c in t.causes],
    )


def fleet(view: fleetview.FleetView) -> FleetOut:
    q = view.query
    return FleetOut(
        now=view.now,
        totals=totals(view.totals),
        query=FleetQueryOut(
            sort=("-" if q.desc else "") + q.sort, tenant=q.tenant, cls=q.cls, state=q.state, q=q.q, why=q.why
        ),
        count=len(view.rows),
        systems=[summary(r) for r in view.rows],
    )


def system_detail(
    st: SystemStatus, tenant_name: str, now, pending: list[ActionRequest], codes: list[str]
) -> SystemDetailOut:
    return SystemDetailOut(
        now=now,
        system=SystemOut.of(st.system),
        tenant_name=tenant_name,
        meets_class=st.meets_class,
        reasons=st.reasons,
        reason_codes=codes,
        color=fleetview.age_color(st.backup_age_s, st.system.rpo_s),
        last_backup=st.last_backup,
        backup_age_s=st.backup_age_s,
        last_mirror=st.last_mirror,
        last_verify=st.last_verify,
        verdict=st.verdict,
        copies={k: _copy_detail(c) for k, c in st.copies.items()},
        last_drill=DrillOut.of(st.last_drill) if st.last_drill is not None else None,
        open_alarms=[AlarmOut.of(a) for a in st.open_alarms],
        last_runs=[RunOut.of(r) for r in st.last_runs.values()],
        running=ClaimOut.of(st.running) if st.running is not None else None,
        pending_actions=[ActionRequestOut.of(a) for a in pending],
    )
