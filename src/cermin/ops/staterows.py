"""The rows the state store returns (cermin.ops.state): frozen dataclasses named as their columns, each with
`to_json()` (times as RFC 3339 UTC), for `cermin agent status --json`, the REST API and evidence exports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


# ---- rows --------------------------------------------------------------------------------------------------
def _iso(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(v, dict):
        return {str(k): _iso(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_iso(x) for x in v]
    return v


class _Row:
    """A frozen row of one table: fields named as its columns; `to_json()` with RFC 3339 times."""

    __slots__ = ()

    @classmethod
    def of(cls, row) -> Any:
        m = row._mapping
        return cls(**{f.name: cls._conv(f.name, m[f.name]) for f in fields(cls)})

    @staticmethod
    def _conv(name: str, value: Any) -> Any:
        return value

    def to_json(self) -> dict:
        return _iso(asdict(self))


@dataclass(frozen=True, slots=True)
class SystemRow(_Row):
    id: str
    tenant: str
    name: str
    policy: str
    rpo_s: int
    rto_s: int
    drill_every_s: int
    verify_every_s: int
    priority: int
    required: tuple[str, ...]  # copy kinds the class requires
    copies: dict[str, str]  # copy kind -> repository name
    schedule: str
    interval_s: int
    hostname: str
    description: str
    digest: str
    updated_at: datetime
    retired_at: datetime | None

    @staticmethod
    def _conv(name, value):
        if name == "required":
            return tuple(x for x in (value or ()) if isinstance(x, str))
        if name == "copies":
            return {k: v for k, v in (value or {}).items() if isinstance(k, str) and isinstance(v, str)}
        return value


@dataclass(frozen=True, slots=True)
class Run(_Row):
    id: int
    system_id: str
    kind: str
    copy: str | None  # primary | immutable | mirror, None when the run is not about one copy
    slot: datetime | None
    agent: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    duration_s: float | None
    bytes: int | None
    files: int | None
    snapshot_id: str | None
    data_time: datetime | None
    attempts: int
    error: str | None
    details: dict | None

    @staticmethod
    def _conv(name, value):
        return (value or None) if name == "copy" else value


@dataclass(frozen=True, slots=True)
class Claim(_Row):
    system_id: str
    agent: str
    kind: str
    claimed_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AgentRow(_Row):
    name: str
    host: str
    pid: int | None
    version: str
    started_at: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class SnapshotRecord(_Row):
    system_id: str
    copy: str
    snapshot_id: str
    time: datetime
    seen_at: datetime
    run_id: int | None
    size: int | None
    files: int | None
    verdict: str | None
    score: float | None
    retain_until: datetime | None
    gone_at: datetime | None


@dataclass(frozen=True, slots=True)
class Drill(_Row):
    id: int
    run_id: int | None
    system_id: str
    snapshot_id: str
    copy: str
    started_at: datetime
    finished_at: datetime
    rto_measured_s: float
    rto_target_s: float
    verdict: str
    bytes: int | None
    files: int | None
    bytes_per_s: float | None
    report_id: str | None
    report_digest: str | None
    signature_ok: bool | None
    error: str | None
    details: dict | None


@dataclass(frozen=True, slots=True)
class Alarm(_Row):
    id: int
    system_id: str
    copy: str
    snapshot_id: str
    verdict: str
    score: float | None
    reasons: list[str]
    opened_at: datetime
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    note: str | None


@dataclass(frozen=True, slots=True)
class Notification(_Row):
    id: int
    sent_at: datetime
    system_id: str | None
    event: str
    target: str
    title: str
    ok: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class SeenSnapshot:
    """A snapshot as the agent saw it in one copy (for `record_snapshots`)."""

    snapshot_id: str
    time: datetime
    size: int | None = None
    files: int | None = None
    verdict: str | None = None  # the guard's effective verdict
    score: float | None = None
    retain_until: datetime | None = None  # Object Lock retention on the copy
    run_id: int | None = None


@dataclass(frozen=True)
class SyncResult:
    added: list[str] = field(default_factory=list)  # system ids new (or back) in the store
    changed: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
