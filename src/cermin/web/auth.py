"""Who is asking: login and logout, server-side sessions, CSRF, login rate limiting, roles and tenant scope.

- Sessions: the cookie `cermin_session` holds a random token (HttpOnly, SameSite=Strict, Path=/, Secure over
  https); the store holds only its SHA-256, with the user, a CSRF token, the expiry (absolute TTL) and the
  last request (idle timeout). A disabled user's sessions end at once.
- CSRF: every request other than GET/HEAD/OPTIONS carries the session's token, as the form field
  `csrf_token` or the header `X-CSRF-Token` (htmx sends it: base.html sets hx-headers on <body>), or it is
  refused with 403 — checked by `csrf_guard`, a dependency of the whole application, so a new route cannot
  forget it. The login form, before any session, uses a double-submit token (cookie + field).
- Rate limiting: failed logins are counted in the store (so every worker process shares the count): more
  than `login_max_per_name` failures for one name, or `login_max_per_ip` from one address, within
  `login_window_s` answer 429 with Retry-After, before any password is checked.
- Roles: operator (everything, every tenant), auditor (reads everything and exports; no actions), viewer
  (reads one tenant). Pages and the API take the `principal` dependency; `Principal.tenant_scope()` and
  `Principal.require_system()` answer 404 — not 403 — for another tenant's data, so ids do not leak.
- Every login (ok or failed), logout and action is written to the audit log.
- Bearer API tokens (web/apitokens.py) on `/api/v1/` and `/metrics`: the token's user is the principal,
  without a session; such requests need no CSRF token (browsers never send the header on their own).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cermin.ops.webstore import ApiToken, Session, User, WebStore, attempt_name
from cermin.web import passwords
from cermin.web.apitokens import bearer_path, bearer_principal
from cermin.web.render import render

SESSION_COOKIE = "cermin_session"
LOGIN_COOKIE = "cermin_login"  # the login form's double-submit CSRF token
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
TOUCH_EVERY_S = 60  # last_seen is written at most this often per session


class LoginRequired(Exception):
    """No live session: a page redirects to /login, htmx and the API get 401 (app.py's handler)."""


@dataclass(frozen=True)
class Principal:
    """The signed-in user of a request. `tenant` is set for a viewer: the one tenant it may see. A request
    with a bearer API token (web/apitokens.py) has its token and no session."""

    user: User
    session: Session | None
    token: ApiToken | None = None

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def role(self) -> str:
        return self.user.role

    @property
    def tenant(self) -> str | None:
        return self.user.tenant

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session is not None else ""

    def has_role(self, *roles: str) -> bool:
        return self.role in roles

    def tenant_scope(self, requested: str | None = None) -> str | None:
        """The tenant every query of this request is filtered by: a viewer's own (asking for another one
        is a 404), else the one requested, None meaning every tenant."""
        if self.tenant is not None:
            if requested not in (None, "", self.tenant):
                raise HTTPException(404, "not found")
            return self.tenant
        return requested or None

    def sees(self, system_id: str) -> bool:
        return self.tenant is None or system_id.split("/", 1)[0] == self.tenant

    def require_system(self, system_id: str) -> str:
        """A system this principal may see, or 404 (the same answer as for a system that does not exist)."""
        if not self.sees(system_id):
            raise HTTPException(404, "not found")
        return system_id


# ---- plumbing ----------------------------------------------------------------------------------------------
def web_store(request: Request) -> WebStore:
    return request.app.state.webstore


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _secure(request: Request) -> bool:
    setting = request.app.state.settings.cookie_secure
    return request.url.scheme == "https" if setting is None else bool(setting)


def current_principal(request: Request) -> Principal | None:
    """The request's principal, looked up once per request (one statement) and kept in request.state."""
    if hasattr(request.state, "principal"):
        return request.state.principal
    principal = None
    if request.headers.get("authorization") is not None and bearer_path(request.url.path):
        principal = bearer_principal(request)  # the token alone decides (401/403), whatever cookie comes along
        request.state.principal = principal
        return principal
    token = request.cookies.get(SESSION_COOKIE)
    if token and len(token) <= 200:
        app = request.app
        now = app.state.clock()
        ws = web_store(request)
        found = ws.session(token_hash(token), now, idle_s=app.state.settings.session_idle_s)
        if found is not None:
            session, user = found
            if (now - session.last_seen).total_seconds() >= TOUCH_EVERY_S:
                ws.touch_session(session.token_hash, now)
            principal = Principal(user, session)
    request.state.principal = principal
    return principal


def principal(request: Request) -> Principal:
    """Dependency: the signed-in principal, or LoginRequired."""
    p = current_principal(request)
    if p is None:
        raise LoginRequired()
    return p


def require_role(*roles: str):
    """Dependency factory: the principal if its role is one of `roles`, else 403."""

    def dependency(p: Principal = Depends(principal)) -> Principal:
        if p.role not in roles:
            raise HTTPException(403, f"this needs the role {' or '.join(roles)}")
        return p

    return dependency


operator = require_role("operator")  # actions: start a backup or drill, acknowledge, approve
reader = require_role("operator", "auditor")  # every tenant's data, the audit log, fleet exports


async def csrf_guard(request: Request) -> None:
    """Application-wide dependency: a state-changing request carries the session's CSRF token (header or
    form field) and, when the browser names its origin, comes from this host; else 403."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, "cross-origin request refused")
    if request.url.path == "/login":
        return  # checked by login_post against its double-submit cookie (there is no session yet)
    p = await run_in_threadpool(current_principal, request)
    if p is None:
        raise HTTPException(403, "CSRF check failed: no session")
    if p.session is None:
        return  # a bearer token: browsers never send one on their own, so it cannot be forged cross-site
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), p.csrf.encode()):
        raise HTTPException(403, "CSRF token missing or wrong")


def audit(request: Request, action: str, target: str | None = None, detail: dict | None = None, user=None) -> int:
    """Append to the audit log as the request's principal (or `user`), with its address."""
    p = getattr(request.state, "principal", None)
    who = user if user is not None else (p.name if p is not None else "")
    return web_store(request).audit(who, action, target, detail, ip=client_ip(request), now=request.app.state.clock())


def _safe_next(target: str | None) -> str:
    """Where to go after login: a path on this host only (no //host, no scheme, no backslash tricks)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 32 for ch in target) or target.startswith("/login"):
        return "/"
    return target[:2000]


def login_url(request: Request) -> str:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login" + ("" if path == "/" else "?" + urlencode({"next": path}))


# ---- routes ------------------------------------------------------------------------------------------------
router = APIRouter(include_in_schema=False)


def _login_page(request: Request, *, next_url: str, error: str = "", name: str = "", status: int = 200, headers=None):
    token = request.cookies.get(LOGIN_COOKIE) or ""
    fresh = len(token) != 64 or any(c not in "0123456789abcdef" for c in token)
    if fresh:
        token = secrets.token_hex(32)
    resp = render(
        request,
        "login.html",
        {"login_token": token, "next_url": next_url, "error": error, "name": name},
        status_code=status,
        headers=headers,
    )
    if fresh:
        resp.set_cookie(
            LOGIN_COOKIE, token, max_age=3600, path="/login", secure=_secure(request), httponly=True, samesite="strict"
        )
    return resp


@router.get("/login", name="login")
def login_form(request: Request, next: str = "/"):
    if current_principal(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_page(request, next_url=_safe_next(next))


@router.post("/login")
def login_post(
    request: Request,
    name: str = Form("", max_length=200),
    password: str = Form("", max_length=passwords.MAX_LENGTH),
    csrf_token: str = Form("", max_length=200),
    next: str = Form("/", max_length=2000),
):
    app = request.app
    settings = app.state.settings
    ws = web_store(request)
    ip = client_ip(request)
    next_url = _safe_next(next)
    cookie = request.cookies.get(LOGIN_COOKIE) or ""
    if not cookie or not csrf_token or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
        raise HTTPException(403, "the login form expired or came from elsewhere: reload the page")
    name = attempt_name(name)
    now = app.state.clock()
    failures = ws.login_failures(name, ip, settings.login_window_s, now)
    waits = []
    if failures.by_name >= settings.login_max_per_name and failures.name_oldest is not None:
        waits.append(failures.name_oldest)
    if failures.by_ip >= settings.login_max_per_ip and failures.ip_oldest is not None:
        waits.append(failures.ip_oldest)
    if waits:
        until = max(waits) + timedelta(seconds=settings.login_window_s)
        retry = max(1, int((until - now).total_seconds()) + 1)
        ws.audit(name, "login_failed", name, {"reason": "rate limited"}, ip=ip, now=now)
        return _login_page(
            request,
            next_url=next_url,
            name=name,
            error=f"Too many failed logins: try again in {retry // 60 + 1} minutes.",
            status=429,
            headers={"Retry-After": str(retry)},
        )
    user = ws.user(name)
    ok = passwords.verify_password(user.password_hash if user is not None else None, password)
    now = app.state.clock()
    if not ok or user is None or user.disabled_at is not None:
        why = "unknown user" if user is None else "disabled user" if user.disabled_at is not None else "wrong password"
        ws.record_login_attempt(name, ip, False, now)
        ws.audit(name, "login_failed", name, {"reason": why}, ip=ip, now=now)
        return _login_page(request, next_url=next_url, name=name, error="Wrong name or password.", status=401)
    if passwords.needs_rehash(user.password_hash):
        ws.set_password_hash(user.id, passwords.hash_password(password))
    ws.record_login_attempt(name, ip, True, now)
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_hex(32)
    session = ws.create_session(token_hash(token), user.id, csrf, settings.session_ttl_s, ip=ip, now=now)
    ws.audit(user.name, "login", user.name, {"role": user.role, "tenant": user.tenant}, ip=ip, now=now)
    resp = RedirectResponse(next_url, status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int((session.expires_at - now).total_seconds()),
        path="/",
        secure=_secure(request),
        httponly=True,
        samesite="strict",
    )
    resp.delete_cookie(LOGIN_COOKIE, path="/login", secure=_secure(request), httponly=True, samesite="strict")
    return resp


@router.post("/logout")
def logout(request: Request, p: Principal = Depends(principal)):
    web_store(request).end_session(p.session.token_hash)
    audit(request, "logout", p.name)
    resp: Response = RedirectResponse("/login", status_code=303)
    if request.headers.get("HX-Request") == "true":
        resp = Response(status_code=204, headers={"HX-Redirect": "/login"})
    resp.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict")
    return resp
