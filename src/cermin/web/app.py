"""`create_app(settings)`: the dashboard as one FastAPI application (docs/dashboard.md).

What every area shares lives on `app.state`:
- `settings` (WebSettings), `store` (the agent's StateStore), `webstore` (users, sessions, audit,
  action requests, approvals: cermin.ops.webstore), `clock` (a function returning an aware UTC datetime),
- `templates` (web/render.py: autoescaped Jinja2), `nav` (the navigation bar's NavItems).

Each area is an APIRouter: auth (login/logout), fleet (`/`), pages (tenant, system, alerts, approvals,
audit: web/pages.py), apidocs; more are passed as `routers=` or
included by the caller. A router's routes take the `principal` dependency (web/auth.py) for who is asking
and its tenant scope, render with `render(request, "page.html", {...})`, and need nothing for CSRF: the
application-wide `csrf_guard` checks every state-changing request.

Security headers wrap the whole application (web/security.py), so error pages and crashes carry them too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cermin import __version__
from cermin.web.apitokens import bearer_path
from cermin.web.auth import LoginRequired, csrf_guard, current_principal, login_url
from cermin.web.nav import NAV, NavItem
from cermin.web.render import is_htmx, make_templates, render
from cermin.web.security import SecurityHeaders
from cermin.web.settings import WebSettings

log = logging.getLogger("cermin.web")

STATUS_TEXT = {
    400: "Bad request",
    401: "Login required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    422: "Bad request",
    429: "Too many requests",
    500: "Internal error",
}


class CerminApp(FastAPI):
    def build_middleware_stack(self):
        # outside Starlette's ServerErrorMiddleware: a crash's 500 gets the headers too
        return SecurityHeaders(super().build_middleware_stack())


def wants_json(request: Request) -> bool:
    if request.url.path.startswith("/api/") and not request.url.path.startswith("/api/docs"):
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


async def _error_page(request: Request, status: int, detail: str, headers: dict | None = None) -> Response:
    if wants_json(request):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    try:  # the navigation shows who is signed in, if anyone
        await run_in_threadpool(current_principal, request)
    except Exception:  # noqa: BLE001 - an error page must render even when the store is away
        request.state.principal = None
    title = STATUS_TEXT.get(status, "Error")
    return render(
        request, "error.html", {"status": status, "title": title, "detail": detail}, status_code=status, headers=headers
    )


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": login_url(request)})
        if wants_json(request) or request.method not in ("GET", "HEAD"):
            challenge = {"WWW-Authenticate": 'Bearer realm="cermin"'} if bearer_path(request.url.path) else None
            return JSONResponse({"detail": "login required"}, status_code=401, headers=challenge)
        return RedirectResponse(login_url(request), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else STATUS_TEXT.get(exc.status_code, "error")
        return await _error_page(request, exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        if wants_json(request):
            return JSONResponse({"detail": exc.errors()}, status_code=422)
        fields = ", ".join(".".join(str(x) for x in e.get("loc", ())[1:]) for e in exc.errors()[:5])
        return await _error_page(request, 422, f"bad value: {fields or 'request'}")

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        log.exception("dashboard error on %s %s", request.method, request.url.path)
        return await _error_page(request, 500, "the dashboard failed on this request; the log has the details")


def create_app(
    settings: WebSettings,
    *,
    store=None,
    routers: Iterable[APIRouter] = (),
    clock: Callable[[], datetime] | None = None,
    nav: Iterable[NavItem] | None = None,
    template_dirs: Iterable[str] = (),
) -> FastAPI:
    """The dashboard. store: an open StateStore to use (tests, demos; kept open), else one is opened from
    settings.state_url (and closed at shutdown). routers: more areas, included after the core ones.
    clock: now() for sessions, ages and the audit log (default the store's). template_dirs: searched
    before the packaged templates."""
    from cermin.ops.webstore import WebStore

    owned = store is None
    if store is None:
        from cermin.ops.state import StateStore

        store = StateStore.open(settings.state_url, upgrade=settings.upgrade)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if owned:
            store.close()

    app = CerminApp(
        title="cermin dashboard",
        version=__version__,
        description="Fleet backup status: RPO, copies, immutability, guard verdicts, drills (docs/dashboard.md).",
        docs_url=None,  # Swagger UI / ReDoc load from a CDN: see web/apidocs.py
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(csrf_guard)],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.webstore = WebStore(store)
    app.state.clock = clock or store.clock
    app.state.templates = make_templates(tuple(template_dirs))
    app.state.nav = list(NAV if nav is None else nav)
    _install_handlers(app)

    from cermin.web import api, apidocs, auth, fleet, metrics, pages

    app.mount("/static", StaticFiles(packages=[("cermin.web", "static")]), name="static")
    for router in (auth.router, fleet.router, pages.router, apidocs.router, api.router, metrics.router, *routers):
        app.include_router(router)
    from cermin.web import export  # the evidence export (web/export.py)

    app.include_router(export.router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process (`cermin web --workers N`): settings from CERMIN_WEB_SETTINGS."""
    return create_app(WebSettings.from_env())
