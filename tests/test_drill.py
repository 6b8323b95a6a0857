"""Restore drills (ops/drill.py): real PostgreSQL and SQLite, real repositories, signed reports, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess

import pytest
from conftest import FAST_KDF, PASSWORD, cermin_exe

from cermin.backend.local import LocalBackend
from cermin.engine.backup import BackupOptions
from cermin.ops import commands
from cermin.ops.agentkey import AgentKeyError, generate_key, load_key
from cermin.ops.config import parse_config
from cermin.ops.drill import run_drill
from cermin.ops.drillreport import drill_reports, verify_report
from cermin.ops.repos import open_config_repo
from cermin.ops.sources import backup_system
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots


class Site:
    """A configuration on disk (three repositories: primary, immutable, mirror), the agent's workdir and key."""

    def __init__(self, tmp_path, system: str, rto: str = "1h") -> None:
        self.dir = tmp_path
        self.pw = tmp_path / "repo.pw"
        self.pw.write_text(PASSWORD + "\n")
        (tmp_path / "mirror.pw").write_text("another password\n")
        self.work = tmp_path / "work"
        self.key_path = str(tmp_path / "keys" / "agent.key")
        self.key = generate_key(self.key_path)
        for name, pw in (("primary", PASSWORD), ("immutable", PASSWORD), ("mirror", "another password")):
            Repository.init(LocalBackend(str(tmp_path / name)), pw.encode(), kdf=FAST_KDF)
        self.path = tmp_path / "cermin.toml"
        self.path.write_text(
            f"""
[agent]
workdir = "{self.work}"
key_file = "{self.key_path}"
name = "agent-test"

[classes.drilltest]
rpo = "1h"
rto = "{rto}"
retention = {{ last = 3 }}
copies = ["primary"]

[repositories.primary]
url = "{tmp_path / "primary"}"
password_file = "{self.pw}"
[repositories.immutable]
url = "{tmp_path / "immutable"}"
password_file = "{self.pw}"
[repositories.mirror]
url = "{tmp_path / "mirror"}"
password_file = "{tmp_path / "mirror.pw"}"
kind = "mirror"

[tenants.acme.systems.app]
class = "drilltest"
primary = "primary"
immutable = "immutable"
mirror = "mirror"
{system}
"""
        )
        self.cfg = parse_config(self.path.read_bytes(), str(self.path), environ={})
        self.system = self.cfg.systems[0]

    def repo(self, copy: str = "primary") -> Repository:
        r = open_config_repo(self.cfg, copy)
        r.load_index()
        return r

    def backup(self):
        result = backup_system(self.repo(), self.system)
        assert result.ok, result.errors
        return result

    def drill(self, **kw):
        kw.setdefault("signing_key", self.key)
        return run_drill(self.cfg, self.system, **kw)

    def cli(self, *args, ok=None, env=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")} | (env or {})
        env["CERMIN_CACHE_DIR"] = str(self.dir / "cli-cache")
        r = subprocess.run([*cermin_exe(), *args], capture_output=True, env=env, timeout=300)
        if ok is not None:
            assert (r.returncode == 0) == ok, (r.returncode, r.stdout.decode(), r.stderr.decode())
        return r


@pytest.fixture(autouse=True)
def _cache(own_cache):
    pass


def drill_role(pg, name: str = "cermin_drill", rights: str = "CREATEDB") -> str:
    """A login of its own for drills (the cluster is shared by the session's tests: made once)."""
    pg.psql(f"DO $$BEGIN CREATE ROLE {name} LOGIN {rights}; EXCEPTION WHEN duplicate_object THEN NULL; END$$;")
    return name


def pg_system(pg, database: str, query: str, check: str | None = None, timeout: str = "30min") -> str:
    """A postgres source (the server's superuser dumps it) and a check; the check's own connection
    settings `check` (TOML lines), by default the drill role's login on the same server."""
    if check is None:
        check = f'user = "{drill_role(pg)}"'
    return f"""
[[tenants.acme.systems.app.sources]]
type = "postgres"
host = "{pg.host}"
port = {pg.port}
user = "{pg.user}"
database = "{database}"

[[tenants.acme.systems.app.checks]]
type = "postgres"
name = "passports"
query = "{query}"
timeout = "{timeout}"
{check}
"""


def plant_dump(site, sql: bytes, source: str) -> None:
    """A snapshot planted by someone holding the repository password, named like the source's dumps."""
    commands.backup(
        site.repo(),
        BackupOptions(
            stdin=io.BytesIO(sql),
            stdin_filename=f"{source}.sql",
            hostname="acme.app",
            tags=["system=acme/app", f"source={source}"],
        ),
    )


def scratch_databases(pg) -> list[str]:
    return [d for d in pg.databases() if d.startswith("cermin_drill_")]


def make_pg_database(pg, name: str = "paspor") -> str:
    db = pg.new_database(name)
    pg.psql(
        "CREATE TABLE passports (id int PRIMARY KEY, holder text, issued date);"
        "INSERT INTO passports SELECT g, 'holder ' || g, date '2024-01-01' + g FROM generate_series(1, 2000) g;"
        "CREATE INDEX ON passports (holder);",
        db,
    )
    return db


# ---- PostgreSQL: the whole story -------------------------------------------------------------------
def test_postgres_drill_signed_stored_and_verified(tmp_path, postgres):
    db = make_pg_database(postgres)
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1 FROM passports WHERE holder = 'holder 1999'"))
    site.backup()
    res = site.drill()
    r = res.report
    assert r.verdict == "pass", (r.errors, r.checks)
    assert res.exit_code == 0
    (snap,) = r.snapshots
    assert snap.source == "paspor" and snap.type == "postgres" and snap.files == 1 and snap.verified_files == 1
    assert snap.guard_verdict in ("clean", "unknown") and snap.errors == 0
    (chk,) = r.checks
    assert chk.ok and chk.name == "passports" and "returned 1 row" in chk.detail
    assert 0 < r.rto_measured_s < 3600 and r.rto_target_s == 3600 and r.met
    assert r.system == "acme/app" and r.tenant == "acme" and r.policy == "drilltest" and r.copy == "primary"
    assert r.repository == "primary" and r.repository_id == site.repo().config.id and r.agent == "agent-test"
    assert r.started <= r.finished and r.started.endswith("Z")
    # the scratch database is gone, the source untouched, the sandbox removed
    assert not [d for d in postgres.databases() if d.startswith("cermin_drill_")]
    assert postgres.psql("SELECT count(*) FROM passports;", db).strip() == "2000"
    assert os.listdir(site.work / "drills") == []
    # stored as an aux record in the repository it restored from; signature verifies there and in the file
    ((aux_name, stored),) = drill_reports(site.repo())
    assert aux_name == res.aux
    assert verify_report(stored, [site.key.public_raw]).ok
    assert json.loads(open(res.json_path).read()) == stored
    ok, why = verify_report(open(res.json_path, "rb").read(), [site.key.public_raw])
    assert ok, why
    html = open(res.html_path).read()
    assert "PASS" in html and "acme/app" in html and site.key.fingerprint in html and "<script" not in html
    # the command line verifies it; with the right key, with the wrong key, and after an edit
    pub = site.key_path + ".pub"
    out = site.cli("drill", "verify", res.json_path, "--key", pub, ok=True)
    assert b"valid signature" in out.stdout
    other = generate_key(str(tmp_path / "other.key"))
    out = site.cli("drill", "verify", res.json_path, "--key", other.path + ".pub", ok=False)
    assert f"signature valid but by an untrusted key {site.key.fingerprint}".encode() in out.stderr + out.stdout
    out = site.cli("--json", "-r", str(tmp_path / "primary"), "drill", "verify", res.aux[:16], "--key", pub, ok=False)
    # (without the password the record cannot be read: an error line, not a traceback)
    assert json.loads(out.stdout.splitlines()[-1])["message_type"] == "error"
    out = subprocess.run(
        [*cermin_exe(), "-r", str(tmp_path / "primary"), "drill", "verify", res.aux[:16], "--key", pub],
        capture_output=True,
        env={**os.environ, "CERMIN_PASSWORD": PASSWORD, "CERMIN_CACHE_DIR": str(tmp_path / "c2")},
    )
    assert out.returncode == 0 and b"valid signature" in out.stdout, out.stderr


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["report"].__setitem__("rto_measured_s", d["report"]["rto_measured_s"] / 10),
        lambda d: d["report"].__setitem__("verdict", "fail"),
        lambda d: d["report"]["checks"][0].__setitem__("detail", "ok"),
        lambda d: d["report"]["snapshots"][0].__setitem__("files", 2),
        lambda d: d["report"].__setitem__("note", "added"),
        lambda d: d["report"]["errors"].append("x"),
        lambda d: d["report"].__setitem__("class", "strategis"),
        lambda d: d.__setitem__("key_fingerprint", "sha256:" + "0" * 64),
    ],
    ids=["rto", "verdict", "check-detail", "files", "added-field", "errors", "class", "fingerprint"],
)
def test_an_edited_report_fails(tmp_path, edit):
    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()
    res = site.drill()
    assert res.report.verdict == "pass"
    doc = json.loads(open(res.json_path).read())
    edit(doc)
    assert not verify_report(doc).ok
    assert not verify_report(doc, [site.key.public_raw]).ok
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    out = site.cli("drill", "verify", str(edited), ok=False)
    assert b"NOT VALID" in out.stderr + out.stdout


