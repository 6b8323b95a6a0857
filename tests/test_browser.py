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

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
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
    log: str  # the server's standard error

    def server_log(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo fleet built once (cheap repository keys), a third user added with `cermin web user add`, and
    `cermin demo` serving it on a free loopback port; SIGTERM at the end."""
    work = tmp_path_factory.mktemp("browser")
    root = str(work / "fleet")
    build_demo(root, progress=None, kdf=FAST_KDF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    env["PYTHONUNBUFFERED"] = "1"
    locked_pw = os.path.join(str(work), "kunci.password")
    with open(locked_pw, "w") as f:
        f.write("kunci's own long password\n")
    config = os.path.join(root, "cermin.toml")
    subprocess.run(
        [*cermin_exe(), "web", "user", "add", LOCKED, "--role", "viewer", "--tenant", "arsip"]
        + ["--password-file", locked_pw, "-c", config],
        env=env,
        check=True,
        capture_output=True,
    )
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
        yield Demo(root, m.group(1), passwords, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def shot(page: Page, name: str) -> None:
    """docs/screenshots/<name>.png when CERMIN_SCREENSHOTS names the directory."""
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def fleet_rows(page: Page) -> list[str]:
    """The fleet table's rows as 'tenant/system' (from their links)."""
    links = page.locator("table.fleet tbody tr td:nth-child(2) a")
    return [urlsplit(h).path.removeprefix("/systems/") for h in links.evaluate_all("els => els.map(e => e.href)")]


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
