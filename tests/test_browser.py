"""The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright, against the
README's command — `cermin demo DIR --listen 127.0.0.1:0` serving the demo fleet (ops/demo.py) — end to end.

One server and one browser for the module; a browser context (its own cookies) per user and test. Every
context records the URL of every request its pages make and every console error: after each test, every
request went to 127.0.0.1 and no error was logged (a CSP violation or a failed script shows as one) other
than the HTTP statuses the test itself provoked.

Screenshots: with CERMIN_SCREENSHOTS=DIR (e.g. docs/screenshots), the main pages are saved there as PNG
(full page, 1280 px wide) — how docs/screenshots/*.png are made.

Skipped only when /usr/bin/chromium is absent (`apt-get install chromium`; the README's test command does it).
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

from conftest import FAST_KDF, cermin_exe  # noqa: E402
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from cermin.ops.demo import ATTACKED, COVERED, build_demo  # noqa: E402

ADMIN, VIEWER, VIEWER_TENANT = "admin", "staf-dukcapil", "dukcapil"
LOCKED = "kunci"  # a third login, made for the rate limit test (so the others are never locked out)
WIDTH = 1280
SHOTS = os.environ.get("CERMIN_SCREENSHOTS")
expect.set_options(timeout=10_000)


@dataclass
class Demo:
    root: str
    base: str  # http://127.0.0.1:PORT (no trailing slash)
    passwords: dict[str, str]
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo fleet built once (cheap repository keys), a third user added with `cermin web user add`, and
    `cermin demo` serving it on a free loopback port; SIGTERM at the end."""
    work = tmp_path_factory.mktemp("browser")
    root = str(work / "cermin-demo")
    build_demo(root, progress=None, kdf=FAST_KDF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    env["PYTHONUNBUFFERED"] = "1"
    locked_pw = os.path.join(str(work), "kunci.password")
    with open(locked_pw, "w") as f:
        f.write("kunci's own long password\n")
    config = os.path.join(root, "cermin.toml")
    added = subprocess.run(
        [*cermin_exe(), "web", "user", "add", LOCKED, "--role", "viewer", "--tenant", "arsip"]
        + ["--password-file", locked_pw, "-c", config],
        env=env,
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stderr
    log = str(work / "server.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [*cermin_exe(), "demo", root, "--listen", "127.0.0.1:0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        m = None
        deadline = time.monotonic() + 120
        while m is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                proc.wait(10)
                raise AssertionError(f"cermin demo ended ({proc.returncode}): {open(log).read()[-4000:]}")
            m = re.match(r"Dashboard: (http://127\.0\.0\.1:\d+)/ ", line)
        assert m, "cermin demo printed no address"
        passwords = {}
        for name in (ADMIN, VIEWER):
            with open(os.path.join(root, f"{name}.password")) as f:
                passwords[name] = f.read().strip()
        passwords[LOCKED] = "kunci's own long password"
        yield Demo(root, m.group(1), passwords, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


class Visitor:
    """One browser context (its own cookies) with one page, 1280 px wide, recording every request's URL and
    every console error or uncaught exception of its pages."""

    def __init__(self, browser, demo: Demo) -> None:
        self.demo = demo
        self.context = browser.new_context(
            viewport={"width": WIDTH, "height": 900}, base_url=demo.base, accept_downloads=True
        )
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.allowed: set[int] = set()  # HTTP statuses this test provokes on purpose
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page: Page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        m = FAILED_LOAD.match(msg.text)
        if m and int(m.group(1)) in self.allowed:
            return
        self.errors.append(f"{msg.text} ({msg.location.get('url', '')})")

    def allow(self, *statuses: int) -> None:
        self.allowed.update(statuses)

    def goto(self, path: str, status: int = 200):
        r = self.page.goto(path)
        assert r is not None and r.status == status, (path, r and r.status, self.page.content()[:2000])
        return r

    def login(self, name: str, password: str, *, landing: str = "/") -> None:
        page = self.page
        self.goto("/login")
        page.get_by_label("Name").fill(name)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(self.demo.base + landing)
        expect(page.locator("header .user")).to_have_text(name)

    def csrf(self) -> str:
        """The session's CSRF token, as base.html gives it to htmx (hx-headers on <body>)."""
        headers = self.page.locator("body").get_attribute("hx-headers") or ""
        m = re.search(r'"X-CSRF-Token": "([0-9a-f]{64})"', headers)
        assert m, headers
        return m.group(1)

    def check(self) -> None:
        foreign = sorted({u for u in self.requests if urlsplit(u).hostname != "127.0.0.1"})
        assert not foreign, f"requests left 127.0.0.1: {foreign}"
        assert not self.errors, f"console errors: {self.errors}"

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visitor(browser, demo):
    """visitor() -> a new Visitor; each one's requests and console are checked after the test."""
    made: list[Visitor] = []

    def make() -> Visitor:
        v = Visitor(browser, demo)
        made.append(v)
        return v

    yield make
    try:
        for v in made:
            v.check()
    finally:
        for v in made:
            v.close()


def shot(page: Page, name: str, height: int | None = None) -> None:
    """docs/screenshots/<name>.png when CERMIN_SCREENSHOTS names the directory: the full page, or its top
    `height` pixels."""
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": height} if height else None
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True, clip=clip)


def fleet_rows(page: Page) -> list[str]:
    """The fleet table's rows as 'tenant/system' (from their links)."""
    links = page.locator("table.fleet tbody tr td:nth-child(2) a")
    return [urlsplit(h).path.removeprefix("/systems/") for h in links.evaluate_all("els => els.map(e => e.href)")]


def test_the_watch_sees_csp_violations_and_foreign_requests(demo, visitor):
    """The checks every test relies on see what they look for: content from another host is an attempted
    request (even when the Content-Security-Policy refuses it before it leaves) and a console error."""
    v = visitor()
    v.goto("/login")
    img = "url => { const i = document.createElement('img'); i.src = url; document.body.append(i); }"
    v.page.evaluate(img, "http://192.0.2.1/x.png")
    v.page.wait_for_timeout(200)
    assert any("Content Security Policy" in e for e in v.errors), v.errors
    assert "http://192.0.2.1/x.png" in v.requests
    v.errors.clear()
    v.requests.clear()


# ---- logging in, the fleet ---------------------------------------------------------------------------------
def test_login_then_the_fleet_answers_first(demo, visitor):
    v = visitor()
    page = v.page
    v.allow(401)
    r = v.goto("/")  # the fleet needs a login: redirected there
    assert urlsplit(page.url).path == "/login" and r.status == 200
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    shot(page, "login")

    page.get_by_label("Name").fill(ADMIN)
    page.get_by_label("Password").fill("not the password")
    with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as got:
        page.get_by_role("button", name="Log in").click()
    assert got.value.status == 401
    expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    expect(page.get_by_label("Name")).to_have_value(ADMIN)  # kept; the password is not

    v.login(ADMIN, demo.passwords[ADMIN])
    expect(page).to_have_title(re.compile("^Fleet"))
    # the answer first: one sentence with the totals and why, each reason a link to its systems
    headline = page.locator(".totals .headline")
    expect(headline).to_contain_text(re.compile(r"^1 of 7 systems meet their policy now; 6 do not, because: "))
    expect(headline.get_by_role("link", name=re.compile("never drilled"))).to_be_visible()
    expect(headline.get_by_role("link", name=re.compile("missing a required copy"))).to_be_visible()
    assert len(fleet_rows(page)) == 7
    assert set(fleet_rows(page)) >= {ATTACKED, COVERED}
    covered = page.locator("table.fleet tbody tr", has=page.get_by_role("link", name=COVERED.split("/")[1]))
    expect(covered).to_have_class("ok")
    expect(covered.locator("td.age")).to_have_class(re.compile(r"\bgreen\b"))
    expect(covered.locator("td").last).to_have_text("yes")
    attacked = page.locator("table.fleet tbody tr", has=page.get_by_role("link", name=ATTACKED.split("/")[1]))
    expect(attacked).to_have_class("failing")
    expect(attacked.locator("ul.why")).to_contain_text("never drilled")
    shot(page, "fleet")


def test_the_fleet_filters_and_sorts_through_htmx(demo, visitor):
    v = visitor()
    page = v.page
    v.login(ADMIN, demo.passwords[ADMIN])
    # a marker in the page's window survives an htmx swap, not a page load
    page.evaluate("window.cerminMarker = 1")
    before = fleet_rows(page)

    with page.expect_response(lambda r: "tenant=dukcapil" in r.url and r.request.headers.get("hx-request")):
        page.get_by_label("Tenant").select_option("dukcapil")
    page.wait_for_url(re.compile(r"/\?tenant=dukcapil$"))
    expect(page.locator("table.fleet tbody tr")).to_have_count(2)
    assert {r.split("/")[0] for r in fleet_rows(page)} == {"dukcapil"}
    expect(page.locator(".totals .headline")).to_contain_text(re.compile(r"^0 of 2 systems"))
    expect(page.locator("p.count")).to_have_text("2 of 2 systems shown (filtered).")

    # sort by system name, descending: a header link, swapped by htmx; the filter is kept
    page.locator("table.fleet thead").get_by_role("link", name=re.compile("^System")).click()
    page.wait_for_url(re.compile(r"sort=system"))
    page.locator("table.fleet thead").get_by_role("link", name=re.compile("^System")).click()
    page.wait_for_url(re.compile(r"sort=-system"))
    assert "tenant=dukcapil" in page.url
    expect(page.locator("table.fleet thead th[aria-sort]")).to_have_attribute("aria-sort", "descending")
    assert fleet_rows(page) == ["dukcapil/berkas", "dukcapil/antrian"]
    # a filter changed after sorting keeps the sort (the form's sort field was swapped out of band)
    page.get_by_label("Tenant").select_option("")
    page.wait_for_url(re.compile(r"/\?sort=-system$"))
    rows = fleet_rows(page)
    assert len(rows) == 7 and rows != before
    names = [r.split("/")[1] for r in rows]
    assert names == sorted(names, reverse=True)

    # the search field, after a short pause in typing
    page.get_by_label("Search").fill("paspor")
    page.wait_for_url(re.compile(r"q=paspor"))
    expect(page.locator("table.fleet tbody tr")).to_have_count(1)
    assert fleet_rows(page) == [COVERED]
    assert page.evaluate("window.cerminMarker") == 1, "a full page load instead of an htmx swap"

    # a reason in the totals sentence is a link to the systems it counts
    v.goto("/")
    page.evaluate("window.cerminMarker = 2")
    page.locator(".totals .headline").get_by_role("link", name=re.compile("missing a required copy")).click()
    page.wait_for_url(re.compile(r"state=failing.*why=no_copy|why=no_copy.*state=failing"))
    assert fleet_rows(page) == ["bapenda/kasir"]
    assert page.evaluate("window.cerminMarker") == 2, "a full page load instead of an htmx swap"

    # every view is a URL: the same address loaded afresh shows the same rows
    url = page.url
    page.goto(url)
    assert fleet_rows(page) == ["bapenda/kasir"]
    assert page.evaluate("window.cerminMarker") is None


# ---- CSRF, rate limits, logout -----------------------------------------------------------------------------
def test_a_post_without_the_csrf_token_is_refused(demo, visitor):
    v = visitor()
    page = v.page
    v.allow(403)
    v.login(ADMIN, demo.passwords[ADMIN])
    token = v.csrf()
    # from the browser context, with its session cookie: no token, a garbled one, another origin
    for headers, form in (
        ({}, {}),
        ({}, {"csrf_token": "0" * 64}),
        ({"X-CSRF-Token": token[::-1]}, {}),
        ({"X-CSRF-Token": token, "Origin": "http://evil.example"}, {}),
    ):
        r = page.request.post("/logout", headers=headers, form=form or None, max_redirects=0)
        assert r.status == 403, (headers, form, r.status)
    # the logout form in the page, its hidden token garbled: the browser's own POST is refused too
    page.locator("form[action='/logout'] input[name=csrf_token]").evaluate("e => e.value = 'f'.repeat(64)")
    with page.expect_response(lambda r: r.url.endswith("/logout")) as got:
        page.get_by_role("button", name="Log out").click()
    assert got.value.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("403 · Forbidden")
    expect(page.locator("main")).to_contain_text("CSRF token missing or wrong")
    # still logged in: none of these ended the session
    v.goto("/")
    expect(page.locator("header .user")).to_have_text(ADMIN)
    # the login form's own token (double submit): garbled, the login is refused before any password check
    other = visitor()
    other.allow(403)
    other.goto("/login")
    other.page.locator("form[action='/login'] input[name=csrf_token]").evaluate("e => e.value = 'a'.repeat(64)")
    other.page.get_by_label("Name").fill(ADMIN)
    other.page.get_by_label("Password").fill(demo.passwords[ADMIN])
    with other.page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as got:
        other.page.get_by_role("button", name="Log in").click()
    assert got.value.status == 403
    expect(other.page.locator("main")).to_contain_text("the login form expired")


def test_login_rate_limit_holds_even_for_the_right_password(demo, visitor):
    v = visitor()
    page = v.page
    v.allow(401, 429)
    v.goto("/login")
    for i in range(5):
        page.get_by_label("Name").fill(LOCKED)
        page.get_by_label("Password").fill(f"wrong password {i}")
        with page.expect_response(lambda r: r.request.method == "POST") as got:
            page.get_by_role("button", name="Log in").click()
        assert got.value.status == 401
        expect(page.get_by_role("alert")).to_have_text("Wrong name or password.")
    page.get_by_label("Password").fill("wrong password 6")
    with page.expect_response(lambda r: r.request.method == "POST") as got:
        page.get_by_role("button", name="Log in").click()
    assert got.value.status == 429
    assert int(got.value.headers["retry-after"]) > 0
    expect(page.get_by_role("alert")).to_contain_text("Too many failed logins: try again in")
    # the right password is refused for that name for a while, from a fresh browser too
    other = visitor()
    other.allow(429)
    other.goto("/login")
    other.page.get_by_label("Name").fill(LOCKED)
    other.page.get_by_label("Password").fill(demo.passwords[LOCKED])
    with other.page.expect_response(lambda r: r.request.method == "POST") as got:
        other.page.get_by_role("button", name="Log in").click()
    assert got.value.status == 429
    expect(other.page.get_by_role("alert")).to_contain_text("Too many failed logins")
    assert "cermin_session" not in {c["name"] for c in other.context.cookies()}
    # another name from the same address is not locked out
    other.login(VIEWER, demo.passwords[VIEWER])


def test_logout_ends_the_session(demo, visitor):
    v = visitor()
    page = v.page
    v.login(ADMIN, demo.passwords[ADMIN])
    cookie = next(c for c in v.context.cookies() if c["name"] == "cermin_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(demo.base + "/login")
    assert "cermin_session" not in {c["name"] for c in v.context.cookies()}
    v.goto("/")
    assert urlsplit(page.url).path == "/login"
    # the old cookie, replayed, opens nothing: the session ended on the server
    replay = visitor()
    replay.context.add_cookies([{k: cookie[k] for k in ("name", "value", "domain", "path")}])
    replay.goto("/")
    assert urlsplit(replay.page.url).path == "/login"


# ---- a tenant viewer ---------------------------------------------------------------------------------------
def test_a_tenant_viewer_sees_only_its_tenant(demo, visitor):
    v = visitor()
    page = v.page
    v.allow(404)
    v.login(VIEWER, demo.passwords[VIEWER])
    expect(page.locator("header .role")).to_have_text(f"viewer · {VIEWER_TENANT}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Fleet · ")
    rows = fleet_rows(page)
    assert rows and {r.split("/")[0] for r in rows} == {VIEWER_TENANT}
    expect(page.locator(".totals .headline")).to_contain_text(re.compile(rf"^\d+ of {len(rows)} systems"))
    expect(page.get_by_label("Tenant")).to_have_count(0)  # no tenant to choose
    expect(page.locator("header nav").get_by_role("link", name="Audit")).to_have_count(0)
    # another tenant's view answers 404, as one that does not exist
    v.goto("/?tenant=imigrasi", status=404)
    expect(page.get_by_role("heading", level=1)).to_have_text("404 · Not found")
    expect(page.locator("main")).not_to_contain_text("imigrasi")
    v.goto("/?tenant=nosuchtenant", status=404)
    v.goto("/tenants/imigrasi", status=404)
    v.goto(f"/systems/{COVERED}", status=404)
    expect(page.locator("main")).not_to_contain_text("paspor")
    v.goto("/systems/imigrasi/nosuchsystem", status=404)  # the same answer as a system that does not exist
    # its own tenant and systems open
    v.goto(f"/tenants/{VIEWER_TENANT}")
    v.goto(f"/systems/{ATTACKED}")
    expect(page.get_by_role("button", name="Back up now")).to_have_count(0)  # a viewer reads only
    # the API, with the same session: its tenant only, 404 elsewhere
    r = v.goto("/api/v1/fleet")
    assert {s["tenant"] for s in r.json()["systems"]} == {VIEWER_TENANT}
    assert r.json()["totals"]["systems"] == len(rows)
    assert v.goto(f"/api/v1/systems/{ATTACKED}").json()["system"]["id"] == ATTACKED
    for url in (f"/api/v1/systems/{COVERED}", f"/api/v1/systems/{COVERED}/snapshots", "/api/v1/tenants/imigrasi"):
        assert v.goto(url, status=404).json() == {"detail": "not found"}
    assert v.goto("/api/v1/fleet?tenant=imigrasi", status=404).json() == {"detail": "not found"}
    assert {t["id"] for t in v.goto("/api/v1/tenants").json()} == {VIEWER_TENANT}
    # alerts and the evidence export: its tenant only
    v.goto("/alerts")
    alarmed = page.locator("table.alerts tbody tr td:first-child a").all_inner_texts()  # open or acknowledged
    assert alarmed == [ATTACKED], alarmed
    v.goto("/alerts?tenant=imigrasi", status=404)
    v.goto("/export")
    expect(page.get_by_label("Scope")).to_have_count(0)  # no choice: the tenant is fixed
    expect(page.locator("form.export input[name=tenant]")).to_have_value(VIEWER_TENANT)
    r = page.request.get("/export/evidence.csv?tenant=imigrasi&table=systems")
    assert r.status == 404
    r = page.request.get("/export/evidence.csv?table=systems")  # no tenant named: its own
    assert r.ok
    assert {row["tenant"] for row in csv.DictReader(io.StringIO(r.body().decode("utf-8-sig")))} == {VIEWER_TENANT}
    # and no action: acknowledging an alarm needs an operator (403, CSRF token or not)
    v.allow(403)
    r = page.request.post("/alerts/1/ack", form={"note": "x", "csrf_token": v.csrf()})
    assert r.status == 403


# ---- a system, its alarm, the evidence ---------------------------------------------------------------------
def test_drill_down_to_the_attacked_system(demo, visitor):
    v = visitor()
    page = v.page
    v.login(ADMIN, demo.passwords[ADMIN])
    tenant, name = ATTACKED.split("/")
    page.locator("table.fleet").get_by_role("link", name=name, exact=True).click()
    page.wait_for_url(f"{demo.base}/systems/{ATTACKED}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    expect(page.locator(".crumbs")).to_contain_text("Fleet")
    expect(page.locator("section.totals .headline")).to_contain_text(f"{name} does not meet its class")
    expect(page.locator("section.totals ul.reasons")).to_contain_text("never drilled")
    # the snapshot timeline: the attacked backup flagged by the guard, the earlier ones clean
    timeline = page.locator("table.timeline tbody tr")
    expect(timeline.first).to_be_visible()
    verdicts = page.locator("table.timeline tbody td[class^=verdict-]").all_inner_texts()
    assert verdicts[0] in ("infected", "suspicious") and "clean" in verdicts[1:], verdicts
    expect(timeline.first.locator("td.copies .chip").first).to_be_visible()  # the copies holding it
    # its open alarm (until the alerts test acknowledges it) is about a snapshot the timeline shows flagged
    alarm = page.locator("section.alarmed tbody tr")
    if alarm.count():
        snapshot = alarm.first.locator("code").inner_text()
        flagged = timeline.filter(has=page.locator("code", has_text=snapshot))
        expect(flagged.locator("td[class^=verdict-]")).to_have_text(re.compile("infected|suspicious"))
        expect(page.locator("section.totals ul.reasons")).to_contain_text("open guard alarm")
    expect(page.locator("#drills").locator("xpath=..")).to_contain_text("Never drilled")
    expect(page.locator("table.runs tbody tr").first).to_be_visible()
    shot(page, "system")

    # Back up now: an htmx POST (the CSRF token in its header) swaps in the request, pending for the agent
    with page.expect_response(lambda r: r.request.method == "POST") as got:
        page.get_by_role("button", name="Back up now").click()
    assert got.value.status == 200 and got.value.request.headers.get("x-csrf-token") == v.csrf()
    row = page.locator("#requests tbody tr").first
    expect(row).to_contain_text("pending: waiting for the agent")
    expect(row).to_contain_text(ADMIN)
    expect(row).to_contain_text("backup")

    # the drilled system: its drill history with the RTO chart (a server-rendered SVG)
    v.goto(f"/systems/{COVERED}")
    expect(page.locator("section.totals .headline")).to_contain_text("meets its class")
    chart = page.locator("svg.rto-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("circle.point")).to_have_count(1)
    expect(chart.locator("circle.point")).to_have_class(re.compile(r"\bpass\b"))
    drill = page.locator("#drills").locator("xpath=..").locator("tbody tr").first
    expect(drill).to_contain_text("pass")
    expect(drill.locator("code")).to_have_count(2)  # the snapshot and the signed report's id
    # the tenant page (the breadcrumb's link): the fleet table of one tenant
    page.locator(".crumbs a").nth(1).click()
    page.wait_for_url(f"{demo.base}/tenants/{COVERED.split('/')[0]}")
    assert {r.split("/")[0] for r in fleet_rows(page)} == {COVERED.split("/")[0]}


def test_acknowledge_the_open_alarm(demo, visitor):
    v = visitor()
    page = v.page
    v.login(ADMIN, demo.passwords[ADMIN])
    page.locator("header nav").get_by_role("link", name=re.compile("^Alerts")).click()
    page.wait_for_url(f"{demo.base}/alerts")
    row = page.locator("table.alerts tbody tr", has=page.get_by_role("link", name=ATTACKED))
    expect(row).to_have_count(1)
    expect(row.locator("td.bad")).to_contain_text(re.compile("infected|suspicious"))
    expect(row.locator("ul.why li").first).to_be_visible()
    alarm_id = row.get_attribute("id").removeprefix("alarm-")
    # the action's form without its CSRF token, or with another one: refused, the alarm stays open
    v.allow(403)
    for form in ({"note": "no token"}, {"note": "a forged token", "csrf_token": "0" * 64}):
        assert page.request.post(f"/alerts/{alarm_id}/ack", form=form, max_redirects=0).status == 403
    page.reload()
    expect(row).to_have_count(1)
    note = "the demo's own simulated attack"
    row.get_by_label("Note").fill(note)
    shot(page, "alerts")
    before = datetime.now(UTC)
    row.get_by_role("button", name="Acknowledge").click()
    page.wait_for_url(re.compile(r"/alerts\?acked=\d+#acked-\d+$"))
    expect(page.get_by_role("status")).to_contain_text("is acknowledged")
    expect(page.locator("#open-h").locator("xpath=..")).to_contain_text("No guard alarm is open.")
    acked = page.locator("table.alerts tbody tr.just")
    expect(acked.get_by_role("link", name=ATTACKED)).to_be_visible()
    expect(acked.locator("td.ack-by")).to_have_text(ADMIN)
    expect(acked).to_contain_text(note)
    at = acked.locator("td.ack-at").inner_text()  # YYYY-MM-DD HH:MM UTC: this minute
    when = datetime.strptime(at[:16], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert abs((when - before).total_seconds()) < 120, at
    # the fleet no longer counts it; the guard's verdict on the snapshot stays
    page.locator("header nav").get_by_role("link", name="Fleet").click()
    attacked = page.locator("table.fleet tbody tr", has=page.get_by_role("link", name=ATTACKED.split("/")[1]))
    expect(attacked.locator("ul.why")).not_to_contain_text("open guard alarm")
    expect(attacked.locator("td").nth(5)).to_contain_text(re.compile("infected|suspicious"))
    expect(page.locator(".totals .headline")).not_to_contain_text("open guard alarm")
    # the audit log says who did it
    v.goto("/audit")
    expect(page.locator("main")).to_contain_text("alarm.ack")


def test_export_evidence(demo, visitor, tmp_path):
    v = visitor()
    page = v.page
    v.login(ADMIN, demo.passwords[ADMIN])
    page.locator("header nav").get_by_role("link", name="Export").click()
    page.wait_for_url(f"{demo.base}/export")
    expect(page.get_by_role("heading", level=1)).to_have_text("Evidence export")
    shot(page, "export")
    form = page.locator("form.export")

    def download(button: str, fmt: str):
        with page.expect_response(lambda r: f"/export/evidence.{fmt}" in r.url) as resp, page.expect_download() as dl:
            form.get_by_role("button", name=button).click()
        r = resp.value
        assert r.status == 200, (fmt, r.status)
        path = tmp_path / dl.value.suggested_filename
        dl.value.save_as(path)
        assert path.suffix == f".{fmt}", path
        return path, r.headers["x-evidence-digest"].removeprefix("sha256:")

    # the printable report (the whole fleet, the last 30 days): a self-contained HTML document
    html, digest = download("Printable report (HTML)", "html")
    text = html.read_text(encoding="utf-8")
    assert digest in text and ATTACKED in text and COVERED in text
    reader = visitor()  # opened on its own, it fetches nothing
    reader.page.set_content(text)
    assert reader.requests == [], reader.requests
    expect(reader.page.locator("h1").first).to_contain_text("evidence", ignore_case=True)
    shot(reader.page, "evidence", height=1400)

    # one tenant's systems as CSV
    page.get_by_label("Scope").select_option(VIEWER_TENANT)
    page.get_by_label("CSV table").select_option("systems")
    path, digest = download("CSV table", "csv")
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))  # with a BOM, for Excel
    assert {f"{r['tenant']}/{r['system']}" for r in rows} == {ATTACKED, "dukcapil/antrian"}
    assert {r["evidence_digest"] for r in rows} == {digest}
    assert {r["meets_policy_now"] for r in rows} == {"no"}

    # the PDF
    path, _ = download("PDF", "pdf")
    assert path.read_bytes().startswith(b"%PDF-")


def test_every_page_loads_clean(demo, visitor):
    """Each area of the navigation, each tenant's and each system's page: 200, htmx loaded, nothing refused by
    the Content-Security-Policy, no script error (the watch checks the console after the test)."""
    v = visitor()
    page = v.page
    v.login(ADMIN, demo.passwords[ADMIN])
    nav = page.locator("header nav a")
    paths = [urlsplit(h).path for h in nav.evaluate_all("els => els.map(e => e.href)")]
    assert {"/", "/alerts", "/approvals", "/audit", "/export", "/api/docs"} <= set(paths), paths
    systems = fleet_rows(page)
    tenants = sorted({s.split("/")[0] for s in systems})
    for path in [*paths, *(f"/tenants/{t}" for t in tenants), *(f"/systems/{s}" for s in systems)]:
        v.goto(path)
        expect(page.locator("main h1").first).to_be_visible()
        assert page.evaluate("typeof htmx") == "object", path
        assert page.locator("[style]").count() == 0, path  # no inline style (the CSP would refuse it)