def test_a_report_resigned_with_another_key_is_not_trusted(tmp_path):
    """Anyone can make a key and sign an edited report with it: `drill verify` never exits 0 for it."""
    import msgspec

    from cermin.ops.drillreport import SignedReport, sign

    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()
    res = site.drill()
    env = msgspec.convert(json.loads(open(res.json_path).read()), SignedReport)
    mallory = generate_key(str(tmp_path / "k2"))
    forged, _ = sign(msgspec.structs.replace(env.report, rto_measured_s=0.001), mallory)
    doc = msgspec.to_builtins(forged)
    v = verify_report(doc)
    assert v.intact and not v.trusted and v.exit_code == 1  # intact, signed by the key it names: proves nothing
    v = verify_report(doc, [site.key.public_raw])
    assert not v.ok and v.intact and "untrusted key" in v.why and v.exit_code == 1  # ... which is not the agent's
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(doc))
    untrusted = f"signature valid but by an untrusted key {mallory.fingerprint}".encode()
    pub = site.key_path + ".pub"
    # the agent's key from the configuration (-c, CERMIN_CONFIG), from --key, or no trusted key at all: exit 1
    for args, env_ in [([], None), (["-c", str(site.path)], None), ([], {"CERMIN_CONFIG": str(site.path)})]:
        out = site.cli("drill", "verify", str(path), *args, env=env_, ok=False)
        assert out.returncode == 1 and untrusted in out.stdout + out.stderr, (args, out.stdout, out.stderr)
    out = site.cli("drill", "verify", str(path), "--key", pub, ok=False)
    assert out.returncode == 1 and untrusted + b": not one of the keys given" in out.stdout + out.stderr
    out = site.cli("--json", "drill", "verify", str(path), "-c", str(site.path), ok=False)
    line = json.loads(out.stdout)
    assert line["intact"] and not line["trusted"] and not line["ok"] and line["why"].startswith(untrusted.decode())
    assert f"not the agent's key ({pub}) of {site.path}" in line["why"]
    # the genuine report: trusted through the configuration without --key; with no trusted key, not proven
    for args, env_ in [(["-c", str(site.path)], None), ([], {"CERMIN_CONFIG": str(site.path)})]:
        out = site.cli("drill", "verify", res.json_path, *args, env=env_, ok=True)
        assert f"valid signature by {site.key.fingerprint}".encode() in out.stdout
    out = site.cli("drill", "verify", res.json_path, ok=False)
    assert out.returncode == 1 and b"no trusted key to check it against" in out.stdout + out.stderr
    os.rename(pub, pub + ".moved")  # the private key itself, when the .pub is not there (mode 600: ours)
    site.cli("drill", "verify", res.json_path, "-c", str(site.path), ok=True)
    os.rename(site.key_path, site.key_path + ".moved")
    out = site.cli("drill", "verify", res.json_path, "-c", str(site.path), ok=False)
    assert out.returncode == 1 and f"no agent key at {pub}".encode() in out.stdout + out.stderr
    out = site.cli("drill", "verify", res.json_path, "-c", str(tmp_path / "missing.toml"), ok=False)
    assert out.returncode == 2 and b"cannot read the configuration" in out.stderr


