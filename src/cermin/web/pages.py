"""The dashboard's pages beyond the fleet: one router for the app to include (web/app.py).

- `/tenants/{tenant}` (pages_tenant.py): a tenant's totals, systems, open alarms, failed runs;
- `/systems/{tenant}/{system}` (pages_system.py): terms, copies, snapshot timeline, drills and the RTO
  chart, runs; Back up now / Drill now; asking to forget a snapshot;
- `/alerts` (pages_alerts.py): open and acknowledged guard alarms; acknowledging one;
- `/approvals` (pages_approvals.py): the two-person rule's requests, approved and carried out or rejected;
- `/audit` (pages_audit.py): the audit log.
"""

from __future__ import annotations

from fastapi import APIRouter

from cermin.web import pages_alerts, pages_approvals, pages_audit, pages_system, pages_tenant

router = APIRouter(include_in_schema=False)
for _area in (pages_tenant, pages_system, pages_alerts, pages_approvals, pages_audit):
    router.include_router(_area.router)
