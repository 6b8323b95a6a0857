"""The REST API under `/api/v1` (docs/dashboard.md "REST API"): JSON for everything the pages show, and the
actions the pages offer, for scripts and other tools. `/api/v1/openapi.json` documents it (response models
in web/apimodels.py); `/api/docs` lists it.

Who may ask: a logged-in session (its cookie; writes also carry the `X-CSRF-Token` header, as htmx does), or
a bearer API token (`Authorization: Bearer ...`, web/apitokens.py), which acts as its user and needs no CSRF
token. Missing or bad credentials are 401 (JSON). Scope is the user's: a viewer sees its one tenant, and
another tenant's system, alarm or request is 404 — the same answer as for one that does not exist. Writes
(backup, drill now, acknowledging an alarm) are the operator's (403 for the others) and are written to the
audit log.

Every read costs a fixed number of statements whatever the fleet size: the fleet and tenant answers are
the store's `status()` (seven statements) and the tenant names; lists are one statement per page.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyCookie, HTTPBearer
from pydantic import BaseModel, TypeAdapter

from cermin.ops import alarms as alarm_ops
from cermin.ops.state import StateError
from cermin.ops.staterows import SystemRow
from cermin.web import apimodels as m
from cermin.web import fleetview
from cermin.web.auth import SESSION_COOKIE, Principal, audit, operator, principal, reader
from cermin.web.fleet import fleet_view
from cermin.web.pages_common import site_config

# documented in the OpenAPI document as the two ways in; the checks themselves are web/auth.py's
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token: `cermin web token add NAME --user U` (acts as that user; no CSRF token needed).",
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="session",
    description="The dashboard's session cookie; writes also need the `X-CSRF-Token` header.",
)

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Security(bearer_scheme), Security(cookie_scheme)],
    responses={401: {"description": "no session or API token, or a bad one"}},
)

_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SYSTEM_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}$")
SORT_PATTERN = r"^-?(" + "|".join(fleetview.SORTS) + r")$"
Why = Literal[tuple(fleetview.REASONS)]  # type: ignore[valid-type]
TenantList = TypeAdapter(list[m.TenantOut])
NOT_FOUND = {404: {"description": "no such object, or not in your tenant"}}
Limit = Query(100, ge=1, le=1000, description="items per page")
Since = Query(None, description="from this time on (RFC 3339; UTC when no offset is given)")
Until = Query(None, description="before this time (RFC 3339; UTC when no offset is given)")
CursorQ = Query(None, max_length=200, description="the previous page's `next`")


def json_out(model: BaseModel, status_code: int = 200) -> Response:
    """The model as JSON (already validated when it was built: no second pass through FastAPI)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _store(request: Request):
    return request.app.state.store


def _now(request: Request) -> datetime:
    return request.app.state.clock()


def _system(request: Request, p: Principal, tenant: str, system: str) -> SystemRow:
    """A system this principal may see (retired ones too: their history stays), or 404."""
    sid = f"{tenant}/{system}"
    if not _SYSTEM_ID.match(sid):
        raise HTTPException(404, "not found")
    p.require_system(sid)
    found = next((s for s in _store(request).systems(tenant=tenant, include_retired=True) if s.id == sid), None)
    if found is None:
        raise HTTPException(404, "not found")
    return found


# ---- paging by time: (time, how many rows at that time were shown) ------------------------------------------
def _cursor(t: datetime, shown: int) -> str:
    raw = f"{t.astimezone(UTC).isoformat()}|{shown}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _uncursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        t, _, n = raw.partition("|")
        when, shown = datetime.fromisoformat(t), int(n)
        if when.tzinfo is None or not 0 <= shown <= 100_000:
            raise ValueError
        return when, shown
    except ValueError:
        raise HTTPException(422, "bad cursor: pass the previous page's `next` as it came") from None