def test_dump_with_psql_meta_commands_is_refused(tmp_path, postgres):
    """A snapshot planted by someone holding the repository password: its dump runs a shell command."""
    db = make_pg_database(postgres, "victim")
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1 FROM passports"))
    marker = tmp_path / "pwned"
    evil = f"CREATE TABLE passports (id int);\nINSERT INTO passports VALUES (1);\n\\! touch {marker}\n".encode()
    plant_dump(site, evil, "victim")
    res = site.drill()
    assert res.report.verdict == "fail" and res.exit_code != 0
    (chk,) = res.report.checks
    assert not chk.ok and "backslash commands" in chk.detail
    assert not marker.exists()
    assert not [d for d in postgres.databases() if d.startswith("cermin_drill_")]


def test_failing_postgres_query_fails_the_drill(tmp_path, postgres):
    db = make_pg_database(postgres, "emptyq")
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1 FROM passports WHERE id < 0"))
    site.backup()
    res = site.drill()
    assert res.report.verdict == "fail"
    assert res.report.checks[0].detail == "the check query returned no rows"
    assert not [d for d in postgres.databases() if d.startswith("cermin_drill_")]


# ---- PostgreSQL: the dump is hostile, so is the SQL in it -----------------------------------------------
@pytest.mark.parametrize("login", ["superuser", "createrole", "server-program"])
def test_a_powerful_login_on_the_sources_server_is_refused(tmp_path, postgres, login, request):
    """As a superuser a planted dump's COPY ... TO PROGRAM is a shell on the database host: such a login (or
    CREATEROLE, or a member of pg_execute_server_program) never loads a dump on the source's own server."""
    import tempfile

    db = make_pg_database(postgres, "powerful")
    check, why = {
        "superuser": ("", "is a superuser"),  # the source's own login: the server's superuser
        "createrole": (f'user = "{drill_role(postgres, "cermin_drill_cr", "CREATEDB CREATEROLE")}"', "CREATEROLE"),
        "server-program": (f'user = "{drill_role(postgres, "cermin_drill_prog")}"', "a member of pg_"),
    }[login]
    postgres.psql("GRANT pg_execute_server_program TO cermin_drill_prog;")
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1 FROM passports", check))
    outside = tempfile.mkdtemp(prefix="cermin-pwn-")  # where the server's user may write
    os.chmod(outside, 0o777)
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))
    marker = os.path.join(outside, "pwned")
    evil = "CREATE TABLE passports (id int);\nINSERT INTO passports VALUES (1);\n"
    evil += f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n"
    plant_dump(site, evil.encode(), "powerful")
    before = postgres.databases()
    res = site.drill()
    (chk,) = res.report.checks
    assert not chk.ok and chk.detail.startswith("refused: the login ") and why in chk.detail, chk.detail
    assert "source's own server" in chk.detail and "\n" not in chk.detail
    assert res.report.verdict == "fail" and res.exit_code == 1
    assert not os.path.exists(marker), "the dump ran a program on the database host"
    assert postgres.databases() == before  # nothing was created, nothing loaded


