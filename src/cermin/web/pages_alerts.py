"""The alerts page (`/alerts`): the open guard alarms — system, snapshot, verdict, reasons, when opened —
and those acknowledged in the last `RECENT_DAYS` days, with who acknowledged them, when and why.

Operators acknowledge an alarm with a note: `cermin.ops.alarms.acknowledge_alarm` writes a guard_ack
record in the repository of the alarm's copy first and marks the store only when that worked; an error
is shown on the page and the alarm stays open. A viewer sees its tenant's alarms only.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse

from cermin.ops import alarms
from cermin.web.auth import Principal, audit, operator, principal
from cermin.web.pages_common import site_config
from cermin.web.render import render

router = APIRouter(include_in_schema=False)
OPEN_LIMIT = 200  # open alarms listed (the newest); the count says when there are more
RECENT_DAYS = 30  # acknowledged alarms shown from this far back
RECENT_LIMIT = 50


def open_alarm_badge(request: Request) -> int | None:
    """The navigation's count: the open alarms the principal may see (one statement, unless the page
    counted them already and left the number in request.state.open_alarms)."""
    known = getattr(request.state, "open_alarms", None)
    if known is not None:
        return known
    p = getattr(request.state, "principal", None)
    if p is None:
        return None
    return alarms.open_count(request.app.state.store, p.tenant)


def _alerts(request: Request, p: Principal, tenant: str | None, *, status: int = 200, **extra):
    store = request.app.state.store
    scope = p.tenant_scope(tenant)
    now = request.app.state.clock()
    names = store.tenants()
    if p.tenant is not None:
        names = {k: v for k, v in names.items() if k == p.tenant}
    opened = alarms.open_alarms(store, tenant=scope, limit=OPEN_LIMIT + 1)
    more = len(opened) > OPEN_LIMIT
    if not more and scope == p.tenant:  # everything the principal may see: the navigation's count
        request.state.open_alarms = len(opened)
    acked = alarms.acknowledged(store, tenant=scope, since=now - timedelta(days=RECENT_DAYS), limit=RECENT_LIMIT)
    ctx = {
        "open": opened[:OPEN_LIMIT],
        "more": more,
        "acked": acked,
        "tenants": names,
        "tenant": scope if p.tenant is None else None,
        "can_ack": p.has_role("operator"),
        "recent_days": RECENT_DAYS,
        "just_acked": None,
        "error": None,
        "error_alarm": None,
        "note": "",
    }
    ctx.update(extra)
    return render(request, "alerts.html", ctx, status_code=status)


@router.get("/alerts", name="alerts")
def alerts_page(
    request: Request,
    p: Principal = Depends(principal),
    tenant: str | None = Query(None, max_length=63),
    acked: int | None = Query(None, ge=1),
):
    return _alerts(request, p, tenant, just_acked=acked)


@router.post("/alerts/{alarm_id}/ack", name="alarm_ack")
def alarm_ack(
    request: Request,
    alarm_id: int,
    p: Principal = Depends(operator),
    note: str = Form("", max_length=alarms.MAX_NOTE),
):
    """Acknowledge an alarm in its repository and in the store, or show why not (the alarm stays open)."""
    store = request.app.state.store
    cfg = site_config(request)
    try:
        out = alarms.acknowledge_alarm(cfg, store, alarm_id, p.name, note, now=request.app.state.clock())
    except alarms.AlarmError as e:
        found = alarms.alarm(store, alarm_id)
        target = found.system_id if found is not None else None
        audit(request, "alarm.ack_failed", target, {"alarm": alarm_id, "error": str(e)})
        return _alerts(request, p, None, status=409, error=str(e), error_alarm=alarm_id, note=note)
    a = out.alarm
    detail = {
        "alarm": a.id,
        "snapshot": a.snapshot_id,
        "copy": a.copy,
        "verdict": a.verdict,
        "note": a.note,
        "repository": out.repository,
        "guard_ack": out.record,
    }
    audit(request, "alarm.ack", a.system_id, detail)
    return RedirectResponse(f"/alerts?acked={a.id}#acked-{a.id}", status_code=303)