def page_by_time(
    fetch: Callable[[datetime | None, int], list],
    time_of: Callable[[object], datetime],
    limit: int,
    cursor: str | None,
    until: datetime | None,
) -> tuple[list, str | None]:
    """One page of a list ordered newest first (by time, then id): fetch(until, n) returns the n newest
    rows before `until`. The cursor is the last row's time and how many rows at that time were shown, so a
    page boundary inside a run of equal times loses nothing (one statement per page)."""
    skip, at = 0, None
    if cursor:
        at, skip = _uncursor(cursor)
        bound = at + timedelta(microseconds=1)
        until = bound if until is None else min(until, bound)
    try:
        rows = fetch(until, skip + limit + 1)[skip:]
    except StateError as e:
        raise HTTPException(422, str(e)) from None
    items, more = rows[:limit], len(rows) > limit
    if not more or not items:
        return items, None
    last = time_of(items[-1])
    shown = sum(1 for x in items if time_of(x) == last) + (skip if last == at else 0)
    return items, _cursor(last, shown)


# ---- who am I ----------------------------------------------------------------------------------------------
@router.get("/me", response_model=m.MeOut, summary="Who is asking: name, role, tenant scope, session or token")
def me(p: Principal = Depends(principal)):
    return json_out(
        m.MeOut(
            name=p.name,
            role=p.role,
            tenant=p.tenant,
            via="token" if p.session is None else "session",
            token=p.token.name if p.token is not None else None,
        )
    )


# ---- the fleet ---------------------------------------------------------------------------------------------
@router.get(
    "/fleet",
    response_model=m.FleetOut,
    summary="The fleet: totals and one row per system, filtered and sorted like the fleet page",
    responses=NOT_FOUND,
)
def fleet(
    request: Request,
    p: Principal = Depends(principal),
    sort: str = Query("state", pattern=SORT_PATTERN, description="a sort key; '-' reverses"),
    tenant: str | None = Query(None, max_length=63, description="one tenant (a viewer: its own only)"),
    klass: str | None = Query(None, alias="class", max_length=63, description="one class"),
    state: Literal["failing", "ok"] | None = Query(None, description="failing or ok"),
    q: str | None = Query(None, max_length=200, description="text in the id, tenant name, hostname or description"),
    why: Why | None = Query(None, description="one reason code (the totals' causes)"),
):
    query = fleetview.FleetQuery.parse(sort, tenant, klass, state, q, why)
    return json_out(m.fleet(fleet_view(request, p, query)))


def _tenant_counts(rows: list[fleetview.FleetRow], names: dict[str, str]) -> list[m.TenantOut]:
    counts: dict[str, list[int]] = {k: [0, 0] for k in names}
    for r in rows:
        c = counts.setdefault(r.system.tenant, [0, 0])
        c[0] += 1
        c[1] += r.meets
    return [
        m.TenantOut(id=k, name=names.get(k, k), systems=n, meeting=ok, failing=n - ok)
        for k, (n, ok) in sorted(counts.items())
    ]


@router.get("/tenants", response_model=list[m.TenantOut], summary="Tenants with how many systems meet their policy")
def tenants(request: Request, p: Principal = Depends(principal)):
    view = fleet_view(request, p, fleetview.FleetQuery())
    out = _tenant_counts(view.rows, view.tenants)
    return Response(TenantList.dump_json(out, by_alias=True), media_type="application/json")


@router.get(
    "/tenants/{tenant}",
    response_model=m.TenantDetailOut,
    summary="One tenant: its totals and its systems (the tenant page)",
    responses=NOT_FOUND,
)
def tenant_detail(
    request: Request,
    tenant: str,
    p: Principal = Depends(principal),
    sort: str = Query("state", pattern=SORT_PATTERN),
):
    if not _TENANT.match(tenant):
        raise HTTPException(404, "not found")
    view = fleet_view(request, p, fleetview.FleetQuery.parse(sort, tenant))
    if tenant not in view.tenants:
        raise HTTPException(404, "not found")
    return json_out(
        m.TenantDetailOut(
            id=tenant,
            name=view.tenants[tenant],
            now=view.now,
            totals=m.totals(view.totals),
            systems=[m.summary(r) for r in view.rows],
        )
    )


