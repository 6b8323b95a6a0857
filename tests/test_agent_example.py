"""The issue's "done when", end to end: the documented example configuration (docs/examples/cermin.toml) —
three tenants: a PostgreSQL database, a SQLite application, plain files — run by the installed `cermin`
command as an operator runs it: `config check`, `agent keygen`, `agent once` (every system backed up,
mirrored, verified and drilled), `agent status` (every system meets its class), `drill verify` on every
signed report (and an edited one fails), and `agent run` stopped by SIGTERM.

Only the example's machine-specific values are rewritten: every absolute path moves under a temporary
root (repositories, secret files, the workdir, the data, the hook), the PostgreSQL source points at the
test server, and the immutable copies stay S3 with Object Lock on a SeaweedFS of the test's own, where each
tenant's env_file holds its own S3 identity, allowed only its tenant's bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import cermin_exe
from seaweed import Weed, bucket_identity

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "cermin.toml")
SYSTEMS = {"imigrasi/paspor", "dukcapil/antrian", "perpustakaan/arsip"}
S3_KEYS = {  # tenant -> (access key id, secret): one identity per tenant, each allowed only its own bucket
    "imigrasi": ("imigrasi-locked-key", "imigrasi-locked-secret-0123456789"),
    "dukcapil": ("dukcapil-locked-key", "dukcapil-locked-secret-0123456789"),
}


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    """The immutable tier: an Object Lock bucket per tenant, reachable only with that tenant's key."""
    identities = [bucket_identity(t, key, secret, f"{t}-locked") for t, (key, secret) in S3_KEYS.items()]
    w = Weed(str(tmp_path_factory.mktemp("weed-locked")), identities=identities).start()
    try:
        admin = w.boto()
        for tenant in S3_KEYS:
            admin.create_bucket(Bucket=f"{tenant}-locked", ObjectLockEnabledForBucket=True)
        yield w
    finally:
        w.stop()


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the example no longer holds {old!r}: update this test"
    return text.replace(old, new)