class Forward:
    """A TCP forwarder on another loopback port: the same cluster, seen as a scratch server of its own."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]

        def pump(a, b):
            with contextlib.suppress(OSError):
                while data := a.recv(65536):
                    b.sendall(data)
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

        def serve():
            with contextlib.suppress(OSError):
                while True:
                    c, _ = self.srv.accept()
                    u = socket.create_connection(("127.0.0.1", port))
                    threading.Thread(target=pump, args=(c, u), daemon=True).start()
                    threading.Thread(target=pump, args=(u, c), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.srv.close()


def test_a_scratch_server_of_its_own_may_use_any_login(tmp_path, postgres):
    db = make_pg_database(postgres, "scratchsrv")
    fwd = Forward(postgres.port)
    try:
        check = f'host = "127.0.0.1"\nport = {fwd.port}\nuser = "{postgres.user}"\ndatabase = "template1"'
        site = Site(tmp_path, pg_system(postgres, db, "SELECT 1 FROM passports WHERE id = 7", check))
        site.backup()
        res = site.drill()
    finally:
        fwd.close()
    (chk,) = res.report.checks
    assert chk.ok and res.report.verdict == "pass", chk.detail
    assert not scratch_databases(postgres)


def test_a_dump_runs_in_its_scratch_database_under_time_limits(tmp_path, postgres):
    """pg_dump's header switches the time limits off; the drill drops those lines and sets its own first."""
    db = make_pg_database(postgres, "limits")
    query = "SELECT 1 FROM seen WHERE st <> '0' AND lt <> '0' AND db LIKE 'cermin_drill_%'"
    site = Site(tmp_path, pg_system(postgres, db, query))
    plant_dump(
        site,
        b"SET statement_timeout = 0;\nSET lock_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n"
        b"CREATE TABLE seen AS SELECT current_setting('statement_timeout') AS st,\n"
        b"  current_setting('lock_timeout') AS lt, current_database() AS db;\n"
        b"ALTER TABLE public.seen OWNER TO postgres;\nGRANT SELECT ON TABLE public.seen TO nobody_at_all;\n",
        "limits",
    )
    res = site.drill()
    (chk,) = res.report.checks
    assert chk.ok, chk.detail
    assert not scratch_databases(postgres)


def test_a_dump_past_the_checks_timeout_is_stopped_and_dropped(tmp_path, postgres):
    db = make_pg_database(postgres, "sleepy")
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1", timeout="3s"))
    plant_dump(site, b"SET statement_timeout = 0;\nSELECT pg_sleep(600);\n", "sleepy")
    res = site.drill()
    (chk,) = res.report.checks
    assert not chk.ok and ("still running after 3s" in chk.detail or "statement timeout" in chk.detail), chk.detail
    assert not scratch_databases(postgres)
    assert (
        postgres.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid();"
        ).strip()
        == "0"
    )


def test_databases_a_dump_creates_are_dropped_and_fail_the_check(tmp_path, postgres):
    db = make_pg_database(postgres, "planter")
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1 FROM passports"))
    plant_dump(
        site,
        b"CREATE TABLE passports (id int);\nINSERT INTO passports VALUES (1);\n"
        b'CREATE DATABASE planted_one;\nCREATE DATABASE "planted two";\n',
        "planter",
    )
    res = site.drill()
    (chk,) = res.report.checks
    assert not chk.ok and "created databases of its own: 'planted two', 'planted_one' (dropped)" in chk.detail
    assert not {"planted_one", "planted two"} & set(postgres.psql("SELECT datname FROM pg_database;").splitlines())
    assert not scratch_databases(postgres)