# ---- one system ------------------------------------------------------------------------------------------
@router.get(
    "/systems/{tenant}/{system}",
    response_model=m.SystemDetailOut,
    summary="One system now: class terms, copies, last runs, last drill, open alarms, whether it meets its policy",
    responses=NOT_FOUND,
)
def system_detail(request: Request, tenant: str, system: str, p: Principal = Depends(principal)):
    sid = f"{tenant}/{system}"
    if not _SYSTEM_ID.match(sid):
        raise HTTPException(404, "not found")
    p.require_system(sid)
    store, now = _store(request), _now(request)
    st = store.system_status(sid, now)
    if st is None:
        raise HTTPException(404, "not found")
    names = store.tenants()
    pending = [
        a
        for a in request.app.state.webstore.action_requests(system_id=sid, limit=20)
        if a.status in ("pending", "taken")
    ]
    out = m.system_detail(st, names.get(tenant, tenant), now, pending, fleetview.reason_codes(st, now))
    return json_out(out)


@router.get(
    "/systems/{tenant}/{system}/snapshots",
    response_model=m.SnapshotPage,
    summary="A system's snapshots as the agent saw them in each copy, newest first (verdicts, sizes, locks)",
    responses=NOT_FOUND,
)
def snapshots(
    request: Request,
    tenant: str,
    system: str,
    p: Principal = Depends(principal),
    copy: Literal["primary", "immutable", "mirror"] | None = Query(None, description="one copy"),
    since: datetime | None = Since,
    until: datetime | None = Until,
    include_gone: bool = Query(False, description="also the snapshots no longer in their copy"),
    limit: int = Limit,
    cursor: str | None = CursorQ,
):
    s = _system(request, p, tenant, system)
    store = _store(request)
    items, nxt = page_by_time(
        lambda u, n: store.snapshots(s.id, copy=copy, since=_utc(since), until=u, include_gone=include_gone, limit=n),
        lambda x: x.time,
        limit,
        cursor,
        _utc(until),
    )
    return json_out(m.SnapshotPage(items=[m.SnapshotOut.of(x) for x in items], next=nxt))


@router.get(
    "/systems/{tenant}/{system}/drills",
    response_model=m.DrillPage,
    summary="A system's restore drills, newest first: measured RTO against the target, verdict, signed report",
    responses=NOT_FOUND,
)
def drills(
    request: Request,
    tenant: str,
    system: str,
    p: Principal = Depends(principal),
    since: datetime | None = Since,
    until: datetime | None = Until,
    limit: int = Limit,
    cursor: str | None = CursorQ,
):
    s = _system(request, p, tenant, system)
    store = _store(request)
    items, nxt = page_by_time(
        lambda u, n: store.drills(s.id, limit=n, since=_utc(since), until=u),
        lambda x: x.finished_at,
        limit,
        cursor,
        _utc(until),
    )
    return json_out(m.DrillPage(items=[m.DrillOut.of(x) for x in items], next=nxt))


RunKind = Literal["backup", "forget", "prune", "lock_extend", "mirror", "verify", "drill", "hook"]
RunStatus = Literal["running", "ok", "warning", "failed", "skipped"]


