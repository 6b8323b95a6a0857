"""The system page (`/systems/{tenant}/{system}`): its class's terms and whether it meets them now (and why
not), its copies, the snapshot timeline (verdicts, sizes, the copies holding each), the drill history with
its RTO chart, its runs and errors — and, for operators, "Back up now", "Drill now" (action requests the
agent runs) and "Forget" (a request a second operator approves: web/pages_approvals.py).

The page costs a fixed number of statements whatever the history's length: the timeline and the runs are
pages of `PAGE` (keyset cursors, ops/history.py), the drills the newest `DRILLS`.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse

from cermin.ops import approvals, history
from cermin.ops.state import StateError
from cermin.web.auth import Principal, audit, operator, principal
from cermin.web.pages_common import age, size, system_id, url
from cermin.web.render import is_htmx, render
from cermin.web.rtochart import rto_chart

router = APIRouter(include_in_schema=False)
PAGE = 25  # snapshots, and runs, per page
DRILLS = 50  # the drills in the history and the chart
REQUESTS = 10  # the action requests shown
PERIODS = (7, 30, 90, 365)  # days of snapshot timeline offered (any 1..3660 is accepted)
ACTION_KINDS = {"backup": "Back up now", "drill": "Drill now"}


def _requests_ctx(request: Request, sid: str) -> dict:
    reqs = request.app.state.webstore.action_requests(system_id=sid, limit=REQUESTS)
    return {"requests": reqs, "sid": sid, "polling": any(r.status in ("pending", "taken") for r in reqs)}


@router.get("/systems/{tenant}/{system}", name="system")
def system_page(
    request: Request,
    tenant: str,
    system: str,
    p: Principal = Depends(principal),
    days: int = Query(30, ge=1, le=3660),
    snaps: str | None = Query(None, max_length=200),
    runs: str | None = Query(None, max_length=60),
):
    sid = p.require_system(system_id(tenant, system))
    app = request.app
    store = app.state.store
    now = app.state.clock()
    st = store.system_status(sid, now)
    if st is None:
        raise HTTPException(404, "not found")
    snap_cursor, run_cursor = history.Cursor.parse(snaps), history.Cursor.parse(runs)
    timeline, next_snaps = history.snapshot_timeline(
        store, sid, since=now - timedelta(days=days), after=snap_cursor, limit=PAGE
    )
    drills = store.drills(sid, limit=DRILLS)
    run_rows, next_runs = history.run_page(store, sid, after=run_cursor, limit=PAGE)
    here = f"/systems/{sid}"
    params = {"days": days if days != 30 else None, "snaps": snaps, "runs": runs}
    ctx = {
        "st": st,
        "s": st.system,
        "sid": sid,
        "tenant_name": store.tenants().get(st.system.tenant, st.system.tenant),
        "timeline": timeline,
        "days": days,
        "periods": PERIODS,
        "period_url": lambda d: url(here, params, days=d if d != 30 else None, snaps=None) + "#snapshots",
        "snaps_next": url(here, params, snaps=str(next_snaps)) + "#snapshots" if next_snaps else None,
        "snaps_first": url(here, params, snaps=None) + "#snapshots" if snap_cursor else None,
        "drills": drills,
        "chart": rto_chart(drills),
        "runs": run_rows,
        "runs_next": url(here, params, runs=str(next_runs)) + "#runs" if next_runs else None,
        "runs_first": url(here, params, runs=None) + "#runs" if run_cursor else None,
        "can_act": p.has_role("operator"),
        "action_kinds": ACTION_KINDS,
        "age": lambda t: age(now, t),
        "size": size,
        **_requests_ctx(request, sid),
    }
    return render(request, "system.html", ctx)


@router.get("/systems/{tenant}/{system}/requests", name="system_requests")
def system_requests(request: Request, tenant: str, system: str, p: Principal = Depends(principal)):
    """The action requests of a system (the fragment the page polls while one is pending or taken)."""
    sid = p.require_system(system_id(tenant, system))
    return render(request, "_system_requests.html", {"can_act": p.has_role("operator"), **_requests_ctx(request, sid)})


def _live_system(request: Request, sid: str) -> None:
    tenant = sid.split("/", 1)[0]
    if not any(s.id == sid for s in request.app.state.store.systems(tenant=tenant)):
        raise HTTPException(404, "not found")


@router.post("/systems/{tenant}/{system}/{kind}", name="system_action")
def system_action(request: Request, tenant: str, system: str, kind: str, p: Principal = Depends(operator)):
    """Back up now / Drill now: an action request the agent takes on its next pass."""
    sid = system_id(tenant, system)
    if kind not in ACTION_KINDS:
        raise HTTPException(404, "not found")
    _live_system(request, sid)
    ws = request.app.state.webstore
    try:
        req = ws.request_action(sid, kind, p.name, now=request.app.state.clock())
    except StateError as e:
        raise HTTPException(404, str(e)) from None
    audit(request, f"action.{kind}", sid, {"request": req.id, "status": req.status, "asked_by": req.user_name})
    if is_htmx(request):
        return render(request, "_system_requests.html", {"can_act": True, **_requests_ctx(request, sid)})
    return RedirectResponse(f"/systems/{sid}#requests", status_code=303)


@router.post("/systems/{tenant}/{system}/snapshots/forget", name="forget_request")
def forget_request(
    request: Request,
    tenant: str,
    system: str,
    p: Principal = Depends(operator),
    snapshot: str = Form(..., max_length=64),
    copy_kind: str = Form(..., alias="copy", max_length=16),
    reason: str = Form("", max_length=2000),
):
    """Ask for a snapshot to be forgotten from one copy: pending until a second operator decides."""
    sid = system_id(tenant, system)
    try:
        a = approvals.request_forget(
            request.app.state.store, sid, copy_kind, snapshot, p.name, reason, now=request.app.state.clock()
        )
    except approvals.ApprovalError as e:
        raise HTTPException(422, str(e)) from None
    audit(request, "approval.request", sid, {"approval": a.id, "action": a.action, **a.target, "reason": a.reason})
    return RedirectResponse(f"/approvals#approval-{a.id}", status_code=303)
