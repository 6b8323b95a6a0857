"""Evidence export (`/export`): a page to choose the scope and period, and the downloads
`/export/evidence.{csv,zip,json,html,pdf}?tenant=&since=&until=[&table=]` (docs/dashboard.md "Evidence export").

Every role may export what it may read: operators and auditors the fleet or any tenant, a viewer its own
tenant only (another one is a 404, as everywhere). Each download is written to the audit log with the
document's scope, period, format and digest. A bad period is a 400 with one line; the PDF answers 501 naming
the extra to install when WeasyPrint cannot be loaded (the other formats still work).

Downloads are sent as attachments: the HTML report keeps its style inline to be self-contained, which the
dashboard's Content-Security-Policy would block inside a page it shows.
"""

from __future__ import annotations

import logging
from datetime import UTC, timedelta

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from cermin.ops.evidence import build_evidence
from cermin.ops.evidencedoc import DEFAULT_DAYS, EvidenceError, PeriodError, parse_period
from cermin.web import exportdoc
from cermin.web.auth import Principal, audit, principal
from cermin.web.render import render

log = logging.getLogger("cermin.web")
router = APIRouter(include_in_schema=False)


def _config(request: Request):
    """The agent's configuration when the dashboard was started from one (retention rules, drill report
    signatures), else None: the evidence is then built from the state store alone."""
    path = request.app.state.settings.config_path
    if not path:
        return None
    from cermin.ops.config import load_config

    try:
        return load_config(path)
    except Exception as e:  # noqa: BLE001 - the export works without it, and says so
        log.warning("evidence export without the configuration %s: %s", path, e)
        return None


@router.get("/export", name="export")
def export_page(request: Request, p: Principal = Depends(principal)):
    now = request.app.state.clock().astimezone(UTC)
    until = now.date()
    since = until - timedelta(days=DEFAULT_DAYS - 1)
    tenants = request.app.state.store.tenants()
    if p.tenant is not None:
        tenants = {k: v for k, v in tenants.items() if k == p.tenant}
    return render(
        request,
        "export.html",
        {
            "since": since.isoformat(),
            "until": until.isoformat(),
            "tenants": tenants,
            "tables": exportdoc.TABLES,
            "pdf_unavailable": exportdoc.pdf_unavailable(),
            "days": DEFAULT_DAYS,
        },
    )


@router.get("/export/evidence.{fmt}", name="export_evidence")
def export_evidence(
    request: Request,
    fmt: str,
    p: Principal = Depends(principal),
    tenant: str | None = Query(None, max_length=63),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    table: str | None = Query(None, max_length=20),
):
    if fmt not in exportdoc.FORMATS:
        raise HTTPException(404, "not found")
    scope = p.tenant_scope(tenant)
    if fmt != "csv":
        table = None  # the page's form sends its CSV table choice with every format
    elif table and table not in exportdoc.TABLES:
        raise HTTPException(400, f"bad table {table!r}: a CSV table is one of {', '.join(exportdoc.TABLES)}")
    if fmt == "pdf":
        why = exportdoc.pdf_unavailable()
        if why:
            raise HTTPException(501, why)
    app = request.app
    now = app.state.clock().astimezone(UTC)
    try:
        start, end = parse_period(since, until, now)
    except PeriodError as e:
        raise HTTPException(400, str(e)) from None
    who = f"{p.name} ({p.role}{', ' + p.tenant if p.tenant else ''}) on the dashboard"
    try:
        ev = build_evidence(
            app.state.store, _config(request), tenant=scope, since=start, until=end, now=now, generated_by=who
        )
    except EvidenceError as e:
        if scope is not None and "unknown tenant" in str(e):
            raise HTTPException(404, "not found") from None
        raise HTTPException(400, str(e)) from None
    body = exportdoc.render(ev, fmt, table)
    name = exportdoc.filename(ev, fmt, table)
    audit(
        request,
        "export.evidence",
        ev.scope,
        {
            "format": fmt,
            "table": table,
            "since": start.isoformat(),
            "until": end.isoformat(),
            "digest": ev.digest,
            "systems": ev.summary.systems,
        },
    )
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Evidence-Digest": f"sha256:{ev.digest}"}
    return Response(body, media_type=exportdoc.MEDIA_TYPES[fmt], headers=headers)