@router.get(
    "/systems/{tenant}/{system}/runs",
    response_model=m.RunPage,
    summary="A system's runs (backups, mirrors, verifies, drills, ...) with their errors, newest first",
    responses=NOT_FOUND,
)
def runs(
    request: Request,
    tenant: str,
    system: str,
    p: Principal = Depends(principal),
    kind: RunKind | None = Query(None),
    status: RunStatus | None = Query(None),
    since: datetime | None = Since,
    until: datetime | None = Until,
    limit: int = Limit,
    cursor: str | None = CursorQ,
):
    s = _system(request, p, tenant, system)
    store = _store(request)
    items, nxt = page_by_time(
        lambda u, n: store.runs(s.id, limit=n, kind=kind, status=status, since=_utc(since), until=u),
        lambda x: x.started_at,
        limit,
        cursor,
        _utc(until),
    )
    return json_out(m.RunPage(items=[m.RunOut.of(x) for x in items], next=nxt))


# ---- alarms, action requests, approvals, audit -------------------------------------------------------------
@router.get(
    "/alarms",
    response_model=m.AlarmPage,
    summary="Guard alarms, newest first: the open ones, or all with who acknowledged them and when",
    responses=NOT_FOUND,
)
def alarms(
    request: Request,
    p: Principal = Depends(principal),
    state: Literal["open", "all"] = Query("open"),
    tenant: str | None = Query(None, max_length=63),
    system: str | None = Query(None, max_length=127, description="one system, tenant/system"),
    since: datetime | None = Query(None, description="opened from this time on"),
    until: datetime | None = Query(None, description="opened before this time"),
    limit: int = Limit,
    cursor: str | None = CursorQ,
):
    scope = p.tenant_scope(tenant)
    if system is not None:
        if not _SYSTEM_ID.match(system):
            raise HTTPException(404, "not found")
        p.require_system(system)
    store = _store(request)
    items, nxt = page_by_time(
        lambda u, n: store.alarms(
            open_only=state == "open", system_id=system, tenant=scope, since=_utc(since), until=u, limit=n
        ),
        lambda x: x.opened_at,
        limit,
        cursor,
        _utc(until),
    )
    return json_out(m.AlarmPage(items=[m.AlarmOut.of(x) for x in items], next=nxt))


@router.get(
    "/actions",
    response_model=m.ActionRequestList,
    summary="Backups and drills asked for (dashboard or API) and what became of them, newest first",
    responses=NOT_FOUND,
)
def actions(
    request: Request,
    p: Principal = Depends(principal),
    tenant: str | None = Query(None, max_length=63),
    system: str | None = Query(None, max_length=127, description="one system, tenant/system"),
    status: Literal["pending", "taken", "done", "failed"] | None = Query(None),
    limit: int = Limit,
):
    scope = p.tenant_scope(tenant)
    if system is not None:
        if not _SYSTEM_ID.match(system):
            raise HTTPException(404, "not found")
        p.require_system(system)
    found = request.app.state.webstore.action_requests(system_id=system, tenant=scope, status=status, limit=limit)
    return json_out(m.ActionRequestList(items=[m.ActionRequestOut.of(a) for a in found]))


@router.get(
    "/approvals",
    response_model=m.ApprovalList,
    summary="Destructive operations asked for under the two-person rule, and their decisions (operators, auditors)",
    responses={403: {"description": "not an operator or auditor"}},
)
def approvals(
    request: Request,
    p: Principal = Depends(reader),
    undecided: bool = Query(False, description="only the ones still waiting for a decision"),
    limit: int = Limit,
):
    found = request.app.state.webstore.approvals(undecided_only=undecided, limit=limit)
    return json_out(m.ApprovalList(items=[m.ApprovalOut.of(a) for a in found]))


@router.get(
    "/audit",
    response_model=m.AuditPage,
    summary="The audit log, newest first: logins, actions, who, when, from where (operators, auditors)",
    responses={403: {"description": "not an operator or auditor"}},
)
def audit_log(
    request: Request,
    p: Principal = Depends(reader),
    user: str | None = Query(None, max_length=64),
    action: str | None = Query(None, max_length=64),
    target: str | None = Query(None, max_length=255),
    since: datetime | None = Since,
    until: datetime | None = Until,
    before_id: int | None = Query(None, ge=1, description="the previous page's `next`"),
    limit: int = Limit,
):
    found = request.app.state.webstore.audit_log(
        user=user,
        action=action,
        target=target,
        since=_utc(since),
        until=_utc(until),
        before_id=before_id,
        limit=limit + 1,
    )
    items = found[:limit]
    nxt = items[-1].id if len(found) > limit else None
    return json_out(m.AuditPage(items=[m.AuditEntryOut.of(a) for a in items], next=nxt))