def test_check_connection_settings_are_validated(tmp_path):
    from types import SimpleNamespace

    from cermin.ops.config import ConfigError

    pg = SimpleNamespace(host="127.0.0.1", port=5432, user="postgres")
    for i, (extra, message) in enumerate(
        [
            ("port = 70000", "checks[0].port: is not a port"),
            ('password = "hunter2"', "checks[0].password: secrets do not belong"),
            ('password_file = "/a"\npassword_env = "B"', "checks[0].password_env: give password_file or password_env"),
            ('password_file = "drill.pw"', "checks[0].password_file: give an absolute path"),
        ]
    ):
        (tmp_path / str(i)).mkdir()
        with pytest.raises(ConfigError, match=re.escape(message)):
            Site(tmp_path / str(i), pg_system(pg, "db", "SELECT 1", extra))
    bad = '\n[[tenants.acme.systems.app.checks]]\ntype = "files"\nuser = "x"\n'
    with pytest.raises(ConfigError, match=re.escape("checks[1].user: only a postgres check connects")):
        Site(tmp_path, pg_system(pg, "db", "SELECT 1", "") + bad)


def test_where_a_postgres_check_connects():
    from cermin.ops.config import Check, Source
    from cermin.ops.drillchecks import check_target, same_server

    src = Source(type="postgres", database="d", user="backup", password_file="/etc/src.pw")
    chk = Check(type="postgres", query="SELECT 1")
    t = check_target(chk, src)
    assert (t.host, t.port, t.user, t.password_file) == ("127.0.0.1", 5432, "backup", "/etc/src.pw")
    t = check_target(Check(type="postgres", query="q", user="drill"), src)
    assert t.user == "drill" and not t.password_file and not t.password_env  # not the source's password
    t = check_target(Check(type="postgres", query="q", user="drill", password_env="DRILL_PW"), src)
    assert t.password_env == "DRILL_PW" and not t.password_file
    t = check_target(Check(type="postgres", query="q", host="scratch.invalid", port=6432), src)
    assert (t.host, t.port, t.user, t.password_file) == ("scratch.invalid", 6432, "backup", "")

    def pg(host, port=5432):
        return Source(type="postgres", database="d", host=host, port=port)

    assert same_server(pg("127.0.0.1"), pg("localhost")) and same_server(pg("/run/postgresql"), pg("127.0.0.1"))
    assert same_server(pg("127.0.0.1"), pg("::1")) and same_server(pg(""), pg("127.0.0.2"))
    assert same_server(pg("192.0.2.7,127.0.0.1"), pg("localhost"))
    assert not same_server(pg("127.0.0.1"), pg("127.0.0.1", 6432))
    assert not same_server(pg("127.0.0.1"), pg("192.0.2.7"))  # TEST-NET-1: not this host
    assert same_server(pg("192.0.2.7"), pg("192.0.2.7"))


# ---- SQLite application -----------------------------------------------------------------------------
def _sqlite_system(tmp_path, query: str = "SELECT 1 FROM tickets LIMIT 1") -> str:
    db = tmp_path / "antrian.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE IF NOT EXISTS tickets (id INTEGER PRIMARY KEY, who TEXT);")
    con.executemany("INSERT INTO tickets (who) VALUES (?)", [(f"visitor {i}",) for i in range(300)])
    con.commit()
    con.close()
    uploads = tmp_path / "uploads"
    uploads.mkdir(exist_ok=True)
    for i in range(5):
        (uploads / f"scan{i}.pdf").write_bytes(os.urandom(5000))
    return f"""
[[tenants.acme.systems.app.sources]]
type = "sqlite"
path = "{db}"

[[tenants.acme.systems.app.sources]]
type = "paths"
name = "uploads"
paths = ["{uploads}"]

[[tenants.acme.systems.app.checks]]
type = "sqlite"
query = "{query}"

[[tenants.acme.systems.app.checks]]
type = "files"
source = "uploads"
min_files = 5

[[tenants.acme.systems.app.checks]]
type = "command"
name = "db-file"
source = "antrian"
command = ["test", "-s", "{{restore_dir}}/antrian.sqlite"]
"""


def test_sqlite_application_drill(tmp_path):
    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()
    res = site.drill(keep=True)
    r = res.report
    assert r.verdict == "pass", (r.errors, r.checks)
    assert [s.source for s in r.snapshots] == ["antrian", "uploads"]
    assert [c.ok for c in r.checks] == [True, True, True]
    assert r.checks[1].detail == "5 files restored (at least 5)"
    assert stat.S_IMODE(os.stat(res.sandbox).st_mode) == 0o700
    restored = sqlite3.connect(os.path.join(res.sandbox, "antrian", "antrian.sqlite"))
    assert restored.execute("SELECT count(*) FROM tickets").fetchone() == (300,)
    uploads = os.path.join(res.sandbox, "uploads", str(tmp_path / "uploads").lstrip("/"))
    assert sorted(os.listdir(uploads)) == [f"scan{i}.pdf" for i in range(5)]


