"""The navigation bar: one entry per area, shown to the roles that may open it. `create_app(nav=...)` takes
another list; a router adding an area adds its entry here. An entry's `badge` is a function of the request
giving a count to show next to its label (0 or None: none); render.py calls it only when a page shows the
navigation, at most once per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cermin.ops.webstore import ROLES


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    roles: tuple[str, ...] = ROLES
    badge: Callable[..., int | None] | None = None  # badge(request) -> a count shown next to the label

    def active(self, path: str) -> bool:
        return path == self.path if self.path == "/" else path == self.path or path.startswith(self.path + "/")


def _open_alarms(request) -> int | None:
    from cermin.web.pages_alerts import open_alarm_badge

    return open_alarm_badge(request)


NAV = (
    NavItem("Fleet", "/"),
    NavItem("Alerts", "/alerts", badge=_open_alarms),
    NavItem("Approvals", "/approvals", ("operator",)),
    NavItem("Audit", "/audit", ("operator", "auditor")),
    NavItem("Export", "/export"),
    NavItem("API docs", "/api/docs"),
)
