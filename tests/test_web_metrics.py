"""Prometheus /metrics (web/metrics.py): the values for a known fleet, read back with prometheus_client's own
parser; who may scrape (a metrics token: the fleet; a user's token or session: its scope; nobody else, not
even from loopback); OpenMetrics on request; a fixed number of statements for 5 and 500 systems; and the
Grafana dashboard (docs/grafana-cermin.json) asks only for metrics the exporter has."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import SNAP, T0, Clock, H, _ok_run, add_user, cheap_argon2, login, make_app, populate  # noqa: F401

from cermin.ops.state import SeenSnapshot, StateStore
from cermin.ops.webstore import WebStore
from cermin.web.apitokens import new_token
from cermin.web.auth import token_hash

GRAFANA = os.path.join(os.path.dirname(__file__), "..", "docs", "grafana-cermin.json")
SYSTEMS = {
    "imigrasi/paspor": "strategis",
    "imigrasi/visa": "rendah",
    "dukcapil/ktp": "rendah",
    "dukcapil/kk": "strategis",
    "pajak/efaktur": "rendah",
}
FAULTS = {
    "imigrasi/visa": {"stale"},
    "dukcapil/ktp": {"nobackup", "nodrill"},
    "dukcapil/kk": {"nolock", "faileddrill"},
    "pajak/efaktur": {"alarm", "slowdrill"},
}


@pytest.fixture
def site(tmp_path):
    clock = Clock(T0)
    store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
    populate(store, SYSTEMS, FAULTS)
    # the primary moved on 5 minutes after the copies were made: the copies trail it
    sid = "imigrasi/paspor"
    run = _ok_run(store, sid, "backup", "primary", T0 - timedelta(seconds=60), T0)
    store.record_snapshots(sid, "primary", [SeenSnapshot("ab" * 32, T0 - timedelta(seconds=60), run_id=run)], T0)
    store.heartbeat("agent-1", T0 - timedelta(seconds=30), host="backup1", version="0.1.0", started=True)
    add_user(store, "ana", "operator")
    add_user(store, "vera", "viewer", "dukcapil")
    ws = WebStore(store)
    app = make_app(store, clock)
    yield store, ws, app, clock
    store.close()


def token(ws: WebStore, name: str, *, user: str | None = None, scope: str = "api") -> str:
    secret = new_token()
    ws.add_api_token(name, token_hash(secret), user=user, scope=scope)
    return secret


def scrape(app, secret: str | None = None, **headers) -> dict[str, dict[tuple, float]]:
    """metric name -> {sorted label items: value}, parsed by prometheus_client."""
    if secret is not None:
        headers["Authorization"] = f"Bearer {secret}"
    r = TestClient(app).get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    return parse(r.text)


def parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def lab(tenant: str, system: str, cls: str, **more) -> tuple:
    return tuple(sorted({"tenant": tenant, "system": system, "class": cls, **more}.items()))


def test_values_for_a_known_fleet(site):
    store, ws, app, clock = site
    m = scrape(app, token(ws, "prometheus", scope="metrics"))
    paspor, visa = lab("imigrasi", "paspor", "strategis"), lab("imigrasi", "visa", "rendah")
    ktp, kk, efaktur = (
        lab("dukcapil", "ktp", "rendah"),
        lab("dukcapil", "kk", "strategis"),
        lab("pajak", "efaktur", "rendah"),
    )
    # backup age against the RPO
    assert m["cermin_backup_age_seconds"] == {paspor: 60, visa: 2 * 86400, ktp: math.inf, kk: 360, efaktur: 8640}
    assert m["cermin_rpo_seconds"] == {paspor: 3600, visa: 86400, ktp: 86400, kk: 3600, efaktur: 86400}
    assert m["cermin_rto_seconds"][paspor] == 4 * 3600 and m["cermin_rto_seconds"][kk] == 4 * 3600
    assert m["cermin_rpo_compliant"] == {paspor: 1, visa: 0, ktp: 0, kk: 1, efaktur: 1}
    assert m["cermin_meets_class"] == {paspor: 1, visa: 0, ktp: 0, kk: 0, efaktur: 0}
    # copies: age, required, lag behind the primary, Object Lock expiry
    pi, pm, pp = (lab("imigrasi", "paspor", "strategis", copy=c) for c in ("immutable", "mirror", "primary"))
    assert m["cermin_copy_age_seconds"][pp] == 60
    assert m["cermin_copy_age_seconds"][pi] == m["cermin_copy_age_seconds"][pm] == 360
    assert m["cermin_copy_lag_seconds"][pi] == m["cermin_copy_lag_seconds"][pm] == 300
    assert pp not in m["cermin_copy_lag_seconds"]  # the primary trails nothing
    assert (
        m["cermin_copy_required"][pm] == 1
        and m["cermin_copy_required"][lab("imigrasi", "visa", "rendah", copy="primary")]
    )
    ki = lab("dukcapil", "kk", "strategis", copy="immutable")
    lock = m["cermin_object_lock_until_timestamp_seconds"]
    assert lock == {pi: (T0 + timedelta(days=30)).timestamp(), ki: 0}  # kk: no lock seen
    assert m["cermin_copy_age_seconds"][ki] == 360 and m["cermin_copy_lag_seconds"][ki] == 0
    assert m["cermin_copy_age_seconds"][lab("dukcapil", "ktp", "rendah", copy="primary")] == math.inf
    # drills
    assert m["cermin_drill_rto_seconds"] == {paspor: 3600, visa: 64800, kk: 3600, efaktur: 2 * 72 * 3600}
    assert m["cermin_drill_rto_target_seconds"][efaktur] == 72 * 3600
    assert m["cermin_drill_pass"] == {paspor: 1, visa: 1, kk: 0, efaktur: 1}  # ktp: never drilled, no sample
    assert m["cermin_drill_last_timestamp_seconds"][paspor] == (T0 - H).timestamp()
    assert m["cermin_verify_last_timestamp_seconds"][paspor] == (T0 - H).timestamp()
    # alarms and the fleet
    assert m["cermin_open_alarms"] == {paspor: 0, visa: 0, ktp: 0, kk: 0, efaktur: 1}
    assert m["cermin_fleet_systems"] == {(): 5} and m["cermin_fleet_systems_meeting_class"] == {(): 1}
    assert m["cermin_fleet_open_alarms"] == {(): 1}
    failing = {dict(k)["reason"]: v for k, v in m["cermin_fleet_systems_failing"].items()}
    assert {k: v for k, v in failing.items() if v} == {
        "rpo": 1,
        "no_backup": 1,
        "never_drilled": 1,
        "drill_failed": 1,
        "drill_slow": 1,
        "alarm": 1,
    }
    assert set(failing) >= {"rpo", "copy_stale", "never_verified"}  # every reason, 0 or not: stable series
    agent = (("agent", "agent-1"), ("host", "backup1"), ("version", "0.1.0"))
    assert m["cermin_agent_last_seen_timestamp_seconds"] == {agent: (T0 - timedelta(seconds=30)).timestamp()}


def test_a_scrape_says_what_the_store_says_now(site):
    store, ws, app, clock = site
    secret = token(ws, "prometheus", scope="metrics")
    clock.advance(hours=1)
    m = scrape(app, secret)
    assert m["cermin_backup_age_seconds"][lab("imigrasi", "paspor", "strategis")] == 3660
    assert m["cermin_rpo_compliant"][lab("imigrasi", "paspor", "strategis")] == 0


# ---- who may scrape ----------------------------------------------------------------------------------------
def test_never_unauthenticated(site):
    store, ws, app, clock = site
    c = TestClient(app)  # the test client's address is like loopback: that is no credential either
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YTpi"}):
        r = c.get("/metrics", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), headers
        assert "cermin_" not in r.text and "imigrasi" not in r.text
    secret = token(ws, "prometheus", scope="metrics")
    assert c.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    ws.revoke_api_token("prometheus")
    assert c.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_a_viewer_scrapes_its_tenant_only(site):
    store, ws, app, clock = site
    for m in (scrape(app, token(ws, "vera-prom", user="vera")), None):
        if m is None:  # the same through a session
            c = TestClient(app)
            login(c, "vera")
            r = c.get("/metrics")
            assert r.status_code == 200
            m = parse(r.text)
        tenants = {dict(k)["tenant"] for k in m["cermin_rpo_seconds"]}
        assert tenants == {"dukcapil"}
        assert m["cermin_fleet_systems"] == {(): 2}
        assert "cermin_agent_last_seen_timestamp_seconds" not in m  # the fleet's agents are not a tenant's
    everything = scrape(app, token(ws, "ana-prom", user="ana"))  # an operator's token: the whole fleet
    assert len(everything["cermin_rpo_seconds"]) == 5 and "cermin_agent_last_seen_timestamp_seconds" in everything


def test_openmetrics_on_request(site):
    store, ws, app, clock = site
    secret = token(ws, "prometheus", scope="metrics")
    r = TestClient(app).get(
        "/metrics",
        headers={"Authorization": f"Bearer {secret}", "Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(r.text)}
    assert {"cermin_backup_age_seconds", "cermin_fleet_systems", "cermin_drill_pass"} <= names
    plain = TestClient(app).get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert plain.headers["content-type"].startswith("text/plain")


def test_metrics_is_not_in_the_api_document(site):
    store, ws, app, clock = site
    spec = TestClient(app, headers={"Authorization": f"Bearer {token(ws, 'ana-api', user='ana')}"})
    assert "/metrics" not in spec.get("/api/v1/openapi.json").json()["paths"]


# ---- a bounded number of statements ------------------------------------------------------------------------
def _statements(tmp_path, n: int) -> tuple[int, int]:
    clock = Clock(T0)
    systems = {f"t{i % 5}/s{i}": ("strategis" if i % 3 == 0 else "rendah") for i in range(n)}
    faults = {
        sid: ({"stale"} if i % 4 == 0 else set()) | ({"alarm"} if i % 7 == 0 else set())
        for i, sid in enumerate(systems)
    }
    store = StateStore.open(f"sqlite:///{tmp_path}/metrics{n}.db", clock=clock)
    try:
        populate(store, systems, faults)
        store.heartbeat("agent-1", T0, host="h", started=True)
        c = TestClient(
            make_app(store, clock), headers={"Authorization": f"Bearer {token(WebStore(store), 'p', scope='metrics')}"}
        )
        c.get("/metrics")  # warm: the token's last use is written once a minute
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        r = c.get("/metrics")
        assert r.status_code == 200
        return len(seen), len(parse(r.text)["cermin_rpo_seconds"])
    finally:
        store.close()


def test_a_scrape_costs_the_same_statements_for_5_and_500_systems(tmp_path):
    small, n5 = _statements(tmp_path, 5)
    large, n500 = _statements(tmp_path, 500)
    assert (n5, n500) == (5, 500)
    assert small == large, (small, large)
    assert small <= 2 * 9  # the token, the status's seven, the agents (+ SQLite's BEGINs)


# ---- the Grafana dashboard ---------------------------------------------------------------------------------
def test_the_grafana_dashboard_uses_the_exporters_metrics(site):
    store, ws, app, clock = site
    with open(GRAFANA, encoding="utf-8") as f:
        dash = json.load(f)
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    exposed = set(scrape(app, token(ws, "prometheus", scope="metrics")))
    ids, used = set(), set()
    for p in dash["panels"]:
        assert p["id"] not in ids
        ids.add(p["id"])
        assert p["datasource"]["uid"] == "${datasource}" and p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        for target in p["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used |= set(re.findall(r"\bcermin_[a-z_]+", target["expr"]))
    for v in variables.values():
        q = v.get("query")
        used |= set(re.findall(r"\bcermin_[a-z_]+", q["query"] if isinstance(q, dict) else str(q)))
    assert used and used <= exposed, used - exposed
    wanted = {
        "cermin_meets_class",
        "cermin_backup_age_seconds",
        "cermin_rpo_seconds",
        "cermin_drill_rto_seconds",
        "cermin_drill_rto_target_seconds",
        "cermin_open_alarms",
        "cermin_copy_lag_seconds",
        "cermin_object_lock_until_timestamp_seconds",
    }
    assert wanted <= used
