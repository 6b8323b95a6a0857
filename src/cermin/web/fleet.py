"""The fleet page (`/`): the totals first, then tenants x systems, sortable and filterable by plain links
and a GET form that htmx enhances (hx-get of the `_fleet_results.html` fragment, hx-push-url)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from cermin.web import fleetview
from cermin.web.auth import Principal, principal
from cermin.web.render import is_htmx, render

router = APIRouter(include_in_schema=False)


def fleet_view(request: Request, p: Principal, query: fleetview.FleetQuery) -> fleetview.FleetView:
    """Everything the page shows, for this principal: the store's status of its scope (a fixed number of
    statements whatever the fleet size) and the tenant names."""
    store = request.app.state.store
    scope = p.tenant_scope(query.tenant)
    now = request.app.state.clock()
    statuses = store.status(now, tenant=scope)
    if scope == p.tenant:  # every system the principal may see: the navigation's count of open alarms
        request.state.open_alarms = sum(len(st.open_alarms) for st in statuses)
    names = store.tenants()
    if p.tenant is not None:
        names = {k: v for k, v in names.items() if k == p.tenant}
    return fleetview.build(statuses, names, now, query)


@router.get("/", name="fleet")
def fleet_page(
    request: Request,
    p: Principal = Depends(principal),
    sort: str | None = Query(None, max_length=20),
    tenant: str | None = Query(None, max_length=63),
    klass: str | None = Query(None, alias="class", max_length=63),
    state: str | None = Query(None, max_length=10),
    q: str | None = Query(None, max_length=200),
    why: str | None = Query(None, max_length=30),
):
    query = fleetview.FleetQuery.parse(sort, tenant, klass, state, q, why)
    view = fleet_view(request, p, query)
    if is_htmx(request):  # the fragment; the address bar gets the canonical URL (no empty fields)
        resp = render(request, "_fleet_results.html", {"view": view, "reasons": fleetview.REASONS, "oob": True})
        resp.headers["HX-Push-Url"] = query.url()
        return resp
    return render(request, "fleet.html", {"view": view, "reasons": fleetview.REASONS})
