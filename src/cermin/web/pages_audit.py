"""The audit page (`/audit`, operators and auditors): the audit log, newest first — every login (ok or
failed), logout and action: who, when, from which address, on what — filtered by user, action, target and
period, `PAGE` entries a page (keyset: `before` is the id the next page starts below). Viewers get 403."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Depends, Query, Request

from cermin.web.auth import Principal, reader
from cermin.web.pages_common import parse_day, url
from cermin.web.render import render

router = APIRouter(include_in_schema=False)
PAGE = 50
KNOWN_ACTIONS = (
    "login",
    "login_failed",
    "logout",
    "action.backup",
    "action.drill",
    "alarm.ack",
    "alarm.ack_failed",
    "approval.request",
    "approval.approve",
    "approval.reject",
    "approval.execute",
    "approval.refused",
)


@router.get("/audit", name="audit")
def audit_page(
    request: Request,
    p: Principal = Depends(reader),
    user: str | None = Query(None, max_length=64),
    action: str | None = Query(None, max_length=64),
    target: str | None = Query(None, max_length=255),
    since: str | None = Query(None, max_length=10),
    until: str | None = Query(None, max_length=10),
    before: int | None = Query(None, ge=1),
):
    start = parse_day(since, "from date")
    end = parse_day(until, "to date")
    entries = request.app.state.webstore.audit_log(
        user=user or None,
        action=action or None,
        target=target or None,
        since=start,
        until=end + timedelta(days=1) if end else None,  # the whole "to" day
        before_id=before,
        limit=PAGE + 1,
    )
    more = len(entries) > PAGE
    entries = entries[:PAGE]
    params = {"user": user, "action": action, "target": target, "since": since, "until": until}
    ctx = {
        "entries": entries,
        "f": {k: v or "" for k, v in params.items()},
        "filtered": any(params.values()),
        "known_actions": KNOWN_ACTIONS,
        "next_url": url("/audit", params, before=entries[-1].id) if more and entries else None,
        "first_url": url("/audit", params) if before else None,
    }
    return render(request, "audit.html", ctx)