def _secret(path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    path.chmod(0o600)


class Site:
    """The example on a temporary root: data, databases, secrets, repositories (made with `cermin init`)."""

    def __init__(self, tmp, postgres, weed, notify_url: str) -> None:
        self.root = root = tmp / "root"
        # the operator's environment: no credentials but the tenant mirror's password, which the example
        # takes from IMIGRASI_MIRROR_PASSWORD; the S3 keys come from each repository's env_file
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CERMIN_", "AWS_"))}
        self.env["IMIGRASI_MIRROR_PASSWORD"] = "imigrasi keeps its own password"

        text = open(EXAMPLE, encoding="utf-8").read()
        for prefix in ("/etc/", "/srv/", "/mnt/", "/var/lib/", "/usr/local/"):
            text = _replace(text, f'"{prefix}', f'"{root}{prefix}')
        self.locked = {t: f"s3:{weed.endpoint}/{t}-locked/cermin-{uuid.uuid4().hex[:8]}" for t in S3_KEYS}
        for tenant, url in self.locked.items():
            text = _replace(text, f'"s3:http://127.0.0.1:8333/cermin-locked/{tenant}"', f'"{url}"')
        text = _replace(text, "port = 5432", f"port = {postgres.port}")
        text = _replace(text, 'user = "backup"', f'user = "{postgres.user}"')
        assert f'host = "{postgres.host}"' in text and 'database = "paspor"' in text
        self.path = tmp / "cermin.toml"
        self.path.write_text(text)
        self.cfg_text = text

        # secrets, from files
        etc = root / "etc" / "cermin"
        for tenant in ("imigrasi", "dukcapil", "perpustakaan"):
            _secret(etc / f"{tenant}.pw", f"data center password of {tenant}")
        _secret(etc / "paspor-db.pw", "unused with trust authentication")
        _secret(etc / "paspor-drill.pw", "unused with trust authentication")
        for tenant, (key, secret) in S3_KEYS.items():
            (etc / f"s3-{tenant}.env").write_text(f"AWS_ACCESS_KEY_ID={key}\nAWS_SECRET_ACCESS_KEY={secret}\n")
            (etc / f"s3-{tenant}.env").chmod(0o600)
        (etc / "notify.urls").write_text(f"# the on-call channel\n{notify_url}\n")

        # the hook: flushes the application's queue before its backup (here: records that it ran)
        hook = root / "usr" / "local" / "bin" / "antrian-flush"
        hook.parent.mkdir(parents=True)
        self.hook_log = tmp / "hook.log"
        hook.write_text(f'#!/bin/sh\necho "$CERMIN_PHASE $CERMIN_SYSTEM" >> {self.hook_log}\n')
        hook.chmod(0o755)

        # tenant 1: passports in PostgreSQL. Its drills load a dump that came out of a repository (the tenant's
        # own mirror among them) with a login of their own that may create databases and nothing more: the
        # server's superuser (the source's login here) is refused on the source's own server
        assert 'user = "cermin_drill"' in text
        postgres.psql(
            "DO $$BEGIN CREATE ROLE cermin_drill LOGIN CREATEDB; EXCEPTION WHEN duplicate_object THEN NULL; END$$;"
        )
        db = postgres.new_database("paspor")
        postgres.psql(
            "CREATE TABLE passports (id serial PRIMARY KEY, holder text NOT NULL, issued date NOT NULL);"
            "INSERT INTO passports (holder, issued) SELECT 'holder ' || i, DATE '2020-01-01' + i FROM"
            " generate_series(1, 500) i;",
            db,
        )
        # tenant 2: a SQLite queue application with uploads
        app = root / "srv" / "antrian"
        (app / "uploads").mkdir(parents=True)
        con = sqlite3.connect(app / "antrian.db")
        con.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, citizen TEXT, counter INTEGER)")
        con.executemany(
            "INSERT INTO tickets (citizen, counter) VALUES (?, ?)", [(f"nik {i}", i % 7) for i in range(300)]
        )
        con.commit()
        con.close()
        for i in range(5):
            (app / "uploads" / f"scan{i}.pdf").write_bytes(os.urandom(2000))
        (app / "uploads" / "half-written.tmp").write_text("excluded")
        # tenant 3: the library's archive, plain files
        arsip = root / "srv" / "arsip"
        (arsip / "naskah").mkdir(parents=True)
        for i in range(12):
            (arsip / "naskah" / f"lontar-{i}.txt").write_text(f"naskah {i}\n" * 300)

        # the repositories, made as the operator makes them (docs/immutable.md, docs/mirror.md)
        for tenant in ("imigrasi", "dukcapil", "perpustakaan"):
            self.cermin(
                "-r", str(root / "srv" / "cermin" / tenant), "--password-file", str(etc / f"{tenant}.pw"), "init"
            )
        for tenant, (key, secret) in S3_KEYS.items():
            self.cermin(
                "-r",
                self.locked[tenant],
                "--password-file",
                str(etc / f"{tenant}.pw"),
                "init",
                "--object-lock",
                "8",
                "--maintenance-interval",
                "1",
                env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret},
            )
        self.cermin(
            "-r",
            str(root / "mnt" / "imigrasi-mirror" / "cermin"),
            "init",
            "--copy-chunker-params-from",
            str(root / "srv" / "cermin" / "imigrasi"),
            "--from-password-file",
            str(etc / "imigrasi.pw"),
            env={"CERMIN_PASSWORD": self.env["IMIGRASI_MIRROR_PASSWORD"]},
        )
        self.workdir = root / "var" / "lib" / "cermin"

    def cermin(self, *args: str, ok: bool = True, env: dict | None = None, timeout: float = 600):
        r = subprocess.run(
            [*cermin_exe(), *args], capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=timeout
        )
        assert "Traceback" not in r.stderr, r.stderr
        if ok:
            assert r.returncode == 0, f"cermin {' '.join(args)} exited {r.returncode}: {r.stderr[-3000:]}"
        return r


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


class Inbox:
    """An apprise json:// endpoint on loopback: what the agent notified."""

    def __init__(self) -> None:
        got = self.got = []

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.srv = HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"json://127.0.0.1:{self.srv.server_port}/oncall"


@pytest.fixture
def inbox():
    box = Inbox()
    yield box
    box.srv.shutdown()


