"""The fleet page: the totals first (how many systems meet their policy now, and why the others do not),
then tenants x systems with backup age against the RPO in green/amber/red, copies, guard verdicts and
drills; sorting and filters as plain links and forms, the table as an htmx fragment; and a fixed number
of SQL statements whatever the fleet size."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from web_helpers import T0, Clock, add_user, cheap_argon2, login, make_app, populate  # noqa: F401

from cermin.ops.state import StateStore
from cermin.web import fleetview

SYSTEMS = {
    "imigrasi/paspor": "strategis",
    "imigrasi/visa": "rendah",
    "imigrasi/portal": "rendah",
    "dukcapil/ktp": "rendah",
    "dukcapil/kk": "rendah",
    "dukcapil/arsip": "rendah",
    "pajak/efaktur": "rendah",
    "pajak/djponline": "rendah",
}
FAULTS = {
    "imigrasi/visa": {"stale"},
    "dukcapil/ktp": {"stale", "nodrill"},
    "dukcapil/kk": {"nodrill"},
    "pajak/efaktur": {"alarm"},
    "pajak/djponline": {"amber"},  # late, but within the RPO: still meets its class
}


@pytest.fixture
def site(tmp_path):
    clock = Clock(T0)
    store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
    populate(store, SYSTEMS, FAULTS)
    add_user(store, "ana", "operator")
    add_user(store, "vera", "viewer", "dukcapil")
    client = TestClient(make_app(store, clock))
    login(client, "ana")
    yield client, store, clock
    store.close()


def rows(html: str) -> list[str]:
    """System names in table order."""
    return re.findall(r'<a href="/systems/[a-z0-9_-]+/([a-z0-9_-]+)">', html)


def text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


TOTALS = (
    "4 of 8 systems meet their policy now; 4 do not, because: 2 backups older than their RPO, "
    "2 never drilled, 1 open guard alarm."
)  # (dukcapil/ktp counts twice: a system may count under several reasons)


def test_the_totals_come_first_and_name_the_reasons(site):
    client, store, clock = site
    html = client.get("/").text
    assert TOTALS in text(html)
    assert html.index('class="totals') < html.index('<table class="grid fleet"')


def test_totals_sentence(site):
    client, store, clock = site
    statuses = store.status(T0)
    view = fleetview.build(statuses, store.tenants(), T0, fleetview.FleetQuery())
    assert view.totals.sentence == TOTALS


def test_totals_of_a_healthy_and_of_an_empty_fleet():
    assert fleetview.Totals(0, 0, []).sentence.startswith("No systems yet")
    assert fleetview.Totals(12, 12, []).sentence == "All 12 systems meet their policy now."


def test_backup_age_colors():
    rpo = 3600
    assert fleetview.age_color(0, rpo) == "green"
    assert fleetview.age_color(1800, rpo) == "green"  # half the RPO: still green
    assert fleetview.age_color(1801, rpo) == "amber"
    assert fleetview.age_color(3600, rpo) == "amber"
    assert fleetview.age_color(3601, rpo) == "red"
    assert fleetview.age_color(None, rpo) == "red"  # never backed up


def test_rows_show_age_color_copies_verdict_and_drill(site):
    client, store, clock = site
    html = client.get("/?sort=system").text
    row = {name: chunk for name, chunk in zip(rows(html), html.split('<tr class="')[1:], strict=True)}
    assert 'class="age red"' in row["visa"] and 'class="age amber"' in row["djponline"]
    assert 'class="age green"' in row["portal"]
    assert "immutable, locked to 2026-04-01" in row["paspor"]  # Object Lock retention seen
    assert "mirror lag 0s" in row["paspor"]
    assert "suspicious, 1 open alarm" in row["efaktur"]
    assert "never" in row["kk"] and "no" in row["kk"] and "never drilled" in row["kk"]
    assert "18h / 3d" in row["portal"]  # drill: measured RTO / the class's RTO (rendah: 72h)
    assert '<span class="yes">yes</span>' in row["djponline"]  # amber still meets


def test_default_order_is_failing_first(site):
    client, store, clock = site
    order = rows(client.get("/").text)
    assert set(order[:4]) == {"visa", "ktp", "kk", "efaktur"}


def test_sorting(site):
    client, store, clock = site
    assert rows(client.get("/?sort=system").text) == sorted(s.split("/")[1] for s in SYSTEMS)
    assert rows(client.get("/?sort=-system").text) == sorted((s.split("/")[1] for s in SYSTEMS), reverse=True)
    by_age = rows(client.get("/?sort=-backup").text)
    assert set(by_age[:2]) == {"visa", "ktp"}  # twice the RPO
    assert by_age[2] == "djponline"  # 0.7 of the RPO
    html = client.get("/?sort=tenant").text
    assert rows(html)[:3] == ["arsip", "kk", "ktp"]
    assert 'aria-sort="ascending"' in html and 'href="/?sort=-tenant"' in html  # a second click reverses
    assert rows(client.get("/?sort=bogus").text) == rows(client.get("/").text)  # unknown: the default


def test_filters(site):
    client, store, clock = site
    assert sorted(rows(client.get("/?tenant=dukcapil").text)) == ["arsip", "kk", "ktp"]
    assert rows(client.get("/?class=strategis").text) == ["paspor"]
    assert sorted(rows(client.get("/?state=failing").text)) == ["efaktur", "kk", "ktp", "visa"]
    assert sorted(rows(client.get("/?state=ok").text)) == ["arsip", "djponline", "paspor", "portal"]
    assert sorted(rows(client.get("/?why=never_drilled").text)) == ["kk", "ktp"]
    assert rows(client.get("/?q=PASPOR").text) == ["paspor"]
    assert rows(client.get("/?q=Pajak Agency&sort=system").text) == ["djponline", "efaktur"]  # tenant name
    html = client.get("/?tenant=dukcapil").text
    assert "1 of 3 systems meet their policy now; 2 do not" in text(html)  # the tenant's own totals
    assert "3 of 3 systems shown" in text(html)


def test_totals_link_to_the_systems_they_count(site):
    client, store, clock = site
    html = client.get("/").text
    m = re.search(r'<a href="(/\?[^"]*why=rpo[^"]*)"', html)
    assert m
    assert sorted(rows(client.get(m.group(1).replace("&amp;", "&")).text)) == ["ktp", "visa"]


def test_htmx_gets_the_fragment_and_a_browser_the_page(site):
    client, store, clock = site
    frag = client.get("/?state=failing", headers={"HX-Request": "true"})
    assert frag.status_code == 200 and "<html" not in frag.text and 'class="totals' in frag.text
    assert frag.headers["Vary"] == "HX-Request"
    assert sorted(rows(frag.text)) == ["efaktur", "kk", "ktp", "visa"]
    # the address bar gets the canonical URL; the form's sort follows the table's (out of band)
    frag = client.get("/?sort=-system&tenant=&class=&state=failing&q=", headers={"HX-Request": "true"})
    assert frag.headers["HX-Push-Url"] == "/?sort=-system&state=failing"
    assert re.search(r'<input type="hidden" id="fleet-sort" name="sort" value="-system" hx-swap-oob="true">', frag.text)
    restore = client.get("/?state=failing", headers={"HX-Request": "true", "HX-History-Restore-Request": "true"})
    assert "<html" in restore.text
    page = client.get("/").text
    # without JavaScript: a GET form and plain links; htmx enhances the same URLs
    assert '<form class="filters" method="get" action="/"' in page and 'hx-get="/"' in page
    assert 'hx-push-url="true"' in page and 'hx-target="#fleet-results"' in page
    assert '<script src="/static/htmx.min.js' in page
    assert page.count('id="fleet-sort"') == 1 and "hx-swap-oob" not in page


def test_a_viewer_sees_its_tenant_only(site):
    client, store, clock = site
    viewer = TestClient(client.app)
    login(viewer, "vera")
    html = viewer.get("/").text
    assert sorted(rows(html)) == ["arsip", "kk", "ktp"]
    assert "1 of 3 systems meet their policy now" in text(html)
    assert "Imigrasi" not in html and "Pajak" not in html  # not even in the tenant filter
    assert viewer.get("/?tenant=imigrasi").status_code == 404
    assert viewer.get("/?tenant=imigrasi", headers={"HX-Request": "true"}).status_code == 404


def test_values_are_escaped(site):
    client, store, clock = site
    html = client.get('/?q=<script>alert(1)</script>"').text
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html


# ---- a bounded number of statements ------------------------------------------------------------------------
def _statements_for_fleet_page(tmp_path, n: int) -> tuple[int, str]:
    clock = Clock(T0)
    systems = {f"t{i % 5}/s{i}": ("strategis" if i % 3 == 0 else "rendah") for i in range(n)}
    faults = {
        sid: ({"stale"} if i % 4 == 0 else set()) | ({"alarm"} if i % 7 == 0 else set())
        for i, sid in enumerate(systems)
    }
    store = StateStore.open(f"sqlite:///{tmp_path}/state{n}.db", clock=clock)
    try:
        populate(store, systems, faults)
        add_user(store, "ana", "operator")
        client = TestClient(make_app(store, clock))
        login(client, "ana")
        client.get("/")  # warm: the session's last_seen is written at most once a minute
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        html = client.get("/?sort=backup").text
        client.get("/?state=failing&q=s1", headers={"HX-Request": "true"})
        return len(seen), html
    finally:
        store.close()


def test_the_fleet_page_costs_the_same_statements_for_5_and_500_systems(tmp_path):
    small, html5 = _statements_for_fleet_page(tmp_path, 5)
    large, html500 = _statements_for_fleet_page(tmp_path, 500)
    assert len(rows(html5)) == 5 and len(rows(html500)) == 500
    assert small == large, (small, large)
    assert small <= 2 * 12  # per request: the session, the status's seven, the tenants (+ SQLite's BEGINs)
