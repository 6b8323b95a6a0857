"""The REST API (/api/v1, web/api.py): its OpenAPI document, every endpoint's answer and scope (a viewer sees
one tenant, 404 elsewhere; an auditor cannot write), bearer API tokens (made by the CLI, used, revoked,
hashed at rest), CSRF for cookie writes but not for bearer ones, and a fixed number of statements whatever
the fleet size."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient
from web_helpers import SNAP, T0, Clock, H, add_user, cheap_argon2, csrf_of, login, make_app, populate  # noqa: F401

from cermin.errors import UsageError
from cermin.ops import stateschema as t
from cermin.ops.state import SeenSnapshot, StateStore
from cermin.ops.webstore import WebStore
from cermin.web.apitokens import new_token
from cermin.web.auth import token_hash

SYSTEMS = {
    "imigrasi/paspor": "strategis",
    "imigrasi/visa": "rendah",
    "dukcapil/ktp": "rendah",
    "dukcapil/kk": "rendah",
    "pajak/efaktur": "rendah",
}
FAULTS = {
    "imigrasi/visa": {"stale"},
    "dukcapil/ktp": {"stale", "nodrill"},
    "pajak/efaktur": {"alarm"},
}
TOTALS = (
    "2 of 5 systems meet their policy now; 3 do not, because: 2 backups older than their RPO, "
    "1 open guard alarm, 1 never drilled."
)


class Site:
    def __init__(self, store: StateStore, clock: Clock) -> None:
        self.store, self.clock = store, clock
        self.ws = WebStore(store)
        self.app = make_app(store, clock)

    def client(self, name: str | None = None) -> TestClient:
        c = TestClient(self.app)
        if name is not None:
            assert login(c, name).status_code == 303
        return c

    def token(self, name: str, user: str | None = None, scope: str = "api") -> str:
        secret = new_token()
        self.ws.add_api_token(name, token_hash(secret), user=user, scope=scope)
        return secret

    def bearer(self, secret: str) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {secret}"})


@pytest.fixture
def site(tmp_path):
    clock = Clock(T0)
    store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
    populate(store, SYSTEMS, FAULTS)
    add_user(store, "ana", "operator")
    add_user(store, "odin", "operator")
    add_user(store, "aud", "auditor")
    add_user(store, "vera", "viewer", "dukcapil")
    yield Site(store, clock)
    store.close()


def csrf(client: TestClient) -> dict:
    return {"X-CSRF-Token": csrf_of(client.get("/").text)}


# ---- the OpenAPI document ----------------------------------------------------------------------------------
def test_every_operation_is_documented_with_a_response_model(site):
    spec = site.client("ana").get("/api/v1/openapi.json").json()
    paths = {p: item for p, item in spec["paths"].items() if p.startswith("/api/v1/")}
    assert set(paths) >= {
        "/api/v1/me",
        "/api/v1/fleet",
        "/api/v1/tenants",
        "/api/v1/tenants/{tenant}",
        "/api/v1/systems/{tenant}/{system}",
        "/api/v1/systems/{tenant}/{system}/snapshots",
        "/api/v1/systems/{tenant}/{system}/drills",
        "/api/v1/systems/{tenant}/{system}/runs",
        "/api/v1/systems/{tenant}/{system}/backup",
        "/api/v1/systems/{tenant}/{system}/drill",
        "/api/v1/alarms",
        "/api/v1/alarms/{alarm_id}/ack",
        "/api/v1/actions",
        "/api/v1/approvals",
        "/api/v1/audit",
    }
    schemas = spec["components"]["schemas"]
    for path, item in paths.items():
        for method, op in item.items():
            ok = op["responses"].get("202") or op["responses"]["200"]
            schema = ok["content"]["application/json"]["schema"]
            ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
            assert ref and ref.split("/")[-1] in schemas, (method, path, schema)
            assert op.get("summary"), (method, path)
            assert "401" in op["responses"]
    assert set(spec["components"]["securitySchemes"]) == {"token", "session"}
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    # the models say what the answers hold
    summary = schemas["SystemSummaryOut"]["properties"]
    assert {"id", "tenant", "policy", "rpo_s", "meets_class", "reasons", "color", "copies", "last_drill"} <= set(
        summary
    )
    assert schemas["SystemSummaryOut"]["properties"]["color"]["enum"] == ["green", "amber", "red"]
    assert set(schemas["FleetOut"]["properties"]) == {"now", "totals", "query", "count", "systems"}
    assert "class" in schemas["FleetQueryOut"]["properties"]
    assert "copy" in schemas["RunOut"]["properties"] and "copy_" not in schemas["RunOut"]["properties"]
    assert set(schemas["SystemDetailOut"]["properties"]) >= {
        "system",
        "copies",
        "last_drill",
        "open_alarms",
        "last_runs",
    }
    fleet_params = {p["name"] for p in paths["/api/v1/fleet"]["get"]["parameters"]}
    assert fleet_params == {"sort", "tenant", "class", "state", "q", "why"}


def test_the_api_docs_page_lists_the_operations(site):
    html = site.client("ana").get("/api/docs").text
    assert "/api/v1/fleet" in html and "/api/v1/systems/{tenant}/{system}/backup" in html


def test_the_answers_match_their_schemas(site):
    """Every GET answers what its response model says (checked with the models themselves)."""
    from cermin.web import apimodels as m

    c = site.client("ana")
    c.post("/api/v1/systems/imigrasi/paspor/backup", headers=csrf(c))
    for path, model in [
        ("/api/v1/me", m.MeOut),
        ("/api/v1/fleet", m.FleetOut),
        ("/api/v1/tenants/imigrasi", m.TenantDetailOut),
        ("/api/v1/systems/imigrasi/paspor", m.SystemDetailOut),
        ("/api/v1/systems/imigrasi/paspor/snapshots", m.SnapshotPage),
        ("/api/v1/systems/imigrasi/paspor/drills", m.DrillPage),
        ("/api/v1/systems/imigrasi/paspor/runs", m.RunPage),
        ("/api/v1/alarms?state=all", m.AlarmPage),
        ("/api/v1/actions", m.ActionRequestList),
        ("/api/v1/approvals", m.ApprovalList),
        ("/api/v1/audit", m.AuditPage),
    ]:
        r = c.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", path
        model.model_validate_json(r.content)


# ---- the fleet and tenants ---------------------------------------------------------------------------------
def test_fleet_totals_and_rows(site):
    r = site.client("ana").get("/api/v1/fleet")
    body = r.json()
    assert body["totals"]["sentence"] == TOTALS
    assert (body["totals"]["systems"], body["totals"]["meeting"], body["totals"]["failing"]) == (5, 2, 3)
    assert [(c["code"], c["count"]) for c in body["totals"]["causes"]] == [
        ("rpo", 2),
        ("alarm", 1),
        ("never_drilled", 1),
    ]
    rows = {s["id"]: s for s in body["systems"]}
    assert [s["meets_class"] for s in body["systems"]] == [False, False, False, True, True]  # failing first
    visa = rows["imigrasi/visa"]
    assert visa["color"] == "red" and visa["reason_codes"] == ["rpo"] and visa["backup_age_s"] == 2 * 86400
    assert visa["tenant_name"] == "Imigrasi Agency" and visa["policy"] == "rendah" and visa["rpo_s"] == 86400
    paspor = rows["imigrasi/paspor"]
    assert paspor["color"] == "green" and paspor["meets_class"] and paspor["reasons"] == []
    assert [c["kind"] for c in paspor["copies"]] == ["primary", "immutable", "mirror"]
    immutable = paspor["copies"][1]
    assert immutable["immutable"] and immutable["lock_until"] == "2026-04-01T12:00:00Z"
    assert paspor["last_drill"]["verdict"] == "pass" and paspor["last_drill"]["rto_measured_s"] == 3600
    assert rows["pajak/efaktur"]["open_alarms"] == 1 and rows["pajak/efaktur"]["reason_codes"] == ["alarm"]
    assert rows["dukcapil/ktp"]["last_drill"] is None


def test_fleet_filters_and_sort_like_the_page(site):
    c = site.client("ana")

    def ids(query: str) -> list[str]:
        r = c.get("/api/v1/fleet" + query)
        assert r.status_code == 200, r.text
        return [s["id"] for s in r.json()["systems"]]

    assert sorted(ids("?tenant=dukcapil")) == ["dukcapil/kk", "dukcapil/ktp"]
    assert ids("?class=strategis") == ["imigrasi/paspor"]
    assert sorted(ids("?state=ok")) == ["dukcapil/kk", "imigrasi/paspor"]
    assert ids("?why=alarm") == ["pajak/efaktur"]
    assert ids("?q=paspor") == ["imigrasi/paspor"]
    assert ids("?sort=system") == sorted(SYSTEMS, key=lambda s: s.split("/")[1])
    assert ids("?sort=-system") == sorted(SYSTEMS, key=lambda s: s.split("/")[1], reverse=True)
    body = c.get("/api/v1/fleet?tenant=dukcapil&state=failing").json()
    assert body["totals"]["systems"] == 2 and body["count"] == 1  # the tenant narrows the totals, state not
    assert body["query"] == {
        "sort": "state",
        "tenant": "dukcapil",
        "class": None,
        "state": "failing",
        "q": "",
        "why": None,
    }
    for bad in ("?sort=size", "?state=broken", "?why=nope"):
        r = c.get("/api/v1/fleet" + bad)
        assert r.status_code == 422 and r.headers["content-type"] == "application/json"


def test_tenants(site):
    got = site.client("ana").get("/api/v1/tenants").json()
    assert got == [
        {"id": "dukcapil", "name": "Dukcapil Agency", "systems": 2, "meeting": 1, "failing": 1},
        {"id": "imigrasi", "name": "Imigrasi Agency", "systems": 2, "meeting": 1, "failing": 1},
        {"id": "pajak", "name": "Pajak Agency", "systems": 1, "meeting": 0, "failing": 1},
    ]
    one = site.client("aud").get("/api/v1/tenants/dukcapil").json()
    assert one["id"] == "dukcapil" and one["totals"]["systems"] == 2
    assert sorted(s["id"] for s in one["systems"]) == ["dukcapil/kk", "dukcapil/ktp"]
    assert site.client("ana").get("/api/v1/tenants/nope").status_code == 404


def test_a_system(site):
    c = site.client("ana")
    body = c.get("/api/v1/systems/imigrasi/paspor").json()
    assert body["system"]["id"] == "imigrasi/paspor" and body["system"]["policy"] == "strategis"
    assert (body["system"]["rpo_s"], body["system"]["rto_s"], body["system"]["drill_every_s"]) == (3600, 14400, 604800)
    assert body["system"]["required"] == ["primary", "immutable", "mirror"]
    assert body["meets_class"] and body["color"] == "green" and body["tenant_name"] == "Imigrasi Agency"
    assert set(body["copies"]) == {"primary", "immutable", "mirror"}
    primary = body["copies"]["primary"]
    assert primary["last_backup"]["status"] == "ok" and primary["snapshot"]["snapshot_id"] == SNAP
    assert primary["snapshot"]["verdict"] == "clean"
    assert body["last_drill"]["verdict"] == "pass" and body["last_drill"]["rto_target_s"] == 14400
    assert {(r["kind"], r["copy"]) for r in body["last_runs"]} == {
        ("backup", "primary"),
        ("mirror", "immutable"),
        ("mirror", "mirror"),
        ("verify", "primary"),
    }
    assert body["pending_actions"] == [] and body["running"] is None
    efaktur = c.get("/api/v1/systems/pajak/efaktur").json()
    assert not efaktur["meets_class"] and efaktur["reason_codes"] == ["alarm"]
    assert efaktur["open_alarms"][0]["reasons"] == ["many files became ciphertext"]
    for missing in ("/api/v1/systems/imigrasi/nope", "/api/v1/systems/NOPE/x", "/api/v1/systems/imigrasi/nope/runs"):
        r = c.get(missing)
        assert r.status_code == 404 and r.json() == {"detail": "not found"}


# ---- lists: snapshots, drills, runs, paging ----------------------------------------------------------------
def test_runs_are_paged_without_losing_or_repeating_any(site):
    """A page boundary inside a run of equal start times loses nothing: the cursor counts what it showed."""
    store, sid = site.store, "dukcapil/kk"
    for i in range(7):  # seven runs starting at the very same time, then two older ones
        run = store.start_run(sid, "hook", None, "agent-1", now=T0 - 3 * H)
        store.finish_run(run, "failed" if i % 2 else "ok", now=T0 - 3 * H, error="exit 1" if i % 2 else None)
    for k in (5, 6):
        store.finish_run(store.start_run(sid, "hook", None, "agent-1", now=T0 - k * H), "ok", now=T0 - k * H)
    c = site.client("ana")
    everything = [r["id"] for r in c.get(f"/api/v1/systems/{sid}/runs?limit=1000").json()["items"]]
    assert len(everything) == len(set(everything)) == len(store.runs(sid))
    for size in (1, 2, 3, 4):
        got, cursor, pages = [], None, 0
        while True:
            r = c.get(f"/api/v1/systems/{sid}/runs", params={"limit": size, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["items"]) <= size
            got += [x["id"] for x in body["items"]]
            cursor, pages = body["next"], pages + 1
            if cursor is None:
                break
        assert got == everything, size
        assert pages == -(-len(everything) // size)
    failed = c.get(f"/api/v1/systems/{sid}/runs?kind=hook&status=failed").json()["items"]
    assert len(failed) == 3 and all(r["error"] == "exit 1" for r in failed)
    window = {"since": (T0 - 5 * H).isoformat(), "until": (T0 - 2 * H).isoformat()}
    assert len(c.get(f"/api/v1/systems/{sid}/runs", params={"kind": "hook", **window}).json()["items"]) == 8
    assert c.get(f"/api/v1/systems/{sid}/runs?cursor=bogus").status_code == 422
    assert c.get(f"/api/v1/systems/{sid}/runs?limit=0").status_code == 422


def test_snapshots_and_drills(site):
    store, sid = site.store, "imigrasi/paspor"
    older = [SeenSnapshot(f"{i:02x}" * 32, T0 - (10 + i) * H, size=100 * i, verdict="clean") for i in range(5)]
    store.record_snapshots(sid, "primary", older, T0)
    c = site.client("ana")
    body = c.get(f"/api/v1/systems/{sid}/snapshots?copy=primary&limit=4").json()
    assert [s["snapshot_id"] for s in body["items"]] == [SNAP] + [f"{i:02x}" * 32 for i in range(3)]
    assert body["next"] is not None
    rest = c.get(f"/api/v1/systems/{sid}/snapshots", params={"copy": "primary", "cursor": body["next"]}).json()
    assert [s["snapshot_id"] for s in rest["items"]] == [f"{i:02x}" * 32 for i in (3, 4)] and rest["next"] is None
    locked = c.get(f"/api/v1/systems/{sid}/snapshots?copy=immutable").json()["items"]
    assert locked[0]["retain_until"] == "2026-04-01T12:00:00Z"
    since = (T0 - 12 * H).isoformat()
    assert (
        len(c.get(f"/api/v1/systems/{sid}/snapshots", params={"copy": "primary", "since": since}).json()["items"]) == 4
    )
    store.record_drill(
        sid, SNAP, "immutable", started_at=T0 - 30 * H, rto_measured_s=20000, rto_target_s=14400, verdict="pass",
        now=T0 - 29 * H,
    )  # fmt: skip
    drills = c.get(f"/api/v1/systems/{sid}/drills").json()["items"]
    assert [(d["copy"], d["rto_measured_s"]) for d in drills] == [("primary", 3600), ("immutable", 20000)]
    assert c.get(f"/api/v1/systems/{sid}/drills?limit=1").json()["next"] is not None


def test_alarms_open_and_all(site):
    store = site.store
    old = store.open_alarm("dukcapil/kk", "primary", "ab" * 32, "infected", ["ransom note"], now=T0 - 48 * H)
    store.ack_alarm(old, "ana", note="a test file", now=T0 - 47 * H)
    c = site.client("ana")
    open_ = c.get("/api/v1/alarms").json()["items"]
    assert [a["system_id"] for a in open_] == ["pajak/efaktur"]
    everything = c.get("/api/v1/alarms?state=all").json()["items"]
    assert [a["system_id"] for a in everything] == ["pajak/efaktur", "dukcapil/kk"]
    assert everything[1]["acknowledged_by"] == "ana" and everything[1]["note"] == "a test file"
    until = (T0 - 24 * H).isoformat()
    assert [a["id"] for a in c.get("/api/v1/alarms", params={"state": "all", "until": until}).json()["items"]] == [old]
    assert c.get("/api/v1/alarms?state=all&tenant=pajak").json()["items"][0]["system_id"] == "pajak/efaktur"
    assert c.get("/api/v1/alarms?state=all&system=dukcapil/kk").json()["items"][0]["id"] == old
    viewer = site.client("vera").get("/api/v1/alarms?state=all").json()["items"]
    assert [a["system_id"] for a in viewer] == ["dukcapil/kk"]


# ---- scope: a viewer sees one tenant, 404 elsewhere --------------------------------------------------------
OTHER_TENANT = [
    "/api/v1/tenants/imigrasi",
    "/api/v1/systems/imigrasi/paspor",
    "/api/v1/systems/imigrasi/paspor/snapshots",
    "/api/v1/systems/imigrasi/paspor/drills",
    "/api/v1/systems/imigrasi/paspor/runs",
    "/api/v1/fleet?tenant=imigrasi",
    "/api/v1/alarms?tenant=pajak",
    "/api/v1/alarms?system=pajak/efaktur",
    "/api/v1/actions?tenant=imigrasi",
    "/api/v1/actions?system=imigrasi/paspor",
]


@pytest.mark.parametrize("via", ["session", "token"])
def test_a_viewer_sees_its_tenant_and_nothing_else(site, via):
    c = site.client("vera") if via == "session" else site.bearer(site.token("vera-script", user="vera"))
    assert c.get("/api/v1/me").json()["tenant"] == "dukcapil"
    fleet = c.get("/api/v1/fleet").json()
    assert sorted(s["id"] for s in fleet["systems"]) == ["dukcapil/kk", "dukcapil/ktp"]
    assert fleet["totals"]["systems"] == 2
    assert [x["id"] for x in c.get("/api/v1/tenants").json()] == ["dukcapil"]
    assert c.get("/api/v1/fleet?tenant=dukcapil").status_code == 200
    assert c.get("/api/v1/systems/dukcapil/kk/runs").status_code == 200
    for path in OTHER_TENANT:
        r = c.get(path)
        assert r.status_code == 404 and r.json() == {"detail": "not found"}, path  # as for what does not exist
    assert c.get("/api/v1/alarms?state=all").json()["items"] == []  # pajak's alarm is not its
    assert c.get("/api/v1/audit").status_code == 403
    assert c.get("/api/v1/approvals").status_code == 403


def test_action_requests_are_scoped(site):
    site.ws.request_action("imigrasi/paspor", "backup", "ana", now=T0)
    site.ws.request_action("dukcapil/kk", "drill", "ana", now=T0)
    assert len(site.client("ana").get("/api/v1/actions").json()["items"]) == 2
    mine = site.client("vera").get("/api/v1/actions").json()["items"]
    assert [(a["system_id"], a["kind"], a["status"]) for a in mine] == [("dukcapil/kk", "drill", "pending")]


def test_audit_for_operators_and_auditors(site):
    for i in range(5):
        site.ws.audit("ana", "action.backup", f"imigrasi/s{i}", now=T0 + timedelta(seconds=i))
    for name in ("ana", "aud"):
        c = site.client(name)
        body = c.get("/api/v1/audit?action=action.backup&limit=3").json()
        assert [e["target"] for e in body["items"]] == ["imigrasi/s4", "imigrasi/s3", "imigrasi/s2"]
        rest = c.get(f"/api/v1/audit?action=action.backup&limit=3&before_id={body['next']}").json()
        assert [e["target"] for e in rest["items"]] == ["imigrasi/s1", "imigrasi/s0"] and rest["next"] is None
    logins = site.client("aud").get("/api/v1/audit?action=login").json()["items"]
    assert {e["user_name"] for e in logins} >= {"ana", "aud"}


# ---- writes: operators only, CSRF for cookies, not for bearer tokens ---------------------------------------
def test_backup_and_drill_now(site):
    c = site.client("ana")
    r = c.post("/api/v1/systems/imigrasi/paspor/backup", headers=csrf(c))
    assert r.status_code == 202, r.text
    req = r.json()
    assert (req["system_id"], req["kind"], req["status"], req["user_name"]) == (
        "imigrasi/paspor",
        "backup",
        "pending",
        "ana",
    )
    again = c.post("/api/v1/systems/imigrasi/paspor/backup", headers=csrf(c)).json()
    assert again["id"] == req["id"]  # one pending request per kind
    d = c.post("/api/v1/systems/dukcapil/kk/drill", headers=csrf(c))
    assert d.status_code == 202 and d.json()["kind"] == "drill"
    pending = c.get("/api/v1/systems/imigrasi/paspor").json()["pending_actions"]
    assert [p["id"] for p in pending] == [req["id"]]
    entries = site.ws.audit_log(action="action.backup")
    assert entries[0].user_name == "ana" and entries[0].target == "imigrasi/paspor"
    assert entries[0].detail == {"request": req["id"], "via": "api"}
    assert c.post("/api/v1/systems/imigrasi/nope/backup", headers=csrf(c)).status_code == 404


def test_cookie_writes_need_the_csrf_token(site):
    c = site.client("ana")
    r = c.post("/api/v1/systems/imigrasi/paspor/backup")
    assert r.status_code == 403 and r.headers["content-type"] == "application/json"
    assert c.post("/api/v1/systems/imigrasi/paspor/backup", headers={"X-CSRF-Token": "0" * 64}).status_code == 403
    assert site.ws.action_requests() == []
    r = c.post("/api/v1/systems/imigrasi/paspor/backup", headers={**csrf(c), "Origin": "https://evil.example"})
    assert r.status_code == 403


def test_bearer_writes_need_no_csrf_token(site):
    c = site.bearer(site.token("deploy", user="ana"))
    r = c.post("/api/v1/systems/imigrasi/paspor/drill")
    assert r.status_code == 202, r.text
    entry = site.ws.audit_log(action="action.drill")[0]
    assert entry.user_name == "ana" and entry.detail == {"request": r.json()["id"], "via": "api", "token": "deploy"}


@pytest.mark.parametrize("who", ["aud", "vera"])
def test_auditors_and_viewers_cannot_write(site, who):
    c = site.client(who)
    for path in ("/api/v1/systems/dukcapil/kk/backup", "/api/v1/systems/dukcapil/kk/drill"):
        r = c.post(path, headers=csrf(c))
        assert r.status_code == 403 and "operator" in r.json()["detail"]
    tc = site.bearer(site.token(f"{who}-script", user=who))
    assert tc.post("/api/v1/systems/dukcapil/kk/backup").status_code == 403
    assert site.ws.action_requests() == []


# ---- auth: 401 JSON, tokens ------------------------------------------------------------------------------
def test_no_credentials_is_401_json(site):
    c = site.client()
    for path in ("/api/v1/fleet", "/api/v1/systems/imigrasi/paspor", "/api/v1/openapi.json"):
        r = c.get(path)
        assert r.status_code == 401 and r.json() == {"detail": "login required"}, path
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = c.post("/api/v1/systems/imigrasi/paspor/backup")
    assert r.status_code in (401, 403) and r.headers["content-type"] == "application/json"


def test_token_made_by_the_cli_used_and_revoked(site, tmp_path, monkeypatch):
    from cermin.cli.main import cli
    from cermin.web.settings import WebSettings

    monkeypatch.setattr(
        WebSettings, "from_config", classmethod(lambda cls, path, **kw: cls(state_url=str(site.store.url)))
    )
    runner = CliRunner()
    r = runner.invoke(cli, ["web", "token", "add", "Report", "--user", "aud", "-c", "x.toml"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip()
    assert secret.startswith("cermin_") and len(secret) >= 40 and "shown once" in r.stderr
    # hashed at rest: the store holds the SHA-256, never the token
    with site.store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.api_tokens)).mappings().all()
        dump = "\n".join(str(dict(x)) for x in rows)
        assert rows[0]["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        everything = "".join(str(v) for table in t.metadata.sorted_tables for v in conn.execute(sa.select(table)).all())
    assert secret not in dump and secret not in everything
    listed = runner.invoke(cli, ["--json", "web", "token", "list", "-c", "x.toml"], catch_exceptions=False).stdout
    line = json.loads(listed.splitlines()[0])
    assert line["name"] == "report" and line["user"] == "aud" and line["scope"] == "api"
    assert "token" not in line and "token_hash" not in line and secret not in listed
    # used
    c = site.bearer(secret)
    me = c.get("/api/v1/me").json()
    assert me == {"name": "aud", "role": "auditor", "tenant": None, "via": "token", "token": "report"}
    assert c.get("/api/v1/audit").status_code == 200
    assert site.ws.api_tokens()[0].last_used_at == T0
    # revoked
    r = runner.invoke(cli, ["web", "token", "revoke", "report", "-c", "x.toml"], catch_exceptions=False)
    assert r.exit_code == 0 and "revoked token report" in r.stdout
    r = c.get("/api/v1/me")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert runner.invoke(cli, ["web", "token", "revoke", "report", "-c", "x.toml"]).exit_code != 0
    actions = [e.action for e in site.ws.audit_log() if e.action.startswith("token.")]
    assert actions == ["token.revoke", "token.add"]
    bad = runner.invoke(cli, ["web", "token", "add", "x", "-c", "x.toml"])
    assert isinstance(bad.exception, UsageError) and "--user" in str(bad.exception)


def test_bad_tokens_and_where_tokens_work(site):
    secret = site.token("script", user="ana")
    for header in ("Bearer nope", "Bearer " + secret[:-1], "Basic YW5hOnB3", "Bearer", "bearer  " + "x" * 300):
        r = TestClient(site.app, headers={"Authorization": header}).get("/api/v1/fleet")
        assert r.status_code == 401 and r.headers["content-type"] == "application/json", header
    assert site.bearer(secret.replace("cermin_", "CERMIN_")).get("/api/v1/me").status_code == 401
    assert TestClient(site.app, headers={"Authorization": f"bearer {secret}"}).get("/api/v1/me").status_code == 200
    # the token alone decides: a bad one with a good session cookie is still 401
    c = site.client("ana")
    assert c.get("/api/v1/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    # no pages with a token: only the API and /metrics take them
    r = site.bearer(secret).get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # a metrics token reads /metrics only
    metrics = site.token("prometheus", scope="metrics")
    r = site.bearer(metrics).get("/api/v1/fleet")
    assert r.status_code == 403 and r.json()["detail"] == "a metrics token reads /metrics only"
    assert site.bearer(metrics).post("/api/v1/systems/imigrasi/paspor/backup").status_code == 403


def test_a_disabled_users_tokens_stop_working(site):
    c = site.bearer(site.token("script", user="odin"))
    assert c.get("/api/v1/me").status_code == 200
    site.ws.disable_user("odin")
    assert c.get("/api/v1/me").status_code == 401


def test_last_used_is_written_at_most_once_a_minute(site):
    c = site.bearer(site.token("script", user="ana"))
    c.get("/api/v1/me")
    site.clock.advance(seconds=30)
    c.get("/api/v1/me")
    assert site.ws.api_tokens()[0].last_used_at == T0
    site.clock.advance(seconds=31)
    c.get("/api/v1/me")
    assert site.ws.api_tokens()[0].last_used_at == T0 + timedelta(seconds=61)


# ---- a bounded number of statements ------------------------------------------------------------------------
API_PATHS = (
    "/api/v1/fleet?sort=-backup",
    "/api/v1/fleet?tenant=t1&state=failing&q=s1",
    "/api/v1/tenants",
    "/api/v1/tenants/t2",
    "/api/v1/systems/t0/s0",
    "/api/v1/systems/t0/s0/runs?limit=5",
    "/api/v1/systems/t0/s0/snapshots",
    "/api/v1/alarms?state=all",
)


def _statements(tmp_path, n: int) -> tuple[dict[str, int], int]:
    clock = Clock(T0)
    systems = {f"t{i % 5}/s{i}": ("strategis" if i % 3 == 0 else "rendah") for i in range(n)}
    faults = {
        sid: ({"stale"} if i % 4 == 0 else set()) | ({"alarm"} if i % 7 == 0 else set())
        for i, sid in enumerate(systems)
    }
    store = StateStore.open(f"sqlite:///{tmp_path}/api{n}.db", clock=clock)
    try:
        populate(store, systems, faults)
        add_user(store, "ana", "operator")
        site = Site(store, clock)
        clients = {"session": site.client("ana"), "token": site.bearer(site.token("script", user="ana"))}
        for c in clients.values():
            c.get("/api/v1/me")  # warm: the session's and the token's last use are written once a minute
        seen: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        counts = {}
        for via, c in clients.items():
            for path in API_PATHS:
                before = len(seen)
                r = c.get(path)
                assert r.status_code == 200, (path, r.text)
                counts[f"{via} {path}"] = len(seen) - before
        return counts, len(clients["session"].get("/api/v1/fleet").json()["systems"])
    finally:
        store.close()


def test_the_api_costs_the_same_statements_for_5_and_500_systems(tmp_path):
    small, n5 = _statements(tmp_path, 5)
    large, n500 = _statements(tmp_path, 500)
    assert (n5, n500) == (5, 500)
    assert small == large, {k: (small[k], large[k]) for k in small if small[k] != large[k]}
    assert max(small.values()) <= 2 * 10  # the principal, the status's seven, the tenants (+ SQLite's BEGINs)


# ---- acknowledging an alarm (ops/alarms.py: the repository's guard_ack first, then the store) ----------------
@pytest.fixture
def real(tmp_path):
    """A real repository with a clean backup and a newer snapshot the guard flagged, its alarm in the store,
    and the dashboard started with the configuration (to open the repository)."""
    import os
    from datetime import UTC, datetime

    from conftest import PASSWORD as REPO_PASSWORD
    from helpers import guard_backup, make_source, small_repo, verdict_snapshot

    from cermin.backend.local import LocalBackend
    from cermin.ops.config import load_config
    from cermin.repo.snapshots import resolve
    from cermin.web.app import create_app
    from cermin.web.settings import WebSettings

    repo_dir = str(tmp_path / "repo")
    repo = small_repo(LocalBackend(repo_dir))
    src = tmp_path / "src"
    make_source(str(src), files=6)
    clean, _ = guard_backup(repo, src)
    snap = resolve(repo, clean).snapshot
    flagged = verdict_snapshot(
        repo, datetime.now(UTC), "suspicious", reasons=["412 files became ciphertext"], score=0.9,
        host=snap.hostname, paths=snap.paths, tree=snap.tree,
    )  # fmt: skip
    pw = tmp_path / "repo.password"
    pw.write_text(REPO_PASSWORD + "\n")
    os.chmod(pw, 0o600)
    config = tmp_path / "cermin.toml"
    config.write_text(
        f"[repositories.dukcapil]\nurl = '{repo_dir}'\npassword_file = '{pw}'\nkind = 'primary'\n\n"
        "[tenants.dukcapil.systems.berkas]\nclass = 'rendah'\nprimary = 'dukcapil'\n"
        f"[[tenants.dukcapil.systems.berkas.sources]]\ntype = 'paths'\npaths = ['{src}']\n"
    )
    clock = Clock(T0)
    store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
    store.sync_config(load_config(str(config)), T0)
    alarm = store.open_alarm("dukcapil/berkas", "primary", flagged, "suspicious", ["412 files"], now=T0)
    for name, role, tenant in (("ana", "operator", None), ("aud", "auditor", None), ("vera", "viewer", "dukcapil")):
        add_user(store, name, role, tenant)
    site = Site(store, clock)
    site.app = create_app(WebSettings(state_url=str(store.url), config_path=str(config)), store=store, clock=clock)
    site.alarm = alarm
    yield site
    store.close()


def test_acknowledge_an_alarm(real):
    url = f"/api/v1/alarms/{real.alarm}/ack"
    note = {"note": "the scheduled archive re-encryption"}
    for who in ("aud", "vera"):
        assert real.bearer(real.token(f"{who}-t", user=who)).post(url, json=note).status_code == 403
    cookie = real.client("ana")
    assert cookie.post(url, json=note).status_code == 403  # a cookie without its CSRF token
    c = real.bearer(real.token("ops", user="ana"))
    assert c.post(url, json={"note": ""}).status_code == 422
    assert c.post("/api/v1/alarms/999/ack", json=note).status_code == 404
    r = c.post(url, json=note)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["alarm"]["acknowledged_by"] == "ana" and body["alarm"]["note"] == note["note"]
    assert body["before"] == "suspicious" and body["verdict"] == "clean" and body["repository"] == "dukcapil"
    assert real.store.alarms() == []  # no longer open
    [entry] = real.ws.audit_log(action="alarm.ack")
    assert entry.user_name == "ana" and entry.target == "dukcapil/berkas"
    assert (
        entry.detail["via"] == "api" and entry.detail["token"] == "ops" and entry.detail["guard_ack"] == body["record"]
    )
    again = c.post(url, json=note)
    assert again.status_code == 409 and "acknowledged already" in again.json()["detail"]
    assert real.ws.audit_log(action="alarm.ack_failed")[0].detail["alarm"] == real.alarm
