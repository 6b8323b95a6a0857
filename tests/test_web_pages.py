"""The dashboard's pages beyond the fleet: the tenant page, the system page (terms, copies, snapshot timeline,
drills and the RTO chart, runs), the alerts, approvals and audit pages and the navigation — rendered for an
operator, an auditor and a viewer with the right scope (a viewer: 404 for another tenant, 403 for the audit
and approvals pages), paged by keyset, and each page a fixed number of SQL statements whatever the fleet's
size or the history's length."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from web_helpers import T0, Clock, H, add_user, cheap_argon2, login, make_app, populate  # noqa: F401

from cermin.ops import history
from cermin.ops.state import SeenSnapshot, StateStore
from cermin.ops.webstore import WebStore
from cermin.web import rtochart

SYSTEMS = {
    "imigrasi/paspor": "strategis",
    "imigrasi/visa": "rendah",
    "dukcapil/ktp": "rendah",
    "dukcapil/kk": "rendah",
    "pajak/efaktur": "rendah",
}
FAULTS = {
    "imigrasi/visa": {"stale"},
    "dukcapil/kk": {"nodrill", "alarm"},
    "pajak/efaktur": {"alarm"},
}
USERS = {"ana": ("operator", None), "aud": ("auditor", None), "vera": ("viewer", "dukcapil")}


@pytest.fixture
def site(tmp_path):
    clock = Clock(T0)
    store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
    populate(store, SYSTEMS, FAULTS)
    for name, (role, tenant) in USERS.items():
        add_user(store, name, role, tenant)
    app = make_app(store, clock)
    clients = {}
    for name in USERS:
        clients[name] = TestClient(app)
        login(clients[name], name)
    yield clients, store, clock
    store.close()


def text(html: str) -> str:
    """What a reader sees: tags dropped (a cell's or a term's end reads as a space)."""
    html = re.sub(r"</(td|th|dt|dd|li|p|h1|h2)>", " ", html)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def table_systems(html: str) -> list[str]:
    return re.findall(r'<a href="/systems/[a-z0-9_-]+/([a-z0-9_-]+)">\1</a>', html)


def no_inline_style_or_script(html: str) -> None:
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"<script(?![^>]*\ssrc=)", html)
    assert not re.search(r"\son[a-z]+=", html)


# ---- the tenant page ---------------------------------------------------------------------------------------
def test_the_tenant_page_shows_its_totals_systems_and_alarms(site):
    clients, store, clock = site
    r = clients["ana"].get("/tenants/dukcapil")
    assert r.status_code == 200
    html = r.text
    no_inline_style_or_script(html)
    assert sorted(table_systems(html)) == ["kk", "ktp"]
    assert "1 of 2 systems meet their policy now; 1 does not, because: 1 open guard alarm, 1 never drilled." in text(
        html
    )
    assert "paspor" not in html and "efaktur" not in html
    alarms = html[html.index('id="tenant-alarms"') :]
    assert "/systems/dukcapil/kk" in alarms and "suspicious" in alarms and "many files became ciphertext" in alarms
    # the table's sort links and the totals' reasons stay on the tenant page
    assert 'href="/tenants/dukcapil?sort=system"' in html
    assert 'href="/tenants/dukcapil?state=failing&amp;why=never_drilled"' in html
    failing = clients["ana"].get("/tenants/dukcapil?state=failing&why=alarm")
    assert table_systems(failing.text) == ["kk"]


def test_the_tenant_page_sorts_as_an_htmx_fragment(site):
    clients, store, clock = site
    r = clients["ana"].get("/tenants/dukcapil?sort=-system", headers={"HX-Request": "true"})
    assert r.status_code == 200 and "<html" not in r.text
    assert r.headers["HX-Push-Url"] == "/tenants/dukcapil?sort=-system"
    assert table_systems(r.text) == ["ktp", "kk"]


def test_a_viewer_sees_its_own_tenant_page_only(site):
    clients, store, clock = site
    vera = clients["vera"]
    assert vera.get("/tenants/dukcapil").status_code == 200
    for other in ("/tenants/imigrasi", "/tenants/pajak", "/tenants/nope", "/tenants/BAD!"):
        r = vera.get(other)
        assert r.status_code == 404, other
        assert "imigrasi" not in r.text.lower()
    assert clients["ana"].get("/tenants/nope").status_code == 404
    assert clients["aud"].get("/tenants/imigrasi").status_code == 200
    # the fleet page stays the viewer's home: its own tenant's systems (no redirect)
    assert clients["vera"].get("/", follow_redirects=False).status_code == 200


# ---- the system page ---------------------------------------------------------------------------------------
def _history(store: StateStore, sid: str, snapshots: int, drills: int, runs: int) -> None:
    """More history for one system: snapshots in the primary (every third one mirrored), drills, runs."""
    for i in range(snapshots):
        t = T0 - (i + 1) * 6 * H
        sid_hex = f"{i + 1:064x}"
        store.record_snapshots(sid, "primary", [SeenSnapshot(sid_hex, t, size=1000 + i, files=i, verdict="clean")], T0)
        if i % 3 == 0:
            store.record_snapshots(sid, "mirror", [SeenSnapshot(sid_hex, t)], T0)
    for i in range(drills):
        store.record_drill(
            sid,
            f"{i + 1:064x}",
            "primary",
            started_at=T0 - (i + 2) * 24 * H,
            rto_measured_s=600 + 300 * i,
            rto_target_s=3600,
            verdict="fail" if i == 1 else "pass",
            error="restore failed" if i == 1 else None,
            now=T0 - (i + 2) * 24 * H + H,
        )
    t = T0 - 3 * H
    for i in range(runs):  # several runs share a start time: the pages must neither skip nor repeat them
        run_id = store.start_run(sid, "verify", None, "agent-1", copy="primary", now=t - (i // 3) * H)
        store.finish_run(
            run_id, "failed" if i % 5 == 0 else "ok", now=t, error="disk on fire\nmore" if i % 5 == 0 else None
        )


def test_the_system_page_shows_terms_copies_and_whether_it_meets_its_class(site):
    clients, store, clock = site
    html = clients["ana"].get("/systems/imigrasi/paspor").text
    no_inline_style_or_script(html)
    t = text(html)
    assert "paspor meets its class strategis now." in t
    terms = text(html[html.index('id="terms"') : html.index('id="copies"')])
    assert "RPO 1h" in terms and "RTO 4h" in terms and "Copies required primary, immutable, mirror" in terms
    assert "Drill every" in terms and "Verify every" in terms
    copies = text(html[html.index('id="copies"') : html.index("</table>", html.index('id="copies"'))])
    assert "Object Lock until 2026-04-01 12:00" in copies and "trails the primary by 0s" in copies
    visa = text(clients["ana"].get("/systems/imigrasi/visa").text)
    assert "visa does not meet its class rendah now, because:" in visa and "older than the RPO" in visa


def test_the_system_page_for_each_role(site):
    clients, store, clock = site
    for name in ("ana", "aud"):
        assert clients[name].get("/systems/dukcapil/kk").status_code == 200
    op = clients["ana"].get("/systems/dukcapil/kk").text
    assert "Back up now" in op and "Drill now" in op and "Ask for approval" in op
    for name in ("aud", "vera"):
        html = clients[name].get("/systems/dukcapil/kk").text
        assert "Back up now" not in html and "Ask for approval" not in html and 'action="/systems/' not in html
    vera = clients["vera"]
    assert vera.get("/systems/dukcapil/ktp").status_code == 200
    for other in ("/systems/imigrasi/paspor", "/systems/pajak/efaktur", "/systems/dukcapil/nope", "/systems/a/B!"):
        assert vera.get(other).status_code == 404, other
    assert vera.get("/systems/imigrasi/paspor/requests").status_code == 404
    assert clients["ana"].get("/systems/imigrasi/nope").status_code == 404


def test_the_snapshot_timeline_shows_verdicts_sizes_and_copies_and_pages_on(site):
    clients, store, clock = site
    sid = "dukcapil/ktp"
    _history(store, sid, snapshots=60, drills=0, runs=0)
    client = clients["vera"]
    html = client.get("/systems/dukcapil/ktp?days=30").text
    seen: list[str] = []
    pages = 0
    url = "/systems/dukcapil/ktp?days=30"
    while url:
        pages += 1
        html = client.get(url).text
        section = html[html.index('id="snapshots"') : html.index('id="drills"')]
        seen += re.findall(r'<code title="([0-9a-f]{64})">', section)
        m = re.search(r'<a href="([^"]+)" rel="next">Older snapshots', section)
        url = m.group(1).replace("&amp;", "&") if m else None
    # 30 days of 6-hourly snapshots (the one populate made, and 60 more going back 15 days)
    assert len(seen) == len(set(seen)) == 61 and pages == 3
    first = client.get("/systems/dukcapil/ktp").text
    one = re.search(rf'<tr id="snap-{1:064x}">.*?</tr>', first, re.S).group(0)
    assert "1000 B" in one and "clean" in one and ">primary</span>" in one and ">mirror</span>" in one
    two = re.search(rf'<tr id="snap-{2:064x}">.*?</tr>', first, re.S).group(0)
    assert ">primary</span>" in two and "mirror" not in two
    # a shorter period
    week = client.get("/systems/dukcapil/ktp?days=7").text
    week = week[week.index('id="snapshots"') : week.index('id="drills"')]
    assert len(re.findall(r'<code title="[0-9a-f]{64}">', week)) == 25 and "Older snapshots" in week


def test_history_cursors_neither_skip_nor_repeat(site):
    clients, store, clock = site
    sid = "dukcapil/ktp"
    _history(store, sid, snapshots=0, drills=0, runs=40)
    everything = store.runs(sid, limit=1000)
    got, cursor = [], None
    while True:
        page, cursor = history.run_page(store, sid, after=cursor, limit=7)
        got += [r.id for r in page]
        if cursor is None:
            break
        assert history.Cursor.parse(str(cursor)) == cursor
    assert got == [r.id for r in everything]
    assert history.Cursor.parse("garbage") is None and history.Cursor.parse(None) is None
    html = clients["ana"].get("/systems/dukcapil/ktp?runs=garbage").text  # a bad cursor: the first page
    assert "Runs and errors" in html


def test_runs_and_errors_page_on(site):
    clients, store, clock = site
    _history(store, "dukcapil/ktp", snapshots=0, drills=0, runs=40)
    client = clients["ana"]
    url, ids = "/systems/dukcapil/ktp", []
    while url:
        html = client.get(url).text
        runs = html[html.index('id="runs"') :]
        ids += re.findall(r"<td>#(\d+) ", runs)
        m = re.search(r'<a href="([^"]+)" rel="next">Older runs', runs)
        url = m.group(1).replace("&amp;", "&") if m else None
    assert len(ids) == len(set(ids)) == len(store.runs("dukcapil/ktp", limit=1000))
    html = client.get("/systems/dukcapil/ktp").text
    assert "disk on fire" in html and "<pre>disk on fire\nmore</pre>" in html


def test_the_drill_history_has_an_rto_chart_with_one_point_per_drill(site):
    clients, store, clock = site
    _history(store, "dukcapil/ktp", snapshots=0, drills=6, runs=0)
    html = clients["vera"].get("/systems/dukcapil/ktp").text
    no_inline_style_or_script(html)
    svg = html[html.index("<svg") : html.index("</svg>")]
    drills = store.drills("dukcapil/ktp")
    assert len(drills) == 7  # populate's and six more
    assert svg.count("<circle") == 7
    assert svg.count('class="point fail"') == 1 and svg.count('class="point slow"') == 0
    assert '<polyline class="target"' in svg and '<polyline class="measured"' in svg
    assert 'role="img"' in svg and "<title" in svg and "target 1h" in svg
    assert "failed: restore failed" in svg
    # the chart's geometry: the target line lies at the target's height, every point inside the plot
    chart = rtochart.rto_chart(drills)
    x0, y0, x1, y1 = chart.plot
    assert all(x0 <= p.x <= x1 and y0 <= p.y <= y1 for p in chart.points)
    assert [p.x for p in chart.points] == sorted(p.x for p in chart.points)
    never = clients["ana"].get("/systems/dukcapil/kk").text
    assert "<svg" not in never and "Never drilled" in never


def test_rto_chart_of_one_drill_and_of_a_slow_one():
    from cermin.ops.staterows import Drill

    def drill(i, measured, target=3600, verdict="pass"):
        return Drill(i, None, "t/s", "ab", "primary", T0, T0 + i * H, measured, target, verdict, *([None] * 8))

    assert rtochart.rto_chart([]) is None
    one = rtochart.rto_chart([drill(1, 900)])
    assert len(one.points) == 1 and one.points[0].css == "pass"
    two = rtochart.rto_chart([drill(2, 7200), drill(1, 900, target=1800)])
    assert [p.css for p in two.points] == ["pass", "slow"]
    assert two.points[1].y < two.points[0].y  # higher on the chart: longer
    assert len(two.target.split()) == 4  # a step where the target changed


# ---- alerts ------------------------------------------------------------------------------------------------
def test_the_alerts_page_for_each_role(site):
    clients, store, clock = site
    op = clients["ana"].get("/alerts")
    assert op.status_code == 200
    no_inline_style_or_script(op.text)
    assert "dukcapil/kk" in op.text and "pajak/efaktur" in op.text
    assert op.text.count('action="/alerts/') == 2 and "many files became ciphertext" in op.text
    aud = clients["aud"].get("/alerts").text
    assert "dukcapil/kk" in aud and "pajak/efaktur" in aud and 'action="/alerts/' not in aud
    vera = clients["vera"].get("/alerts").text
    assert "dukcapil/kk" in vera and "pajak" not in vera and 'action="/alerts/' not in vera
    assert clients["vera"].get("/alerts?tenant=pajak").status_code == 404
    only = clients["ana"].get("/alerts?tenant=pajak").text
    assert "pajak/efaktur" in only and "dukcapil/kk" not in only


def test_acknowledged_alarms_show_who_and_when(site):
    clients, store, clock = site
    [a] = store.alarms(system_id="pajak/efaktur")
    store.ack_alarm(a.id, "ana", note="a planned re-encryption", now=T0 + H)
    html = clients["aud"].get("/alerts").text
    acked = html[html.index('id="acked-h"') :]
    row = acked[acked.index(f'id="acked-{a.id}"') :]
    row = text(row[: row.index("</tr>")])
    assert "pajak/efaktur" in row and "ana" in row and "2026-03-02 13:00" in row and "a planned re-encryption" in row
    assert "pajak/efaktur" not in text(html[html.index('id="open-h"') : html.index('id="acked-h"')])


# ---- approvals and audit: not for everyone -----------------------------------------------------------------
def test_approvals_are_for_operators_only(site):
    clients, store, clock = site
    assert clients["ana"].get("/approvals").status_code == 200
    assert clients["aud"].get("/approvals").status_code == 403
    assert clients["vera"].get("/approvals").status_code == 403


def test_the_audit_page_filters_and_pages(site):
    clients, store, clock = site
    ws = WebStore(store)
    for i in range(120):
        ws.audit(
            "ana" if i % 2 else "budi", "action.backup", "imigrasi/paspor", {"n": i}, ip="10.0.0.1", now=T0 + i * H
        )
    assert clients["vera"].get("/audit").status_code == 403
    for name in ("ana", "aud"):
        r = clients[name].get("/audit")
        assert r.status_code == 200
        no_inline_style_or_script(r.text)
    ids, url = [], "/audit?user=budi&action=action.backup"
    while url:
        html = clients["aud"].get(url).text
        ids += re.findall(r'<tr id="audit-(\d+)"', html)
        m = re.search(r'<a href="([^"]+)" rel="next">Older', html)
        url = m.group(1).replace("&amp;", "&") if m else None
    assert len(ids) == len(set(ids)) == 60
    day = clients["aud"].get("/audit?action=action.backup&since=2026-03-03&until=2026-03-03").text
    assert len(re.findall(r'<tr id="audit-', day)) == 24
    logins = clients["aud"].get("/audit?action=login").text
    assert ">vera<" in logins and ">ana<" in logins
    assert clients["aud"].get("/audit?since=yesterday").status_code == 400


# ---- navigation --------------------------------------------------------------------------------------------
def nav(html: str) -> str:
    return html[html.index('<nav aria-label="main">') : html.index("</nav>")]


def test_the_navigation_counts_open_alarms_in_scope(site):
    clients, store, clock = site
    op = nav(clients["ana"].get("/systems/imigrasi/paspor").text)
    assert re.search(r'href="/alerts">Alerts <span class="nav-count"[^>]*>2</span>', op)
    assert 'href="/approvals"' in op and 'href="/audit"' in op
    aud = nav(clients["aud"].get("/").text)
    assert 'href="/approvals"' not in aud and 'href="/audit"' in aud
    vera = nav(clients["vera"].get("/").text)
    assert re.search(r'href="/alerts">Alerts <span class="nav-count"[^>]*>1</span>', vera)
    assert 'href="/approvals"' not in vera and 'href="/audit"' not in vera
    for a in store.alarms():
        store.ack_alarm(a.id, "ana", note="ok")
    assert "nav-count" not in nav(clients["ana"].get("/alerts").text)


# ---- a bounded number of statements ------------------------------------------------------------------------
PAGES = [
    "/tenants/t0",
    "/tenants/t0?sort=-backup",
    "/systems/t0/s0",
    "/systems/t0/s0?days=365",
    "/alerts",
    "/approvals",
    "/audit",
    "/audit?user=ana",
]


def _statements(tmp_path, n: int, depth: int) -> dict[str, int]:
    clock = Clock(T0)
    systems = {f"t{i % 5}/s{i}": ("strategis" if i % 3 == 0 else "rendah") for i in range(n)}
    faults = {sid: ({"alarm"} if i % 7 == 0 else set()) for i, sid in enumerate(systems)}
    store = StateStore.open(f"sqlite:///{tmp_path}/state{n}.db", clock=clock)
    try:
        populate(store, systems, faults)
        _history(store, "t0/s0", snapshots=depth, drills=depth // 4, runs=depth)
        ws = WebStore(store)
        for i in range(depth):
            ws.audit("ana", "action.backup", "t0/s0", now=T0 - i * H)
            ws.request_action("t0/s0", "backup" if i % 2 else "drill", "ana", now=T0)
            ws.request_approval("forget", {"system": "t0/s0"}, "ana", "why", now=T0)
        add_user(store, "ana", "operator")
        client = TestClient(make_app(store, clock))
        login(client, "ana")
        client.get("/")  # the session's last_seen is written at most once a minute
        counts = {}
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        for page in PAGES:
            seen.clear()
            r = client.get(page)
            assert r.status_code == 200, (page, r.text[-500:])
            counts[page] = len(seen)
        return counts
    finally:
        store.close()


def test_every_page_costs_the_same_statements_for_a_small_and_a_large_fleet_and_history(tmp_path):
    small = _statements(tmp_path, 5, 4)
    large = _statements(tmp_path, 250, 120)
    assert small == large, (small, large)
    assert max(small.values()) <= 2 * 16, small  # (+ SQLite's BEGINs)