def test_sqlite_check_failure_and_missing_source(tmp_path):
    site = Site(tmp_path, _sqlite_system(tmp_path, query="SELECT 1 FROM tickets WHERE id < 0"))
    site.backup()
    res = site.drill()
    assert res.report.verdict == "fail" and res.exit_code == 1
    assert res.report.checks[0].detail == "integrity ok, but the query returned no rows"
    # a snapshot of one source: only that source's checks run, the others are skipped
    (ref,) = [r for r in list_snapshots(site.repo()) if "source=uploads" in r.snapshot.tags]
    res = site.drill(snapshot=ref.id)
    assert [s.source for s in res.report.snapshots] == ["uploads"]
    assert [(c.ok, c.skipped) for c in res.report.checks] == [(False, True), (True, False), (False, True)]
    assert res.report.verdict == "pass" and res.report.selection == ref.id


def test_rto_not_met_fails(tmp_path):
    site = Site(tmp_path, _sqlite_system(tmp_path), rto="1min")
    site.backup()
    ticks = iter(range(0, 10_000, 7))  # a slow clock: 7 s per reading
    res = site.drill(monotonic=lambda: float(next(ticks)))
    r = res.report
    assert r.rto_target_s == 60 and r.rto_measured_s > 60 and not r.met
    assert r.verdict == "fail" and not r.errors and all(c.ok for c in r.checks)


# ---- a damaged backup fails loudly ---------------------------------------------------------------------
def test_damaged_pack_fails_the_drill_loudly(tmp_path):
    from helpers import damage, object_path, pack_entries

    from cermin.format import pack as packfmt

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    site = Site(
        tmp_path,
        f"""
[[tenants.acme.systems.app.sources]]
type = "command"
name = "blob"
command = ["cat", "{big}"]
""",
    )
    site.backup()
    repo = site.repo()
    data_packs = [p for p, es in pack_entries(repo).items() if all(e.type == packfmt.DATA for e in es)]
    from cermin.backend.base import Kind

    damage(object_path(repo, Kind.DATA, data_packs[0]), "flip")
    out = site.cli("--json", "drill", "acme/app", "--config", str(site.path), ok=False)
    assert out.returncode == 1
    (line,) = [json.loads(x) for x in out.stdout.splitlines() if b'"drill_report"' in x]
    r = line["report"]
    assert r["verdict"] == "fail" and r["errors"] and r["snapshots"][0]["errors"] >= 1
    assert "blob" in r["errors"][0]
    # still signed, stored in the repository and written as files
    assert verify_report({k: line[k] for k in ("format", "report", "signature", "public_key", "key_fingerprint")}).ok
    assert line["aux"] and os.path.exists(line["json_path"])
    ((_, stored),) = drill_reports(site.repo())
    assert stored["report"]["verdict"] == "fail"
    text = site.cli("drill", "acme/app", "--config", str(site.path), ok=False)
    assert b"FAIL" in text.stdout and b"error:" in text.stderr


def test_unreachable_repository_gives_a_signed_failed_report(tmp_path):
    site = Site(tmp_path, _sqlite_system(tmp_path))
    res = site.drill(copy="immutable", environ={})  # nothing backed up there: no snapshot to restore
    assert res.report.verdict == "fail" and "no snapshot to restore" in res.report.errors[0]
    os.rename(tmp_path / "immutable", tmp_path / "gone")
    res = site.drill(copy="immutable")
    assert res.report.verdict == "fail" and "no repository at" in res.report.errors[0]
    assert res.aux is None and verify_report(open(res.json_path, "rb").read()).ok


# ---- which snapshot, which copy --------------------------------------------------------------------------
def test_last_clean_picks_the_clean_snapshot(tmp_path):
    from helpers import set_verdict

    counter = tmp_path / "n"
    counter.write_text("1")
    site = Site(
        tmp_path,
        f"""
[[tenants.acme.systems.app.sources]]
type = "command"
name = "ledger"
command = ["cat", "{counter}"]

[[tenants.acme.systems.app.checks]]
type = "command"
command = ["grep", "-qx", "1", "{{restore_dir}}/ledger/ledger.out"]
""",
    )
    site.backup()
    counter.write_text("2")
    site.backup()
    repo = site.repo()
    first, second = list_snapshots(repo)
    set_verdict(repo, second.id, "suspicious", reasons=["encrypted files"])
    latest = site.drill()
    assert latest.report.verdict == "fail" and latest.report.snapshots[0].guard_verdict == "suspicious"
    clean = site.drill(snapshot="last-clean")
    assert clean.report.verdict == "pass", clean.report.checks
    assert clean.report.snapshots[0].id == first.id and clean.report.selection == "last-clean"
    out = site.cli("--json", "drill", "acme/app", "--last-clean", "--config", str(site.path), ok=True)
    (line,) = [json.loads(x) for x in out.stdout.splitlines() if b'"drill_report"' in x]
    assert line["report"]["snapshots"][0]["id"] == first.id