# ---- actions: the API asks, the agent runs (as from the dashboard) -----------------------------------------
def _request_action(request: Request, p: Principal, tenant: str, system: str, kind: str) -> Response:
    s = _system(request, p, tenant, system)
    if s.retired_at is not None:
        raise HTTPException(409, f"{s.id} is retired: no agent runs it")
    req = request.app.state.webstore.request_action(s.id, kind, p.name, now=_now(request))
    detail = {"request": req.id, "via": "api"}
    if p.token is not None:
        detail["token"] = p.token.name
    audit(request, f"action.{kind}", s.id, detail)
    return json_out(m.ActionRequestOut.of(req), status_code=202)


WRITE_RESPONSES = {
    **NOT_FOUND,
    403: {"description": "not an operator, or a cookie request without its CSRF token"},
    409: {"description": "the system is retired"},
}


@router.post(
    "/systems/{tenant}/{system}/backup",
    response_model=m.ActionRequestOut,
    status_code=202,
    summary="Back the system up now: a request the agent takes on its next pass (operators)",
    responses=WRITE_RESPONSES,
)
def backup_now(request: Request, tenant: str, system: str, p: Principal = Depends(operator)):
    return _request_action(request, p, tenant, system, "backup")


@router.post(
    "/systems/{tenant}/{system}/drill",
    response_model=m.ActionRequestOut,
    status_code=202,
    summary="Drill the system now (restore and prove its data): a request the agent takes (operators)",
    responses=WRITE_RESPONSES,
)
def drill_now(request: Request, tenant: str, system: str, p: Principal = Depends(operator)):
    return _request_action(request, p, tenant, system, "drill")


@router.post(
    "/alarms/{alarm_id}/ack",
    response_model=m.AlarmAckOut,
    summary="Acknowledge a guard alarm with a note: in its copy's repository, then in the store (operators)",
    responses={
        404: {"description": "no such alarm"},
        403: {"description": "not an operator, or a cookie request without its CSRF token"},
        409: {
            "description": "not acknowledged (acknowledged already, repository unreachable, ...): the detail says why"
        },
        503: {"description": "the dashboard was started without the agent's configuration"},
    },
)
def ack_alarm(request: Request, alarm_id: int, body: m.AckIn, p: Principal = Depends(operator)):
    store = _store(request)
    if alarm_ops.alarm(store, alarm_id) is None:
        raise HTTPException(404, "not found")
    cfg = site_config(request)
    try:
        out = alarm_ops.acknowledge_alarm(cfg, store, alarm_id, p.name, body.note, now=_now(request))
    except alarm_ops.AlarmError as e:
        found = alarm_ops.alarm(store, alarm_id)
        detail = {"alarm": alarm_id, "error": str(e), "via": "api"}
        audit(request, "alarm.ack_failed", found.system_id if found is not None else None, detail)
        raise HTTPException(409, str(e)) from None
    a = out.alarm
    detail = {
        "alarm": a.id,
        "snapshot": a.snapshot_id,
        "copy": a.copy,
        "verdict": a.verdict,
        "note": a.note,
        "repository": out.repository,
        "guard_ack": out.record,
        "via": "api",
    }
    if p.token is not None:
        detail["token"] = p.token.name
    audit(request, "alarm.ack", a.system_id, detail)
    return json_out(
        m.AlarmAckOut(
            alarm=m.AlarmOut.of(a), repository=out.repository, record=out.record, before=out.before, verdict=out.after
        )
    )
