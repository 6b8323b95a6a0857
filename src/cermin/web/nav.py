"""The navigation bar: one entry per area, shown to the roles that may open it. `create_app(nav=...)` takes
another list; a router adding an area adds its entry here."""

from __future__ import annotations

from dataclasses import dataclass

from cermin.ops.webstore import ROLES


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    roles: tuple[str, ...] = ROLES

    def active(self, path: str) -> bool:
        return path == self.path if self.path == "/" else path == self.path or path.startswith(self.path + "/")


NAV = (
    NavItem("Fleet", "/"),
    NavItem("Alerts", "/alerts"),
    NavItem("Audit", "/audit", ("operator", "auditor")),
    NavItem("Export", "/export"),
    NavItem("API docs", "/api/docs"),
)
