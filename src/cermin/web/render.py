"""Templates: one Jinja2 environment (autoescape on, undefined names are errors), the filters every page
uses, and `render()`, which gives each template the request, the signed-in principal, its CSRF token,
the navigation and the time.

Pages extend `base.html` (`{% block title %}`, `{% block content %}`); a fragment that htmx swaps in is a
template named `_*.html` that the full page includes, so the same markup serves both (see `is_htmx`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from cermin import __version__
from cermin.ops.config import fmt_duration


def _duration(seconds: float | None) -> str:
    return "—" if seconds is None else fmt_duration(seconds)


def _when(t: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return "never" if t is None else t.astimezone(UTC).strftime(fmt)


def _iso(t: datetime | None) -> str:
    return "" if t is None else t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_templates(extra_dirs: tuple[str, ...] = ()) -> Jinja2Templates:
    """The environment: templates from extra_dirs first (overrides), then cermin/web/templates."""
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(d) for d in extra_dirs]
    loaders.append(jinja2.PackageLoader("cermin.web", "templates"))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = _duration
    env.filters["when"] = _when
    env.filters["iso"] = _iso
    return Jinja2Templates(env=env)


def is_htmx(request: Request) -> bool:
    """An htmx request for a fragment (a history restore wants the whole page)."""
    h = request.headers
    return h.get("HX-Request") == "true" and h.get("HX-History-Restore-Request") != "true"


class NavBadges:
    """The navigation's counts (NavItem.badge), computed when a template first asks for one — a fragment
    that shows no navigation costs nothing — and never failing a page: a count that cannot be had is none."""

    def __init__(self, request: Request, items) -> None:
        self._request, self._items, self._counts = request, items, None

    def get(self, path: str) -> int | None:
        if self._counts is None:
            self._counts = {}
            for item in self._items:
                if item.badge is not None:
                    try:
                        self._counts[item.path] = item.badge(self._request)
                    except Exception:  # noqa: BLE001 - an error page renders even when the store is away
                        self._counts[item.path] = None
        return self._counts.get(path)


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    app = request.app
    principal = getattr(request.state, "principal", None)
    nav = [i for i in app.state.nav if principal is not None and principal.role in i.roles]
    ctx = {
        "principal": principal,
        "csrf_token": principal.csrf if principal is not None else "",
        "nav": nav,
        "nav_badges": NavBadges(request, nav),
        "path": request.url.path,
        "now": app.state.clock(),
        "version": __version__,
        "site_title": app.state.settings.title,
    }
    ctx.update(context or {})
    resp = app.state.templates.TemplateResponse(request, template, ctx, status_code=status_code, headers=headers)
    resp.headers["Vary"] = "HX-Request"
    return resp
