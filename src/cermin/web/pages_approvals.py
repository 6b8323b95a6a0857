"""The approvals page (`/approvals`, operators only): destructive operations under the two-person rule.

An operator asks for one from the page it belongs to (forget a snapshot: the system page's timeline), with
a reason; the request waits here. A *different* operator approves or rejects it; an approval is carried
out at once through the library (cermin.ops.approvals) and its result — done, or what the engine refused
and why — is shown with the request. Every step is in the audit log. Viewers and auditors get 403.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import RedirectResponse

from cermin.ops import approvals
from cermin.web.auth import Principal, audit, operator
from cermin.web.pages_common import site_config
from cermin.web.render import render

router = APIRouter(include_in_schema=False)
PENDING_LIMIT = 100
RECENT_LIMIT = 50


def _page(request: Request, p: Principal, *, status: int = 200, error: str | None = None, error_id: int | None = None):
    ws = request.app.state.webstore
    pending = ws.approvals(undecided_only=True, limit=PENDING_LIMIT)
    recent = [a for a in ws.approvals(limit=RECENT_LIMIT) if a.decided_at is not None]
    ctx = {
        "pending": pending,
        "recent": recent,
        "describe": approvals.describe,
        "result_text": approvals.result_text,
        "error": error,
        "error_id": error_id,
    }
    return render(request, "approvals.html", ctx, status_code=status)


@router.get("/approvals", name="approvals")
def approvals_page(request: Request, p: Principal = Depends(operator)):
    return _page(request, p)


@router.post("/approvals/{approval_id}/{decision}", name="approval_decide")
def approval_decide(request: Request, approval_id: int, decision: str, p: Principal = Depends(operator)):
    """Approve (and carry out) or reject a pending request; never the requester's own."""
    if decision not in ("approve", "reject"):
        raise HTTPException(404, "not found")
    ws = request.app.state.webstore
    found = ws.approval(approval_id)
    if found is None:
        raise HTTPException(404, "not found")
    system = (found.target or {}).get("system")
    target = system if isinstance(system, str) else None
    cfg = site_config(request) if decision == "approve" else None
    try:
        done = approvals.decide(
            cfg, request.app.state.store, approval_id, p.name, decision, now=request.app.state.clock()
        )
    except approvals.ApprovalError as e:
        audit(request, "approval.refused", target, {"approval": approval_id, "decision": decision, "error": str(e)})
        code = 403 if isinstance(e, approvals.OwnRequest) else 409
        return _page(request, p, status=code, error=str(e), error_id=approval_id)
    audit(request, f"approval.{decision}", target, {"approval": approval_id, "action": found.action, **found.target})
    if done.result is not None:
        audit(request, "approval.execute", target, {"approval": approval_id, "result": done.result})
    return RedirectResponse(f"/approvals#approval-{approval_id}", status_code=303)
