"""The tenant page (`/tenants/{tenant}`): what a tenant's own staff see — its totals, its systems (the fleet
table, filtered to it, sortable the same way), its open guard alarms and its recent failed runs.

A viewer sees its own tenant only: any other answers 404, exactly as a tenant that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from cermin.web import fleetview
from cermin.web.auth import Principal, principal
from cermin.web.pages_common import NAME
from cermin.web.render import is_htmx, render

router = APIRouter(include_in_schema=False)
FAILED_RUNS = 10  # the recent failed runs shown


@dataclass(frozen=True)
class TenantQuery(fleetview.FleetQuery):
    """The fleet table's sort and filters, with links to this tenant's page instead of the fleet's."""

    base: str = "/"

    def url(self, **change) -> str:
        p = self.params(**change)
        p.pop("tenant", None)
        return self.base + ("?" + urlencode(p) if p else "")


@router.get("/tenants/{tenant}", name="tenant")
def tenant_page(
    request: Request,
    tenant: str,
    p: Principal = Depends(principal),
    sort: str | None = Query(None, max_length=20),
    klass: str | None = Query(None, alias="class", max_length=63),
    state: str | None = Query(None, max_length=10),
    q: str | None = Query(None, max_length=200),
    why: str | None = Query(None, max_length=30),
):
    if not NAME.match(tenant):
        raise HTTPException(404, "not found")
    scope = p.tenant_scope(tenant)  # a viewer asking for another tenant: 404
    store = request.app.state.store
    names = store.tenants()
    if scope not in names:
        raise HTTPException(404, "not found")
    now = request.app.state.clock()
    statuses = store.status(now, tenant=scope)
    query = replace(fleetview.FleetQuery.parse(sort, None, klass, state, q, why), tenant=None)
    query = TenantQuery(**{**query.__dict__, "base": f"/tenants/{scope}"})
    view = fleetview.build(statuses, {scope: names[scope]}, now, query)
    alarms = sorted((a for st in statuses for a in st.open_alarms), key=lambda a: (a.opened_at, a.id), reverse=True)
    if p.tenant == scope:  # the navigation's count of open alarms is this tenant's
        request.state.open_alarms = len(alarms)
    ctx = {"view": view, "reasons": fleetview.REASONS, "tenant": scope, "tenant_name": names[scope]}
    if is_htmx(request):
        resp = render(request, "_tenant_results.html", ctx)
        resp.headers["HX-Push-Url"] = query.url()
        return resp
    failed = store.runs(tenant=scope, status="failed", limit=FAILED_RUNS)
    return render(request, "tenant.html", {**ctx, "alarms": alarms, "failed_runs": failed})
