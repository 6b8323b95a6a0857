"""Backup sources of the agent (ops/sources.py) against real PostgreSQL, SQLite and processes."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import threading

import msgspec
import pytest
from conftest import FAST_KDF, PASSWORD

from cermin.backend.local import LocalBackend
from cermin.ops import commands
from cermin.ops.config import parse_config
from cermin.ops.repos import open_config_repo, read_env_file
from cermin.ops.sources import SourceError, backup_source, backup_system, sqlite_copy
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots


def make_config(tmp_path, sources: str, extra: str = "", system_extra: str = ""):
    pw = tmp_path / "repo.pw"
    pw.write_text(PASSWORD + "\n")
    text = f"""
[repositories.main]
url = "{tmp_path / "repo"}"
password_file = "{pw}"

[tenants.acme.systems.app]
class = "rendah"
primary = "main"
{system_extra}
{sources}
{extra}
"""
    return parse_config(text.encode(), str(tmp_path / "cermin.toml"), environ={})


def snapshot_file(repo, ref) -> bytes:
    out = io.BytesIO()
    commands.dump(repo, ref.id, "/" + os.fsdecode(ref.snapshot.paths[0]), out)
    return out.getvalue()


@pytest.fixture
def repo(tmp_path, own_cache):
    return Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)


# ---- PostgreSQL --------------------------------------------------------------------------------
def pg_source(pg, database: str, **more) -> str:
    lines = [
        "[[tenants.acme.systems.app.sources]]",
        'type = "postgres"',
        f'host = "{pg.host}"',
        f"port = {pg.port}",
        f'user = "{pg.user}"',
        f'database = "{database}"',
    ]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in more.items()]
    return "\n".join(lines)


def test_pg_dump_source_streams_into_a_stdin_snapshot(tmp_path, repo, postgres):
    db = postgres.new_database("src_orders")
    postgres.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, item text);"
        "INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 500) g;",
        db,
    )
    cfg = make_config(tmp_path, pg_source(postgres, db))
    system = cfg.systems[0]
    summary = backup_source(repo, system, system.sources[0])
    assert summary.snapshot_id and not summary.incomplete
    (ref,) = list_snapshots(repo)
    assert ref.snapshot.paths == [b"src_orders.sql"]
    assert ref.snapshot.hostname == "acme.app"
    assert sorted(ref.snapshot.tags) == ["source=src_orders", "system=acme/app"]
    dump = snapshot_file(repo, ref)
    assert b"CREATE TABLE public.orders" in dump
    assert b"\n500\titem 500\n" in dump


def test_failing_pg_dump_commits_no_snapshot(tmp_path, repo, postgres):
    cfg = make_config(tmp_path, pg_source(postgres, "no_such_database"))
    system = cfg.systems[0]
    with pytest.raises(SourceError) as e:
        backup_source(repo, system, system.sources[0])
    msg = str(e.value)
    assert "\n" not in msg
    assert "pg_dump: exit code 1" in msg and 'database "no_such_database" does not exist' in msg
    assert list_snapshots(repo) == []
    # the whole-system run reports it and goes on
    result = backup_system(repo, system)
    assert not result.ok and result.exit_code != 0
    assert result.errors == [result.sources[0].error]
    assert list_snapshots(repo) == []


def fake_pg_bin(tmp_path, body: str) -> str:
    """A stand-in pg_dump (fault injection: what a real one cannot be made to do on demand)."""
    d = tmp_path / "fakepg"
    d.mkdir()
    exe = d / "pg_dump"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return str(d)


def test_pg_password_goes_in_the_environment_never_argv(tmp_path, repo):
    secret = tmp_path / "db.pw"
    secret.write_text("s3cr3t-pw\n")
    bindir = fake_pg_bin(
        tmp_path,
        f'echo "$@" > {tmp_path}/argv\necho "$PGPASSWORD" > {tmp_path}/pgpassword\necho "-- dump of $*"\n',
    )
    cfg = make_config(tmp_path, pg_source_raw(database="shop", password_file=str(secret)))
    system = cfg.systems[0]
    backup_source(repo, system, system.sources[0], environ={**os.environ, "CERMIN_PG_BIN": bindir})
    argv = (tmp_path / "argv").read_text()
    assert "s3cr3t" not in argv
    assert argv.split() == ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-w", "-d", "shop"]
    assert (tmp_path / "pgpassword").read_text().strip() == "s3cr3t-pw"


def pg_source_raw(**kv) -> str:
    body = "\n".join(f'{k} = "{v}"' for k, v in kv.items())
    return f'[[tenants.acme.systems.app.sources]]\ntype = "postgres"\n{body}'


def test_killed_producer_commits_no_snapshot_and_secrets_are_blanked(tmp_path, repo):
    secret = tmp_path / "db.pw"
    secret.write_text("hunter2\n")
    # writes part of a dump, says something that includes the password, then dies of SIGKILL
    bindir = fake_pg_bin(
        tmp_path, 'head -c 3000000 /dev/zero | tr "\\0" x\necho "connecting with $PGPASSWORD" >&2\nkill -9 $$\n'
    )
    cfg = make_config(tmp_path, pg_source_raw(database="shop", password_file=str(secret)))
    system = cfg.systems[0]
    with pytest.raises(SourceError, match="killed by SIGKILL") as e:
        backup_source(repo, system, system.sources[0], environ={**os.environ, "CERMIN_PG_BIN": bindir})
    assert "hunter2" not in str(e.value) and "connecting with ***" in str(e.value)
    assert list_snapshots(repo) == []


# ---- command ----------------------------------------------------------------------------------
def command_source(argv: list[str], **more) -> str:
    body = "\n".join(f'{k} = "{v}"' for k, v in more.items())
    args = ", ".join(f'"{a}"' for a in argv)
    return f'[[tenants.acme.systems.app.sources]]\ntype = "command"\ncommand = [{args}]\n{body}'


def test_command_source(tmp_path, repo):
    cfg = make_config(tmp_path, command_source(["sh", "-c", "seq 1 20000"], name="numbers", filename="n.txt"))
    system = cfg.systems[0]
    backup_source(repo, system, system.sources[0])
    (ref,) = list_snapshots(repo)
    assert ref.snapshot.paths == [b"n.txt"]
    assert snapshot_file(repo, ref) == "".join(f"{i}\n" for i in range(1, 20001)).encode()
    assert "source=numbers" in ref.snapshot.tags


def test_failing_command_and_timeout_commit_nothing(tmp_path, repo):
    cfg = make_config(
        tmp_path,
        command_source(["sh", "-c", "echo some output; echo first >&2; echo it broke >&2; exit 3"], name="a")
        + "\n"
        + command_source(["sh", "-c", "echo start; sleep 30"], name="slow", timeout="1s"),
    )
    system = cfg.systems[0]
    with pytest.raises(SourceError, match=r"exit code 3: first \| it broke$"):
        backup_source(repo, system, system.sources[0])
    with pytest.raises(SourceError, match="still running after 1s: stopped"):
        backup_source(repo, system, system.sources[1])
    assert list_snapshots(repo) == []


def test_command_source_default_filename(tmp_path, repo):
    cfg = make_config(tmp_path, command_source(["echo", "hi"]))
    system = cfg.systems[0]
    backup_source(repo, system, system.sources[0])
    (ref,) = list_snapshots(repo)
    assert ref.snapshot.paths == [b"command.out"]


# ---- SQLite -----------------------------------------------------------------------------------
def test_sqlite_source_is_consistent_while_the_application_writes(tmp_path, repo):
    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INT);"
        "CREATE TABLE lines (order_id INT, amount INT);"
        "PRAGMA journal_mode=WAL;"
    )
    con.close()
    stop = threading.Event()
    written = [0]

    def writer():
        w = sqlite3.connect(db, timeout=30)
        n = 0
        while not stop.is_set():
            n += 1
            with w:  # one transaction: an order and its two lines, totals agree
                w.execute("INSERT INTO orders VALUES (?, ?)", (n, 30))
                w.executemany("INSERT INTO lines VALUES (?, ?)", [(n, 10), (n, 20)])
            written[0] = n
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while written[0] < 200:
            pass
        cfg = make_config(tmp_path, f'[[tenants.acme.systems.app.sources]]\ntype = "sqlite"\npath = "{db}"')
        system = cfg.systems[0]
        for _ in range(3):
            backup_source(repo, system, system.sources[0], tmpdir=str(tmp_path))
    finally:
        stop.set()
        t.join()
    refs = list_snapshots(repo)
    assert len(refs) == 3 and all(r.snapshot.paths == [b"app.sqlite"] for r in refs)
    for ref in refs:
        copy = tmp_path / f"restored-{ref.id[:8]}.sqlite"
        copy.write_bytes(snapshot_file(repo, ref))
        c = sqlite3.connect(f"file:{copy}?mode=ro&immutable=1", uri=True)
        assert c.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        orders, total = c.execute("SELECT count(*), coalesce(sum(total), 0) FROM orders").fetchone()
        lines, amount = c.execute("SELECT count(*), coalesce(sum(amount), 0) FROM lines").fetchone()
        assert orders > 0 and lines == 2 * orders and total == amount
        c.close()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("cermin-sqlite-")]  # temp copies removed


def test_sqlite_copy_is_private_and_removed(tmp_path):
    db = tmp_path / "x.db"
    sqlite3.connect(db).executescript("CREATE TABLE t (a); INSERT INTO t VALUES (1);")
    with sqlite_copy(str(db), tmpdir=str(tmp_path)) as f:
        d = os.path.dirname(f.name)
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert f.read(16) == b"SQLite format 3\0"
    assert not os.path.exists(d)
    with pytest.raises(SourceError, match="is not a file"):
        with sqlite_copy(str(tmp_path / "missing.db")):
            pass


# ---- paths, hooks -----------------------------------------------------------------------------
def test_paths_source_with_excludes_and_hooks(tmp_path, repo):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("keep")
    (data / "skip.tmp").write_text("skip")
    log = tmp_path / "hooks.log"
    hook = ["sh", "-c", f'echo "$CERMIN_PHASE $CERMIN_SYSTEM ${{CERMIN_RESULT:-}}" >> {log}']
    hooks = "[tenants.acme.systems.app.hooks]\n" + f"pre = [{_toml_list(hook)}]\npost = [{_toml_list(hook)}]\n"
    cfg = make_config(
        tmp_path,
        f'[[tenants.acme.systems.app.sources]]\ntype = "paths"\npaths = ["{data}"]\nexclude = ["*.tmp"]',
        extra=hooks,
    )
    result = backup_system(repo, cfg.systems[0])
    assert result.ok, result.errors
    (ref,) = list_snapshots(repo)
    assert ref.snapshot.paths == [os.fsencode(data)] and "source=paths" in ref.snapshot.tags
    out = io.BytesIO()
    commands.dump(repo, ref.id, str(data / "keep.txt"), out)
    assert out.getvalue() == b"keep"
    with pytest.raises(Exception, match="not found|no such|does not exist"):
        commands.dump(repo, ref.id, str(data / "skip.tmp"), io.BytesIO())
    assert [ln.strip() for ln in log.read_text().splitlines()] == ["pre acme/app", "post acme/app ok"]


def _toml_list(argv: list[str]) -> str:
    import json

    return json.dumps(argv)


def test_failing_pre_hook_skips_sources_post_hook_still_runs(tmp_path, repo):
    log = tmp_path / "hooks.log"
    post = ["sh", "-c", f'echo "post $CERMIN_RESULT" >> {log}']
    hooks = (
        "[tenants.acme.systems.app.hooks]\n"
        + f'pre = [["sh", "-c", "echo not ready >&2; exit 7"]]\npost = [{_toml_list(post)}]\n'
    )
    cfg = make_config(tmp_path, command_source(["echo", "x"]), extra=hooks)
    result = backup_system(repo, cfg.systems[0])
    assert not result.ok and result.sources == []
    assert result.hook_errors == ["pre hook sh: exit code 7: not ready"]
    assert log.read_text() == "post failed\n"
    assert list_snapshots(repo) == []


@pytest.mark.parametrize("fault", ["oserror", "bug"])
def test_a_source_failing_unexpectedly_is_its_error_post_hooks_run(tmp_path, repo, monkeypatch, fault):
    import errno
    import json
    import tempfile

    from cermin.ops import sources

    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("f")
    db = tmp_path / "app.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    log = tmp_path / "hooks.log"
    hook = ["sh", "-c", f'echo "$CERMIN_PHASE ${{CERMIN_RESULT:-}}" >> {log}']
    hooks = "[tenants.acme.systems.app.hooks]\n" + f"pre = [{_toml_list(hook)}]\npost = [{_toml_list(hook)}]\n"
    srcs = "\n".join(
        [
            command_source(["echo", "x"]),
            f'[[tenants.acme.systems.app.sources]]\ntype = "sqlite"\npath = "{db}"',
            f'[[tenants.acme.systems.app.sources]]\ntype = "paths"\npaths = [{json.dumps(str(data))}]',
        ]
    )
    cfg = make_config(tmp_path, srcs, extra=hooks)
    real_mkdtemp = tempfile.mkdtemp

    def full_workdir(*a, **kw):
        if kw.get("prefix") == "cermin-sqlite-":
            if fault == "bug":
                raise RuntimeError("unexpected\nsecond line")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "work" / "tmp"))
        return real_mkdtemp(*a, **kw)

    monkeypatch.setattr(sources.tempfile, "mkdtemp", full_workdir)
    result = backup_system(repo, cfg.systems[0], tmpdir=str(tmp_path))
    assert not result.ok and not result.hook_errors
    assert [r.ok for r in result.sources] == [True, False, True]
    (err,) = result.errors
    assert err.startswith("source app of acme/app: ") and "\n" not in err
    assert ("No space left on device" if fault == "oserror" else "RuntimeError: unexpected second line") in err
    assert [ln.strip() for ln in log.read_text().splitlines()] == ["pre", "post failed"]
    tags = sorted(t for ref in list_snapshots(repo) for t in ref.snapshot.tags if t.startswith("source="))
    assert tags == ["source=command", "source=paths"]  # one snapshot per good source


def test_post_hooks_run_when_the_run_is_interrupted(tmp_path, repo, monkeypatch):
    from cermin.ops import sources

    log = tmp_path / "hooks.log"
    hook = ["sh", "-c", f'echo "$CERMIN_PHASE ${{CERMIN_RESULT:-}}" >> {log}']
    hooks = "[tenants.acme.systems.app.hooks]\n" + f"pre = [{_toml_list(hook)}]\npost = [{_toml_list(hook)}]\n"
    cfg = make_config(tmp_path, command_source(["echo", "x"]), extra=hooks)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(sources, "backup_source", interrupted)
    with pytest.raises(KeyboardInterrupt):
        backup_system(repo, cfg.systems[0])
    assert [ln.strip() for ln in log.read_text().splitlines()] == ["pre", "post failed"]


# ---- repositories from the configuration --------------------------------------------------------
def test_open_config_repo(tmp_path, repo):
    cfg = make_config(tmp_path, command_source(["echo", "x"]))
    r = open_config_repo(cfg, "main")
    assert r.config.id == repo.config.id
    with pytest.raises(Exception, match="no repository named 'nope'"):
        open_config_repo(cfg, "nope")


def test_env_file(tmp_path):
    f = tmp_path / "s3.env"
    f.write_text("# creds\nexport AWS_ACCESS_KEY_ID=abc\nAWS_SECRET_ACCESS_KEY = 'x=y'\n\n")
    assert read_env_file(str(f)) == {"AWS_ACCESS_KEY_ID": "abc", "AWS_SECRET_ACCESS_KEY": "x=y"}
    f.write_text("AWS_ACCESS_KEY_ID=abc\nthis line holds a secret\n")
    with pytest.raises(Exception, match=r"s3.env:2: not a KEY=VALUE line$"):
        read_env_file(str(f))


def test_env_file_gives_backends_their_credentials(tmp_path, monkeypatch):
    from cermin.ops.repos import config_backend

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "CERMIN_TOKEN"):
        monkeypatch.setenv(k, "")  # recorded, so what config_backend sets is undone after the test
        monkeypatch.delenv(k)
    cfg = make_config(tmp_path, command_source(["echo", "x"]))
    entry = cfg.repositories["main"]
    token = tmp_path / "http.env"
    token.write_text("CERMIN_TOKEN=tok-123\n")
    http = config_backend(msgspec.structs.replace(entry, url="http://127.0.0.1:9/t", env_file=str(token)), "h")
    assert http.inner.token == "tok-123"
    a, b = tmp_path / "a.env", tmp_path / "b.env"
    a.write_text("AWS_ACCESS_KEY_ID=key-a\nAWS_SECRET_ACCESS_KEY=secret-a\n")
    b.write_text("AWS_ACCESS_KEY_ID=key-b\nAWS_SECRET_ACCESS_KEY=secret-b\n")
    s3 = msgspec.structs.replace(entry, url="s3:http://127.0.0.1:9/bucket/a", env_file=str(a))
    first = config_backend(s3, "a")  # no request yet: the driver only takes the credentials
    second = config_backend(msgspec.structs.replace(s3, env_file=str(b)), "b")  # a different one: fine
    assert first.inner._creds.access_key_id == "key-a" and second.inner._creds.access_key_id == "key-b"
    assert "AWS_ACCESS_KEY_ID" not in os.environ and "AWS_SECRET_ACCESS_KEY" not in os.environ  # not the process's