def test_the_documented_example_runs_under_the_agent(tmp_path, postgres, weed, inbox):
    site = Site(tmp_path, postgres, weed, inbox.url)
    c = str(site.path)
    paths = re.findall(r'"(/[^"]*)"', site.cfg_text)
    assert paths and all(p.startswith(str(site.root)) for p in paths), "a path of the example was not moved"

    # 1. the operator checks the configuration and makes the agent's signing key
    plan = site.cermin("config", "check", "-c", c)
    assert "valid — 3 tenant(s), 3 system(s), 6 repositories" in plan.stdout
    assert "then mirrored to dc-imigrasi-locked, imigrasi-own" in plan.stdout
    plan_json = _json_lines(site.cermin("--json", "config", "check", "-c", c).stdout)
    assert [p["message_type"] for p in plan_json] == ["config_plan"]
    assert {s["id"] for s in plan_json[0]["systems"]} == SYSTEMS
    key = _json_lines(site.cermin("--json", "agent", "keygen", "-c", c).stdout)[0]
    assert key["message_type"] == "agent_key" and key["key_file"] == str(site.workdir / "agent.key")

    # 2. one pass: every system backed up, mirrored, forgotten, pruned, verified, drilled
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    once = site.cermin("--json", "agent", "once", "-c", c, timeout=900)
    lines = _json_lines(once.stdout)
    jobs = {(x["system"], x["kind"]): x for x in lines if x["message_type"] == "agent_job"}
    assert set(jobs) == {(s, k) for s in SYSTEMS for k in ("backup", "maintain", "drill")}
    assert all(j["status"] == "ok" for j in jobs.values()), [(k, j["message"], j["steps"]) for k, j in jobs.items()]
    assert lines[-1] == {"message_type": "agent_tick", "jobs": 9, "failed": 0}
    steps = {(s["kind"], s["copy"]) for s in jobs[("imigrasi/paspor", "backup")]["steps"]}
    assert {("backup", "primary"), ("mirror", "immutable"), ("mirror", "mirror")} <= steps
    assert {("backup", "primary"), ("mirror", "immutable")} <= {
        (s["kind"], s["copy"]) for s in jobs[("dukcapil/antrian", "backup")]["steps"]
    }
    maintain = {(s["kind"], s["copy"]) for s in jobs[("imigrasi/paspor", "maintain")]["steps"]}
    assert {("prune", "primary"), ("verify", "primary"), ("verify", "immutable"), ("lock_extend", "immutable")} <= (
        maintain
    )
    assert site.hook_log.read_text() == "pre dukcapil/antrian\n"  # the pre hook ran, before the sources

    # the snapshots are where the example says, named by system and source
    dukcapil = ("-r", str(site.root / "srv" / "cermin" / "dukcapil"))
    dukcapil += ("--password-file", str(site.root / "etc" / "cermin" / "dukcapil.pw"), "--json")
    snaps = _json_lines(site.cermin(*dukcapil, "snapshots").stdout)[0]["snapshots"]
    assert sorted(sorted(s["tags"]) for s in snaps) == [
        ["source=antrian", "system=dukcapil/antrian"],
        ["source=paths", "system=dukcapil/antrian"],
    ]
    assert all(s["hostname"] == "dukcapil.antrian" for s in snaps)
    found = [m["path"] for m in _json_lines(site.cermin(*dukcapil, "find", "*.pdf", "*.tmp").stdout)]
    assert len(found) == 5 and all(p.endswith(".pdf") for p in found)  # exclude = ["*.tmp"]
    mirror = _json_lines(
        site.cermin(
            "-r",
            str(site.root / "mnt" / "imigrasi-mirror" / "cermin"),
            "--json",
            "snapshots",
            env={"CERMIN_PASSWORD": site.env["IMIGRASI_MIRROR_PASSWORD"]},
        ).stdout
    )[0]["snapshots"]
    assert [s["paths"] for s in mirror] == [["paspor.sql"]]
    for tenant, (key, secret) in S3_KEYS.items():  # the immutable copies hold the data, under Object Lock
        locked = ("-r", site.locked[tenant], "--password-file", str(site.root / "etc" / "cermin" / f"{tenant}.pw"))
        aws = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        copies = _json_lines(site.cermin(*locked, "--json", "snapshots", env=aws).stdout)[0]["snapshots"]
        assert len(copies) == {"imigrasi": 1, "dukcapil": 2}[tenant]
        lock = _json_lines(site.cermin(*locked, "--json", "lock", "status", env=aws).stdout)[-1]
        assert lock["policy"]["days"] == 8 and not (lock["hidden"] or lock["planted"] or lock["missing"]), lock

    # 3. the state store answers: when was each system last backed up, mirrored, verified and drilled,
    #    and does it meet its class
    status = _json_lines(site.cermin("--json", "agent", "status", "-c", c).stdout)
    rows = {r["system"]["id"]: r for r in status if r["message_type"] == "system_status"}
    assert set(rows) == SYSTEMS
    assert status[-1] == {"message_type": "fleet_status", "systems": 3, "meeting": 3}
    for sid, r in rows.items():
        assert r["meets_class"] and r["reasons"] == [], (sid, r["reasons"])
        for when in ("last_backup", "last_verify"):
            assert datetime.fromisoformat(r[when]) >= since, (sid, when, r[when])
        drill = r["last_drill"]
        assert drill["verdict"] == "pass" and 0 < drill["rto_measured_s"] <= r["system"]["rto_s"]
        assert drill["report_id"]
        for kind, copy in r["copies"].items():
            assert copy["fresh"], (sid, kind)
    assert rows["imigrasi/paspor"]["last_mirror"] and rows["dukcapil/antrian"]["last_mirror"]
    assert rows["perpustakaan/arsip"]["last_mirror"] is None  # rendah: the primary copy only
    assert set(rows["imigrasi/paspor"]["copies"]) == {"primary", "immutable", "mirror"}
    assert rows["imigrasi/paspor"]["system"]["policy"] == "strategis"
    text = site.cermin("agent", "status", "-c", c).stdout
    assert text.startswith("3 of 3 systems meet their class now")

    # 4. every drill report is signed, verifies with the agent's public key, and an edited one does not
    reports = sorted((site.workdir / "reports").glob("*.json"))
    assert len(reports) == 3 and len(list((site.workdir / "reports").glob("*.html"))) == 3
    pub = str(site.workdir / "agent.key.pub")
    drilled = {}
    for path in reports:
        v = _json_lines(site.cermin("--json", "drill", "verify", str(path), "--key", pub).stdout)[0]
        assert v["message_type"] == "drill_verify" and v["ok"] and v["trusted"] and v["verdict"] == "pass"
        drilled[v["system"]] = json.loads(path.read_text())["report"]
    assert set(drilled) == SYSTEMS
    paspor = drilled["imigrasi/paspor"]
    assert [c_["type"] for c_ in paspor["checks"]] == ["postgres"] and paspor["checks"][0]["ok"]
    assert drilled["dukcapil/antrian"]["checks"][0]["type"] == "sqlite"
    assert all(r["met"] and r["rto_measured_s"] > 0 for r in drilled.values())
    assert not [d for d in postgres.databases() if d.startswith("cermin_drill_")]  # the scratch database is gone
    # the same report is stored in the repository it restored from (the library's archive has only a primary)
    aux = rows["perpustakaan/arsip"]["last_drill"]["report_id"]
    perpus = ("-r", str(site.root / "srv" / "cermin" / "perpustakaan"))
    perpus += ("--password-file", str(site.root / "etc" / "cermin" / "perpustakaan.pw"))
    stored = _json_lines(site.cermin(*perpus, "--json", "drill", "verify", aux, "--key", pub).stdout)[0]
    assert stored["ok"] and stored["report_id"] == drilled["perpustakaan/arsip"]["id"]
    edited = reports[0].read_bytes()
    at = edited.index(b'"rto_measured_s": ') + len(b'"rto_measured_s": ')
    edited = edited[:at] + (b"1" if edited[at : at + 1] != b"1" else b"2") + edited[at + 1 :]
    reports[0].write_bytes(edited)
    bad = site.cermin("drill", "verify", str(reports[0]), "--key", pub, ok=False)
    assert bad.returncode == 1 and "NOT VALID" in bad.stdout + bad.stderr

    # 5. the service: `agent run` until SIGTERM. Nothing is due (the slots just ran) unless a slot boundary
    #    passes meanwhile; then the job in flight finishes before the agent stops.
    proc = subprocess.Popen(
        [*cermin_exe(), "agent", "run", "-c", c, "--interval", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
    )
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        out, err = proc.communicate(timeout=300)
        stopped_in = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "failed" not in out + err, (out, err)
    assert stopped_in < 10 or out.strip(), f"SIGTERM took {stopped_in:.1f}s with no job running"
    after = _json_lines(site.cermin("--json", "agent", "status", "-c", c).stdout)
    assert after[-1] == {"message_type": "fleet_status", "systems": 3, "meeting": 3}
    assert inbox.got == [], "nothing is wrong: nobody is woken"