def test_from_copy_mirror(tmp_path):
    from cermin.engine.mirror import MirrorOptions

    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()
    primary, mirror = site.repo(), site.repo("mirror")
    commands.mirror(primary, mirror, MirrorOptions())
    res = site.drill(copy="mirror")
    r = res.report
    assert r.verdict == "pass", (r.errors, r.checks)
    assert r.copy == "mirror" and r.repository == "mirror" and r.repository_id == mirror.config.id
    assert {s.id for s in r.snapshots} <= {ref.id for ref in list_snapshots(site.repo("mirror"))}
    assert len(drill_reports(site.repo("mirror"))) == 1 and drill_reports(site.repo()) == []
    # the command line: a snapshot id of the mirror names its system
    (ref,) = [x for x in list_snapshots(mirror) if "source=antrian" in x.snapshot.tags]
    out = site.cli("drill", ref.id[:10], "--from-copy", "mirror", "--config", str(site.path), ok=True)
    assert b"drill acme/app from the mirror copy (mirror): PASS" in out.stdout  # other sources' checks skipped
    assert f"restored antrian (sqlite) snapshot {ref.id[:8]}".encode() in out.stdout
    assert b"restored uploads" not in out.stdout


# ---- the agent's key -------------------------------------------------------------------------------------
def test_agent_keygen(tmp_path):
    key = tmp_path / "k" / "agent.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    r = subprocess.run(
        [*cermin_exe(), "--json", "agent", "keygen", "--key-file", str(key)], capture_output=True, env=env
    )
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stdout)
    assert line["fingerprint"] == load_key(str(key)).fingerprint
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and os.path.exists(str(key) + ".pub")
    r = subprocess.run([*cermin_exe(), "agent", "keygen", "--key-file", str(key)], capture_output=True, env=env)
    assert r.returncode == 1 and b"already exists" in r.stderr
    os.chmod(key, 0o644)
    with pytest.raises(AgentKeyError, match="chmod 600"):
        load_key(str(key))


def test_first_drill_makes_the_key(tmp_path):
    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()
    path = str(tmp_path / "fresh" / "agent.key")
    res = site.drill(signing_key=path)
    assert res.key_created == path and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert res.signed.key_fingerprint == load_key(path).fingerprint
    again = site.drill(signing_key=path)
    assert not again.key_created and again.signed.key_fingerprint == res.signed.key_fingerprint


