"""The evidence export on the dashboard (/export, /export/evidence.{csv,zip,json,html,pdf}) and on the command
line (cermin export evidence): who may export what (a viewer its tenant only, another is a 404), the period's
validation (400, one line), the downloads' names, digest and audit entries, the PDF (and 501 without
WeasyPrint) — and the demo fleet's evidence, the document an auditor files: every system, the attack's
alarm, the drill with its RTO and verified signed report, the digest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
import zipfile
import zlib
from html import unescape

import pytest
from fastapi.testclient import TestClient
from web_helpers import T0, Clock, add_user, cheap_argon2, fleet_toml, login, make_app, populate  # noqa: F401

from cermin.ops.state import StateStore
from cermin.ops.webstore import WebStore

SYSTEMS = {
    "imigrasi/paspor": "strategis",
    "imigrasi/visa": "rendah",
    "dukcapil/ktp": "rendah",
    "dukcapil/kk": "rendah",
}
FAULTS = {"imigrasi/visa": {"stale"}, "dukcapil/ktp": {"nodrill", "alarm"}}
FLEET = "cermin-evidence-fleet-20260201-20260302"


@pytest.fixture
def site(tmp_path):
    clock = Clock(T0)
    store = StateStore.open(f"sqlite:///{tmp_path}/state.db", clock=clock)
    populate(store, SYSTEMS, FAULTS)
    cfg = tmp_path / "cermin.toml"
    cfg.write_bytes(fleet_toml(SYSTEMS))
    add_user(store, "ana", "operator")
    add_user(store, "audrey", "auditor")
    add_user(store, "vera", "viewer", "dukcapil")
    app = make_app(store, clock, config_path=str(cfg))
    yield app, store
    store.close()


def client_as(app, name: str) -> TestClient:
    c = TestClient(app)
    assert login(c, name).status_code == 303
    return c


def rows(resp) -> list[dict]:
    return list(csv.DictReader(io.StringIO(resp.content.decode("utf-8-sig"))))


def pdf_objects(pdf: bytes) -> bytes:
    """The PDF with its compressed streams inflated (WeasyPrint packs its objects into object streams)."""
    out = [pdf]
    for m in re.finditer(rb"stream\r?\n", pdf):
        try:
            out.append(zlib.decompressobj().decompress(pdf[m.end() :]))
        except zlib.error:
            pass
    return b"\n".join(out)


def pdf_pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", pdf_objects(pdf)))


# ---- the page ----------------------------------------------------------------------------------------------
def test_the_export_page_offers_the_last_30_days_and_the_scopes_the_user_may_see(site):
    app, store = site
    html = client_as(app, "ana").get("/export").text
    assert 'name="since" value="2026-02-01"' in html and 'name="until" value="2026-03-02"' in html
    assert '<option value="">the whole fleet</option>' in html and '<option value="imigrasi">' in html
    for fmt in ("html", "pdf", "csv", "zip", "json"):
        assert f'formaction="/export/evidence.{fmt}"' in html
    viewer = client_as(app, "vera").get("/export").text
    assert '<input type="hidden" name="tenant" value="dukcapil">' in viewer
    assert "imigrasi" not in viewer and "the whole fleet" not in viewer
    assert client_as(app, "audrey").get("/export").status_code == 200


def test_a_visitor_is_sent_to_the_login(site):
    app, _ = site
    r = TestClient(app).get("/export/evidence.csv", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


# ---- downloads ---------------------------------------------------------------------------------------------
def test_every_format_downloads_with_its_name_and_digest(site):
    app, _ = site
    c = client_as(app, "audrey")  # auditors read everything and export
    r = c.get("/export/evidence.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == f'attachment; filename="{FLEET}-systems.csv"'
    digest = r.headers["x-evidence-digest"].removeprefix("sha256:")
    table = rows(r)
    assert [(x["tenant"], x["system"], x["met_policy_over_period"]) for x in table] == [
        ("dukcapil", "kk", "yes"),
        ("dukcapil", "ktp", "no"),
        ("imigrasi", "paspor", "yes"),
        ("imigrasi", "visa", "no"),
    ]
    assert {x["evidence_digest"] for x in table} == {digest}
    assert table[2]["retention"].startswith("last 48")  # the dashboard's configuration was read
    drills = c.get("/export/evidence.csv?table=drills")
    assert drills.headers["content-disposition"] == f'attachment; filename="{FLEET}-drills.csv"'
    assert {x["system"] for x in rows(drills)} == {"kk", "paspor", "visa"}
    body = c.get("/export/evidence.json").content
    doc = json.loads(body)
    assert doc["generated_by"] == "audrey (auditor) on the dashboard" and doc["scope"] == "fleet"
    assert hashlib.sha256(body).hexdigest() == digest  # nothing changed in between: the same document
    html = c.get("/export/evidence.html")
    assert html.headers["content-disposition"] == f'attachment; filename="{FLEET}.html"'
    assert f"sha256:{digest}" in html.text and "2 of 4 systems met their policy over the period" in html.text
    z = zipfile.ZipFile(io.BytesIO(c.get("/export/evidence.zip").content))
    assert "README.txt" in z.namelist() and f"{FLEET}-alarms.csv" in z.namelist()
    # the page's form sends its CSV table choice with every format: ignored but for CSV
    assert c.get("/export/evidence.html?table=drills&tenant=").status_code == 200


def test_a_viewer_exports_its_tenant_only(site):
    app, _ = site
    c = client_as(app, "vera")
    r = c.get("/export/evidence.csv")
    assert r.status_code == 200 and {x["tenant"] for x in rows(r)} == {"dukcapil"}
    assert 'filename="cermin-evidence-dukcapil-20260201-20260302-systems.csv"' in r.headers["content-disposition"]
    assert c.get("/export/evidence.csv?tenant=dukcapil").status_code == 200
    for fmt in ("csv", "html", "pdf", "json", "zip"):
        other = c.get(f"/export/evidence.{fmt}?tenant=imigrasi")
        assert other.status_code == 404, fmt
        assert "imigrasi" not in other.text.replace("tenant=imigrasi", "")
    html = c.get("/export/evidence.html").text
    assert "imigrasi" not in html and "Dukcapil Agency" in html
    # an operator asks for one tenant, or for one that does not exist
    ana = client_as(app, "ana")
    assert {x["tenant"] for x in rows(ana.get("/export/evidence.csv?tenant=imigrasi"))} == {"imigrasi"}
    assert ana.get("/export/evidence.csv?tenant=nope").status_code == 404


@pytest.mark.parametrize(
    "query,words",
    [
        ("since=last-week", "bad since 'last-week'"),
        ("since=2026-02-10&until=2026-02-01", "the period is empty"),
        ("since=2022-01-01&until=2026-01-31", "at most three years"),
        ("since=2026-06-01&until=2026-07-01", "starts in the future"),
        ("until=2026-13-01", "bad until '2026-13-01'"),
        ("table=secrets", "bad table 'secrets'"),
    ],
)
def test_a_bad_request_is_a_400_with_one_line(site, query, words):
    app, _ = site
    r = client_as(app, "ana").get(f"/export/evidence.csv?{query}")
    line = unescape(re.search(r"<p>([^<]*)</p>", r.text).group(1))
    assert r.status_code == 400 and words in line and "\n" not in line
    assert client_as(app, "ana").get("/export/evidence.docx").status_code == 404


def test_every_export_is_audited_with_its_digest(site):
    app, store = site
    c = client_as(app, "vera")
    r = c.get("/export/evidence.csv?table=alarms&since=2026-02-15&until=2026-03-01")
    entries = WebStore(store).audit_log(action="export.evidence")
    assert [(e.user_name, e.target) for e in entries] == [("vera", "dukcapil")]
    d = entries[0].detail
    assert d["format"] == "csv" and d["table"] == "alarms" and d["systems"] == 2
    assert d["since"].startswith("2026-02-15") and d["until"].startswith("2026-03-02")
    assert "sha256:" + d["digest"] == r.headers["x-evidence-digest"]
    c.get("/export/evidence.csv?tenant=imigrasi")  # refused: not an export
    assert len(WebStore(store).audit_log(action="export.evidence")) == 1


def test_the_pdf_has_pages_and_the_digest(site):
    app, _ = site
    r = client_as(app, "ana").get("/export/evidence.pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == f'attachment; filename="{FLEET}.pdf"'
    assert r.content.startswith(b"%PDF-")
    assert pdf_pages(r.content) >= 3  # the summary, then a page per tenant
    digest = r.headers["x-evidence-digest"]
    assert digest.encode() in pdf_objects(r.content)  # its keywords


def test_without_weasyprint_the_pdf_is_a_501_naming_the_extra_and_html_still_works(site, monkeypatch):
    app, _ = site
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # `import weasyprint` raises ImportError
    c = client_as(app, "ana")
    r = c.get("/export/evidence.pdf")
    assert r.status_code == 501
    line = unescape(re.search(r"<p>([^<]*)</p>", r.text).group(1))
    assert line == "PDF export needs WeasyPrint: pip install 'cermin[pdf]'"
    assert c.get("/export/evidence.html").status_code == 200
    page = c.get("/export").text
    assert 'formaction="/export/evidence.pdf" disabled' in page and "cermin[pdf]" in page


# ---- the demo fleet: the document an auditor files ---------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from conftest import FAST_KDF

    from cermin.ops.demo import build_demo

    root = tmp_path_factory.mktemp("demo") / "fleet"
    return build_demo(str(root), progress=None, kdf=FAST_KDF)


def test_the_demo_fleets_evidence_is_a_document_an_auditor_could_file(demo, cheap_argon2):  # noqa: F811
    from cermin.ops.demo import ATTACKED, COVERED
    from cermin.web.app import create_app
    from cermin.web.settings import WebSettings

    store = StateStore.open(demo.state_url, upgrade=False)
    try:
        add_user(store, "auditor", "auditor")
        app = create_app(WebSettings(state_url=demo.state_url, config_path=demo.config_path), store=store)
        c = client_as(app, "auditor")
        r = c.get("/export/evidence.html")
        assert r.status_code == 200
        digest = r.headers["x-evidence-digest"]
        html = r.text
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
        assert "1 of 7 systems met their policy over the period; 6 did not" in text
        for sid in (s.id for s in demo.status):  # every system, with its own section
            assert f'id="system-{sid.replace("/", "-")}"' in html, sid
        assert html.count(digest) >= 4
        # the attack: the guard's infected verdict and its open alarm, with its reasons
        attacked = html[html.index(f'id="system-{ATTACKED.replace("/", "-")}"') :]
        attacked = attacked[: attacked.index("</article>")]
        assert "infected" in attacked and "ransom note" in attacked and ">open<" in attacked
        assert "1 guard alarm open at the end of the period" in attacked
        # the drill: copy, measured RTO against the target, pass, the signed report verified by the agent's key
        drilled = html[html.index(f'id="system-{COVERED.replace("/", "-")}"') :]
        drilled = drilled[: drilled.index("</article>")]
        assert "met its policy over the period" in drilled
        assert re.search(r"\d+\.\d s / 4h <span class=\"yes\">within</span>", drilled)
        assert "signature verified" in drilled and "signature valid, by the agent&#39;s key sha256:" in drilled
        assert "Object Lock" in drilled and "last 48, daily 30" in drilled
        drills = rows(c.get("/export/evidence.csv?table=drills"))
        assert [(d["system"], d["verdict"], d["within_rto"], d["signature"]) for d in drills] == [
            ("paspor", "pass", "yes", "verified")
        ]
        # the PDF of the same fleet
        pdf = c.get("/export/evidence.pdf").content
        assert pdf.startswith(b"%PDF-") and pdf_pages(pdf) >= 5  # the summary and a page per tenant at least
        assert b"sha256:" in pdf_objects(pdf)
    finally:
        store.close()


def test_the_cli_writes_the_same_evidence(demo, tmp_path, capsys):
    from cermin.cli.main import main

    out = tmp_path / "evidence.html"
    with pytest.raises(SystemExit) as e:
        main(["export", "evidence", "-c", demo.config_path, "--format", "html", "-o", str(out)])
    assert e.value.code == 0
    said = capsys.readouterr().out
    digest = said.split()[0]
    assert digest.startswith("sha256:") and digest in out.read_text()
    assert "1 of 7 systems met their policy over the period" in out.read_text()
    with pytest.raises(SystemExit) as e:
        main(
            ["--json", "export", "evidence", "-c", demo.config_path, "--tenant", "dukcapil", "--format", "json"]
            + ["-o", str(tmp_path / "d.json")]
        )
    line = json.loads(capsys.readouterr().out)
    body = (tmp_path / "d.json").read_bytes()
    assert e.value.code == 0 and line["message_type"] == "evidence_export" and line["scope"] == "dukcapil"
    assert line["digest"] == "sha256:" + hashlib.sha256(body).hexdigest() and line["systems"] == 2
    with pytest.raises(SystemExit) as e:
        main(["export", "evidence", "-c", demo.config_path, "--since", "2026-02-30", "--format", "csv", "-o", "-"])
    assert e.value.code == 2 and "bad since '2026-02-30'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["export", "evidence", "-c", demo.config_path, "--tenant", "nope", "--format", "csv", "-o", "-"])
    assert e.value.code == 1 and "unknown tenant 'nope'" in capsys.readouterr().err
