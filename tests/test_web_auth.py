"""The dashboard's doors: logins (Argon2id, constant time for unknown names), server-side sessions and their
expiry, CSRF on every state-changing request, login rate limits shared through the store, security headers
on every response, roles and the tenant scope (404 for another tenant's system)."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, Type
from fastapi import APIRouter, Depends, Request
from fastapi.testclient import TestClient
from web_helpers import (  # noqa: F401
    PASSWORD,
    T0,
    Clock,
    add_user,
    cheap_argon2,
    csrf_of,
    login,
    login_token,
    make_app,
    populate,
    store_url,
)

from cermin.ops import stateschema as t
from cermin.ops.state import StateStore
from cermin.ops.webstore import WebStore
from cermin.web import passwords
from cermin.web.app import create_app
from cermin.web.auth import SESSION_COOKIE, Principal, audit, operator, principal
from cermin.web.settings import WebSettings

SYSTEMS = {"imigrasi/paspor": "rendah", "imigrasi/visa": "rendah", "dukcapil/ktp": "rendah"}


# a stand-in for the action routes others add: what the core guarantees them
actions = APIRouter()


@actions.post("/systems/{tenant}/{name}/backup")
def start_backup(request: Request, tenant: str, name: str, p: Principal = Depends(operator)):
    sid = p.require_system(f"{tenant}/{name}")
    req = request.app.state.webstore.request_action(sid, "backup", p.name, now=request.app.state.clock())
    audit(request, "action.backup", sid, {"request": req.id})
    return {"request": req.id}


@actions.get("/systems/{tenant}/{name}")
def system_page(tenant: str, name: str, p: Principal = Depends(principal)):
    return {"system": p.require_system(f"{tenant}/{name}")}


@pytest.fixture
def site(store_url):  # noqa: F811 (the fixture from web_helpers)
    clock = Clock(T0)
    store = StateStore.open(store_url, clock=clock)
    populate(store, SYSTEMS, {})
    add_user(store, "ana", "operator")
    add_user(store, "audi", "auditor")
    add_user(store, "vera", "viewer", "imigrasi")
    app = create_app(WebSettings(state_url=str(store.url)), store=store, clock=clock, routers=[actions])
    yield app, store, clock
    store.close()


@pytest.fixture
def client(site):
    return TestClient(site[0], raise_server_exceptions=False)


def audit_actions(store) -> list[tuple[str, str]]:
    return [(e.user_name, e.action) for e in reversed(WebStore(store).audit_log())]


# ---- login -------------------------------------------------------------------------------------------------
def test_pages_need_a_login(client):
    r = client.get("/?state=failing", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F%3Fstate%3Dfailing"
    r = client.get("/", headers={"HX-Request": "true"})
    assert r.status_code == 401 and r.headers["HX-Redirect"] == "/login"
    assert client.get("/api/v1/openapi.json").status_code == 401


def test_login_sets_a_server_side_session(site, client):
    app, store, clock = site
    r = login(client, "ana", next_url="/?state=failing")
    assert r.status_code == 303 and r.headers["location"] == "/?state=failing"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    for attr in ("HttpOnly", "SameSite=strict", "Path=/"):
        assert attr.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # plain http (tests); Secure over https: see below
    token = client.cookies[SESSION_COOKIE]
    with store.engine.connect() as c:
        rows = c.execute(sa.select(t.sessions.c.token_hash)).scalars().all()
    assert rows == [hashlib.sha256(token.encode()).hexdigest()]  # the store holds only the hash
    page = client.get("/")
    assert page.status_code == 200 and "ana" in page.text and "operator" in page.text
    assert audit_actions(store) == [("ana", "login")]
    assert WebStore(store).user("ana").last_login_at == T0


def test_the_cookie_is_secure_over_https(site):
    client = TestClient(site[0], base_url="https://dash.example")
    r = login(client, "ana")
    assert "secure" in r.headers["set-cookie"].lower()
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")


def test_wrong_password_and_unknown_user_get_the_same_answer(site, client):
    app, store, clock = site
    a = login(client, "ana", "not the password")
    b = login(client, "nobody", "not the password")
    assert a.status_code == b.status_code == 401
    assert "Wrong name or password." in a.text and "Wrong name or password." in b.text
    assert SESSION_COOKIE not in client.cookies
    log = WebStore(store).audit_log()
    assert [(e.user_name, e.action, e.detail["reason"]) for e in reversed(log)] == [
        ("ana", "login_failed", "wrong password"),
        ("nobody", "login_failed", "unknown user"),
    ]


def test_unknown_users_verify_a_dummy_hash(monkeypatch):
    seen = []

    class Spy(PasswordHasher):
        def verify(self, hash, password):
            seen.append(hash)
            return super().verify(hash, password)

    monkeypatch.setattr(passwords, "HASHER", Spy(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID))
    real = passwords.hash_password("the real one")
    assert not passwords.verify_password(None, "the real one")
    assert passwords.verify_password(real, "the real one")
    assert len(seen) == 2 and seen[0].startswith("$argon2id$") and seen[0] != real  # the same work as a real user


def test_password_hashes_are_argon2id(site):
    app, store, clock = site
    with store.engine.connect() as c:
        hashes = c.execute(sa.select(t.users.c.password_hash)).scalars().all()
    assert len(hashes) == 3 and all(h.startswith("$argon2id$v=19$") for h in hashes)
    assert PASSWORD not in "".join(hashes)
    assert "password_hash" not in WebStore(store).user("ana").to_json()


def test_login_form_needs_its_token(client):
    login_token(client)
    r = client.post("/login", data={"name": "ana", "password": PASSWORD, "csrf_token": "0" * 64})
    assert r.status_code == 403
    r = client.post("/login", data={"name": "ana", "password": PASSWORD})
    assert r.status_code == 403


def test_disabled_users_cannot_log_in_and_lose_their_sessions(site, client):
    app, store, clock = site
    login(client, "ana")
    assert client.get("/").status_code == 200
    assert WebStore(store).disable_user("ana")
    assert client.get("/", follow_redirects=False).status_code == 303
    assert login(client, "ana").status_code == 401


def test_next_cannot_leave_the_host(client):
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = login(client, "ana", next_url=target)
        assert r.headers["location"] == "/"
        client.cookies.clear()


# ---- sessions ----------------------------------------------------------------------------------------------
def test_sessions_expire(site, client):
    app, store, clock = site
    login(client, "ana")
    clock.advance(minutes=50)
    assert client.get("/").status_code == 200
    clock.advance(minutes=50)  # active: not idle, within the TTL
    assert client.get("/").status_code == 200
    clock.advance(minutes=61)  # idle longer than session_idle_s
    assert client.get("/", follow_redirects=False).status_code == 303
    login(client, "ana")
    for _ in range(16):  # busy all along, but the TTL (8 h) ends it
        clock.advance(minutes=30)
        last = client.get("/", follow_redirects=False)
    assert last.status_code == 303


def test_logout_ends_the_session(site, client):
    app, store, clock = site
    login(client, "ana")
    token = csrf_of(client.get("/").text)
    r = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(t.sessions)).scalar() == 0
    assert client.get("/", follow_redirects=False).status_code == 303
    assert audit_actions(store) == [("ana", "login"), ("ana", "logout")]


# ---- CSRF --------------------------------------------------------------------------------------------------
def test_csrf_missing_or_wrong_is_403(site, client):
    app, store, clock = site
    login(client, "ana")
    token = csrf_of(client.get("/").text)
    assert client.post("/systems/imigrasi/paspor/backup").status_code == 403
    wrong = {"X-CSRF-Token": "f" * 64}
    assert client.post("/systems/imigrasi/paspor/backup", headers=wrong).status_code == 403
    assert client.post("/systems/imigrasi/paspor/backup", data={"csrf_token": "x"}).status_code == 403
    assert client.post("/logout").status_code == 403  # logout too
    assert WebStore(store).action_requests() == []
    # the header (htmx) or the form field (a plain form) passes
    r = client.post("/systems/imigrasi/paspor/backup", headers={"X-CSRF-Token": token})
    assert r.status_code == 200
    r = client.post("/systems/imigrasi/visa/backup", data={"csrf_token": token})
    assert r.status_code == 200
    assert len(WebStore(store).action_requests()) == 2
    assert ("ana", "action.backup") in audit_actions(store)


def test_a_cross_origin_post_is_refused_even_with_the_token(site, client):
    login(client, "ana")
    token = csrf_of(client.get("/").text)
    r = client.post(
        "/systems/imigrasi/paspor/backup", headers={"X-CSRF-Token": token, "Origin": "https://evil.example"}
    )
    assert r.status_code == 403


def test_another_sessions_token_does_not_pass(site):
    app = site[0]
    a, b = TestClient(app), TestClient(app)
    login(a, "ana")
    login(b, "ana")
    token_b = csrf_of(b.get("/").text)
    assert a.post("/systems/imigrasi/paspor/backup", headers={"X-CSRF-Token": token_b}).status_code == 403


def test_the_page_gives_htmx_the_token(site, client):
    login(client, "ana")
    html = client.get("/").text
    assert f'hx-headers=\'{{"X-CSRF-Token": "{csrf_of(html)}"}}\'' in html
    assert f'name="csrf_token" value="{csrf_of(html)}"' in html  # the logout form, without JavaScript


# ---- rate limits -------------------------------------------------------------------------------------------
def test_five_failures_for_a_name_answer_429(site, client):
    app, store, clock = site
    for _ in range(5):
        assert login(client, "ana", "wrong password!").status_code == 401
    r = login(client, "ana")  # even the right password waits
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 15 * 60 + 1
    assert SESSION_COOKIE not in client.cookies
    assert login(client, "audi").status_code == 303  # another name, below the address limit
    clock.advance(minutes=16)
    client.cookies.clear()
    assert login(client, "ana").status_code == 303  # the window passed
    assert ("ana", "login_failed") in audit_actions(store)


def test_the_address_limit_covers_every_name(site, client):
    app, store, clock = site
    for i in range(20):
        assert login(client, f"user{i}", "wrong password!").status_code == 401
    assert login(client, "audi").status_code == 429
    other = TestClient(app, client=("10.0.0.9", 5000))
    assert login(other, "audi").status_code == 303


def test_the_limit_is_shared_by_processes_through_the_store(site, tmp_path):
    app, store, clock = site
    for _ in range(5):
        login(TestClient(app), "ana", "wrong password!")
    # a second application (another worker process) over the same database
    store2 = StateStore.open(str(store.url), clock=clock)
    try:
        other = TestClient(make_app(store2, clock))
        assert login(other, "ana").status_code == 429
    finally:
        store2.close()


def test_a_success_resets_the_name_count(site, client):
    for _ in range(4):
        login(client, "ana", "wrong password!")
    assert login(client, "ana").status_code == 303
    client.cookies.clear()
    for _ in range(4):
        assert login(client, "ana", "wrong password!").status_code == 401
    assert login(client, "ana").status_code == 303


# ---- security headers --------------------------------------------------------------------------------------
CSP_PARTS = (
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
)


def _check_headers(r, authenticated_page: bool = True) -> None:
    h = r.headers
    for part in CSP_PARTS:
        assert part in h["Content-Security-Policy"], (r.url, part)
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Frame-Options"] == "DENY"
    assert "camera=()" in h["Permissions-Policy"]
    if authenticated_page:
        assert h["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in h  # plain http


def test_security_headers_on_every_response(site, client):
    app, store, clock = site
    for url in ("/login", "/", "/nope"):
        _check_headers(client.get(url, follow_redirects=False))
    _check_headers(login(client, "ana", "wrong"))  # 401
    login(client, "ana")
    for url in ("/", "/?sort=-backup&state=failing", "/nope", "/api/docs", "/api/v1/openapi.json", "/?sort=%00"):
        _check_headers(client.get(url))
    _check_headers(client.get("/", headers={"HX-Request": "true"}))
    _check_headers(client.post("/logout"), True)  # 403
    _check_headers(client.get("/static/cermin.css"), authenticated_page=False)
    _check_headers(client.get("/systems/dukcapil/ktp/nope"))  # 404
    _check_headers(client.put("/"))  # 405


def test_security_headers_on_a_crash(site):
    app, store, clock = site
    boom = APIRouter()

    @boom.get("/boom")
    def crash(p: Principal = Depends(principal)):
        raise RuntimeError("bug")

    app.include_router(boom)
    client = TestClient(app, raise_server_exceptions=False)
    login(client, "ana")
    r = client.get("/boom")
    assert r.status_code == 500 and "bug" not in r.text
    _check_headers(r)


def test_pages_have_no_inline_script_or_style(site, client):
    login(client, "ana")
    for url in ("/", "/login", "/api/docs", "/nope"):
        html = client.get(url).text
        assert "<script>" not in html and "<style" not in html and " style=" not in html
        assert "http://" not in html.replace("http://testserver", "") and "https://" not in html
    assert client.get("/static/htmx.min.js").text.startswith("/*! htmx.org 2.")


# ---- roles and tenants -------------------------------------------------------------------------------------
def test_a_viewer_sees_only_its_tenant(site, client):
    login(client, "vera")
    html = client.get("/").text
    assert "paspor" in html and "visa" in html
    assert "ktp" not in html and "Dukcapil" not in html
    assert client.get("/?tenant=dukcapil").status_code == 404
    assert client.get("/?tenant=imigrasi").status_code == 200
    assert client.get("/systems/imigrasi/paspor").status_code == 200
    other = client.get("/systems/dukcapil/ktp")
    assert other.status_code == 404 and "Not found" in other.text  # not 403: ids do not leak
    other = client.get("/systems/dukcapil/ktp", headers={"Accept": "application/json"})
    assert other.status_code == 404 and other.json() == {"detail": "not found"}


def test_viewers_and_auditors_cannot_post_actions(site):
    app, store, clock = site
    for name in ("audi", "vera"):
        client = TestClient(app)
        login(client, name)
        token = csrf_of(client.get("/").text)
        r = client.post("/systems/imigrasi/paspor/backup", headers={"X-CSRF-Token": token})
        assert r.status_code == 403, name
    assert WebStore(store).action_requests() == []


def test_an_operator_sees_every_tenant(site, client):
    login(client, "ana")
    html = client.get("/").text
    assert all(s in html for s in ("paspor", "visa", "ktp"))
    assert client.get("/systems/dukcapil/ktp").status_code == 200


def test_navigation_follows_the_role(site):
    app = site[0]
    expect = {"ana": True, "audi": True, "vera": False}
    for name, sees_audit in expect.items():
        client = TestClient(app)
        login(client, name)
        html = client.get("/").text
        assert ('href="/audit"' in html) == sees_audit, name
        assert 'href="/alerts"' in html and 'href="/api/docs"' in html