def test_drills_in_parallel_threads_make_one_key(tmp_path):
    """The agent drills `parallel` systems at once: their first drills all find no key."""
    import threading

    from cermin.ops.agentkey import load_or_create_key

    path = str(tmp_path / "k" / "agent.key")
    barrier, got = threading.Barrier(4), []

    def drill_thread():
        barrier.wait()
        try:
            got.append(load_or_create_key(path)[0].fingerprint)
        except AgentKeyError as e:
            got.append(str(e))

    threads = [threading.Thread(target=drill_thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [load_key(path).fingerprint] * 4


def test_check_naming_an_unknown_source_fails(tmp_path):
    extra = '\n[[tenants.acme.systems.app.checks]]\ntype = "files"\nname = "typo"\nsource = "uplaods"\n'
    site = Site(tmp_path, _sqlite_system(tmp_path) + extra)
    site.backup()
    res = site.drill()
    typo = res.report.checks[-1]
    assert typo.name == "typo" and not typo.ok and not typo.skipped and "no uplaods source" in typo.detail
    assert res.report.verdict == "fail"


def test_an_unusable_agent_key_is_not_retried_by_the_agent(tmp_path):
    """A key readable by others is refused (AgentKeyError): no retry can fix that, so the agent tries once."""
    from test_agent import T0, Clock, agent_for, make_site

    cfg_path = make_site(tmp_path)
    key = generate_key(str(tmp_path / "work" / "agent.key"))
    os.chmod(key.path, 0o644)
    a = agent_for(cfg_path, Clock(T0))
    out = {(o.system, o.kind): o for o in a.tick()}
    drill = out[("arsip/share", "drill")]
    assert drill.status == "failed" and "chmod 600" in drill.message, drill.message
    (run,) = a.store.runs("arsip/share", kind="drill")
    assert run.status == "failed" and run.attempts == 1


# ---- children: bounded output, killed by process group ----------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its parent is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_dead(pid: int, seconds: float = 5.0) -> bool:
    import time

    end = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_hook_past_its_timeout_is_killed_with_its_helpers(tmp_path):
    import time

    from cermin.ops.sources import run_hooks

    pidfile = tmp_path / "helper.pid"
    hook = ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"]
    t = time.monotonic()
    errors = run_hooks([hook], 1.0, dict(os.environ), "pre")
    assert time.monotonic() - t < 30
    assert errors == ["pre hook sh: still running after 1s: stopped"]
    assert _wait_dead(int(pidfile.read_text())), "the hook's background helper outlived its timeout"


def test_a_hooks_output_is_kept_only_as_a_tail(tmp_path):
    """A hook printing hundreds of MiB is read as a stream: memory does not grow with it."""
    import resource

    from cermin.ops.sources import run_hooks

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    hook = ["sh", "-c", "head -c 400000000 /dev/zero; echo; echo the last words >&2; exit 3"]
    errors = run_hooks([hook], 120.0, dict(os.environ), "post")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert errors == ["post hook sh: exit code 3: the last words"]
    assert grown < 100 * 1024, f"the peak memory grew by {grown // 1024} MiB"


# ---- sandboxes never outlive their drill -------------------------------------------------------------------
def test_sigterm_during_a_slow_check_leaves_no_sandbox(tmp_path):
    import signal
    import time

    started, pidfile = tmp_path / "started", tmp_path / "check.pid"
    slow = f"""
[[tenants.acme.systems.app.checks]]
type = "command"
name = "slow"
command = ["sh", "-c", "echo $$ > {pidfile}; touch {started}; exec sleep 300"]
"""
    site = Site(tmp_path, _sqlite_system(tmp_path) + slow)
    site.backup()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    env["CERMIN_CACHE_DIR"] = str(tmp_path / "cli-cache")
    proc = subprocess.Popen(
        [*cermin_exe(), "drill", "acme/app", "--config", str(site.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        end = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        assert started.exists(), proc.communicate(timeout=30)
        (sandbox,) = os.listdir(site.work / "drills")
        assert os.path.exists(site.work / "drills" / sandbox / "antrian" / "antrian.sqlite")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, (out, err)
    assert b"terminated" in err and b"Traceback" not in err
    assert os.listdir(site.work / "drills") == [], "the restored data was left behind"
    assert _wait_dead(int(pidfile.read_text())), "the check outlived the drill"


def test_an_unexpected_error_leaves_no_sandbox(tmp_path, monkeypatch):
    from cermin.ops import drill

    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()

    def broken(*args, **kw):
        assert len(os.listdir(site.work / "drills")) == 1  # restored by now
        raise RuntimeError("a bug")

    monkeypatch.setattr(drill, "run_check", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        site.drill()
    assert os.listdir(site.work / "drills") == []


def test_the_next_drill_sweeps_what_dead_drills_left(tmp_path):
    from cermin.ops.drill import SANDBOX_MARKER, make_sandbox

    site = Site(tmp_path, _sqlite_system(tmp_path))
    site.backup()
    kept = site.drill(keep=True).sandbox  # asked for: never swept (it has no marker)
    assert not os.path.exists(os.path.join(kept, SANDBOX_MARKER))
    dead = make_sandbox(str(site.work), site.system)  # a drill killed outright: its lock went with it
    os.mkdir(os.path.join(dead.path, "antrian"))
    (site.work / "drills" / "x" / "y").mkdir(parents=True)  # not cermin's
    live = make_sandbox(str(site.work), site.system)  # another drill, running (a thread of this process)
    os.close(dead.fd)
    res = site.drill()
    assert res.report.verdict == "pass" and res.swept == [dead.path]
    assert any("removed 1 sandbox(es)" in line.text for line in res.to_text())
    assert sorted(os.listdir(site.work / "drills")) == sorted(os.path.basename(p) for p in (kept, live.path, "x"))
    live.release()
    assert sorted(os.listdir(site.work / "drills")) == sorted(os.path.basename(p) for p in (kept, "x"))


def test_a_command_check_leaves_no_process_behind(tmp_path):
    slow, quick = tmp_path / "slow.pid", tmp_path / "quick.pid"
    checks = f"""
[[tenants.acme.systems.app.checks]]
type = "command"
name = "slow"
timeout = "1s"
command = ["sh", "-c", "sleep 300 & echo $! > {slow}; wait"]

[[tenants.acme.systems.app.checks]]
type = "command"
name = "quick"
command = ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $! > {quick}"]
"""
    site = Site(tmp_path, _sqlite_system(tmp_path) + checks)
    site.backup()
    res = site.drill()
    by_name = {c.name: c for c in res.report.checks}
    assert by_name["slow"].detail == "sh: still running after 1s: stopped" and by_name["quick"].ok
    assert _wait_dead(int(slow.read_text())), "a timed-out check's helper survived"
    assert _wait_dead(int(quick.read_text())), "a check's background helper survived the check"


def test_psql_output_is_kept_only_as_a_tail(tmp_path, postgres):
    """A dump that makes the server send 300 MB of notices, then fails: the tail, not the whole stream."""
    import resource

    db = make_pg_database(postgres, "noisy")
    site = Site(tmp_path, pg_system(postgres, db, "SELECT 1"))
    noisy = (
        b"DO $$BEGIN FOR i IN 1..150000 LOOP RAISE NOTICE '%', repeat('x', 2000); END LOOP; END$$;\n"
        b"SELECT 1/0 AS the_last_words;\n"
    )
    plant_dump(site, noisy, "noisy")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = site.drill()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    (chk,) = res.report.checks
    assert not chk.ok and "division by zero" in chk.detail, chk.detail
    assert grown < 100 * 1024, f"the peak memory grew by {grown // 1024} MiB"
    assert not scratch_databases(postgres)
