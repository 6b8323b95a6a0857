"""server/ (`cermin serve` end to end) against a stolen or careless credential: lock ownership, read tokens
holding their own locks, approvals that show what they approve, size limits, quotas, audit bounds, file
modes and the token store. Every test talks to a real server process on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import subprocess
import time
import uuid

import pytest
import urllib3
from conftest import ServeProcess, cermin_exe
from helpers import assert_same_tree, make_source
from test_server import audit_lines, http_cli, jl

from cermin.format.crypto import file_id


class Serve(ServeProcess):
    """ServeProcess with extra `cermin serve` options."""

    def __init__(self, root: str, *extra: str) -> None:
        super().__init__(root, 3600, *extra)


@pytest.fixture
def small(tmp_path):
    srv = Serve(str(tmp_path / "root"), "--max-object-size", "1MiB", "--max-locks", "3")
    yield srv
    srv.stop()


def _post(http, url, tok, body):
    return http.request("POST", f"{url}/{file_id(body)}", body=body, headers={"Authorization": f"Bearer {tok}"})


# ---- 1. locks belong to who made them ------------------------------------------------------------
def test_a_token_removes_only_its_own_locks(served):
    name = f"lk-{uuid.uuid4().hex[:8]}"
    b1, b2, admin = (served.token(name, r) for r in ("backup", "backup", "admin"))
    http_cli(served, name, admin)("init")
    http = urllib3.PoolManager()
    base = f"{served.url(name)}/locks"
    prune_lock, backup_lock = os.urandom(64), os.urandom(64)
    assert _post(http, base, admin, prune_lock).status == 201  # a running prune's lock
    assert _post(http, base, b1, backup_lock).status == 201  # a running backup's lock
    before = len(audit_lines(served))
    for lock in (prune_lock, backup_lock):
        r = http.request("DELETE", f"{base}/{file_id(lock)}", headers={"Authorization": f"Bearer {b2}"})
        assert r.status == 403, "a backup token cannot remove another token's lock"
    names = {n for n, _ in json.loads(http.request("GET", f"{base}/", headers={"Authorization": f"Bearer {b2}"}).data)}
    assert {file_id(prune_lock), file_id(backup_lock)} <= names
    assert (
        http.request("DELETE", f"{base}/{file_id(backup_lock)}", headers={"Authorization": f"Bearer {b1}"}).status
        == 204
    )
    assert (
        http.request("DELETE", f"{base}/{file_id(prune_lock)}", headers={"Authorization": f"Bearer {admin}"}).status
        == 204
    )
    log = audit_lines(served)[before:]
    assert [a["status"] for a in log] == [403, 403, 204, 204], log
    assert "removed by its owner" in log[2]["reason"] and "removed by its owner" in log[3]["reason"]


def test_read_token_checks_and_restores_with_its_own_locks(served, tmp_path):
    name = f"rd-{uuid.uuid4().hex[:8]}"
    backup = http_cli(served, name, served.token(name, "backup"))
    backup("init")
    src = tmp_path / "src"
    make_source(src, files=4)
    backup("backup", str(src))
    reader = http_cli(served, name, served.token(name, "read"))
    assert jl(reader("--json", "check", "--read-data"))[-1]["ok"] is True  # no --no-lock needed
    out = tmp_path / "out"
    reader("restore", "latest", "--target", str(out), "--verify")
    assert_same_tree(src, out / str(src).lstrip("/"))
    http = urllib3.PoolManager()
    assert (
        http.request(
            "GET", f"{served.url(name)}/locks/", headers={"Authorization": f"Bearer {reader.env['CERMIN_TOKEN']}"}
        ).data
        == b"[]"
    )
    # still read-only for everything else, and no power over others' locks
    assert _post(http, f"{served.url(name)}/data", reader.env["CERMIN_TOKEN"], b"x" * 100).status == 403
    blocker = os.urandom(32)
    assert _post(http, f"{served.url(name)}/locks", backup.env["CERMIN_TOKEN"], blocker).status == 201
    r = http.request(
        "DELETE",
        f"{served.url(name)}/locks/{file_id(blocker)}",
        headers={"Authorization": f"Bearer {reader.env['CERMIN_TOKEN']}"},
    )
    assert r.status == 403


def test_lock_files_per_tenant_are_bounded(small):
    name = "locks"
    tok = small.token(name, "backup")
    http = urllib3.PoolManager()
    codes = [_post(http, f"{small.url(name)}/locks", tok, os.urandom(40)).status for _ in range(5)]
    assert codes == [201, 201, 201, 429, 429]


# ---- 3. approvals show what they approve ------------------------------------------------------------
def test_revoked_admins_requests_die_and_there_is_no_approve_all(served, tmp_path):
    name = f"ap-{uuid.uuid4().hex[:8]}"
    honest = http_cli(served, name, served.token(name, "admin"))
    stolen_tok = served.token(name, "admin")
    stolen = http_cli(served, name, stolen_tok)
    honest("init")
    (tmp_path / "s").mkdir()
    honest("backup", str(tmp_path / "s"))
    snap = jl(honest("--json", "snapshots"))[-1]["snapshots"][0]["id"]
    evil = jl(stolen("--json", "approvals", "delete-tenant"))[0]["id"]
    routine = [
        x for x in jl(honest("--json", "forget", snap[:8], ok=False)) if x["message_type"] == "approval_required"
    ]
    text = stolen("approvals", "list").stdout.decode()
    assert "DELETE THE WHOLE TENANT REPOSITORY" in text and "delete 1 snapshots" in text
    r = stolen("approvals", "approve", "all", ok=False)
    assert r.returncode == 2 and b"one at a time" in r.stderr
    # the stolen admin token is revoked: its pending request dies with it
    tid = stolen_tok.split("_")[1]
    subprocess.run(
        [*cermin_exe(), "serve", "--root", served.root, "token", "revoke", tid], check=True, capture_output=True
    )
    approver = http_cli(served, name, served.token(name, "admin"))
    r = approver("approvals", "approve", evil, ok=False)
    assert r.returncode == 1 and b"revoked" in r.stderr
    assert os.path.isdir(os.path.join(served.root, name))
    listed = {x["id"]: x for x in jl(approver("--json", "approvals", "list"))}
    assert listed[evil]["status"] == "revoked" and listed[routine[0]["id"]]["status"] == "pending"
    approver("approvals", "approve", routine[0]["id"])
    assert jl(approver("--json", "snapshots"))[-1]["snapshots"] == []


# ---- 4. server limits ----------------------------------------------------------------------------------
def _raw(port: int, head: bytes, body_chunks=(), timeout=10.0) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(head)
        for c in body_chunks:
            try:
                s.sendall(c)
            except OSError:
                break
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


def test_oversized_bodies_are_refused_before_they_are_read(small):
    name = "big"
    tok = small.token(name, "backup")
    obj = "ab" * 32
    # 10 GiB announced, nothing sent: the answer comes at once, nothing is read
    head = (
        f"POST /{name}/data/{obj} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
        f"Content-Length: {10 << 30}\r\n\r\n"
    ).encode()
    t = time.monotonic()
    assert _raw(small.port, head).startswith(b"HTTP/1.1 413")
    assert time.monotonic() - t < 5
    # chunked: no length to check first; refused once it passes the limit
    head = (
        f"POST /{name}/data/{obj} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = os.urandom(256 << 10)
    chunks = [b"%x\r\n" % len(piece) + piece + b"\r\n"] * 8  # 2 MiB > 1 MiB
    assert _raw(small.port, head, chunks).startswith(b"HTTP/1.1 413")
    leftovers = [f for _, _, fs in os.walk(os.path.join(small.root, name)) for f in fs if f.startswith(".tmp")]
    assert leftovers == []
    # a legal object still works, streamed and verified
    body = os.urandom(900 << 10)
    http = urllib3.PoolManager()
    assert _post(http, f"{small.url(name)}/data", tok, body).status == 201
    assert (
        http.request("GET", f"{small.url(name)}/data/{file_id(body)}", headers={"Authorization": f"Bearer {tok}"}).data
        == body
    )


def _vmhwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_large_upload_is_streamed_not_held_in_memory(tmp_path):
    srv = Serve(str(tmp_path / "root"))
    try:
        tok = srv.token("mem", "backup")
        http = urllib3.PoolManager()
        assert _post(http, f"{srv.url('mem')}/data", tok, b"warm-up").status == 201
        before = _vmhwm(srv.proc.pid)
        body = os.urandom(120 << 20)
        assert _post(http, f"{srv.url('mem')}/data", tok, body).status == 201
        grew = _vmhwm(srv.proc.pid) - before
        print(f"server peak RSS {before >> 20} MiB before, +{grew >> 20} MiB for a 120 MiB upload")
        assert grew < 40 << 20, f"peak RSS grew {grew >> 20} MiB for a 120 MiB upload"
    finally:
        srv.stop()


def test_tenant_quotas(tmp_path):
    srv = Serve(str(tmp_path / "root"), "--quota-bytes", "300KiB")
    try:
        tok = srv.token("q", "backup")
        http = urllib3.PoolManager()
        assert _post(http, f"{srv.url('q')}/data", tok, os.urandom(200 << 10)).status == 201
        assert _post(http, f"{srv.url('q')}/data", tok, os.urandom(200 << 10)).status == 507
        cli = http_cli(srv, "q", tok)
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_bytes(os.urandom(400 << 10))
        cli("init")
        t = time.monotonic()
        r = cli("backup", str(src), ok=False)
        assert r.returncode == 1 and b"quota" in r.stderr and b"Traceback" not in r.stderr
        assert time.monotonic() - t < 30, "over quota is permanent: not retried for a minute and a half"
    finally:
        srv.stop()
    srv = Serve(str(tmp_path / "root2"), "--quota-objects", "2")
    try:
        tok = srv.token("q", "backup")
        http = urllib3.PoolManager()
        codes = [_post(http, f"{srv.url('q')}/index", tok, os.urandom(50)).status for _ in range(3)]
        assert codes == [201, 201, 507]
    finally:
        srv.stop()
    # A tenant exactly at its quota: read-only work goes on without a lock (even a lock file no
    # longer fits); writes stop at once with one line.
    srv = Serve(str(tmp_path / "root3"), "--quota-objects", "2")
    try:
        cli = http_cli(srv, "q", srv.token("q", "backup"))
        cli("init")  # config and one key slot: the quota is reached
        r = cli("check")
        assert b"without a lock" in r.stderr and b"quota" in r.stderr, r.stderr
        t = time.monotonic()
        r = cli("backup", str(src), ok=False)
        assert r.returncode == 1 and b"quota" in r.stderr and time.monotonic() - t < 30, r.stderr
    finally:
        srv.stop()


def test_unauthenticated_requests_add_little_to_the_audit_log(served):
    http = urllib3.PoolManager()
    before = len(audit_lines(served))
    long = "x" * 20_000
    for _ in range(200):
        http.request("GET", f"http://127.0.0.1:{served.port}/{long}/data/", headers={"Authorization": "Bearer cmn_a_b"})
    added = audit_lines(served)[before:]
    assert 1 <= len(added) <= 25
    assert all(len(json.dumps(a)) < 1000 for a in added)


def test_server_files_are_private(tmp_path):
    srv = Serve(str(tmp_path / "root"))
    try:
        cli = http_cli(srv, "p", srv.token("p", "backup"))
        cli("init")
        src = tmp_path / "src"
        make_source(src, files=3)
        cli("backup", str(src))
    finally:
        srv.stop()
    loose = []
    for d, dirs, files in os.walk(srv.root):
        for n in dirs + files:
            mode = os.lstat(os.path.join(d, n)).st_mode
            if stat.S_IMODE(mode) & 0o077:
                loose.append((os.path.join(d, n), oct(mode)))
    assert loose == []


def test_concurrent_token_add_loses_none(tmp_path):
    root = str(tmp_path / "root")
    procs = [
        subprocess.Popen(
            [*cermin_exe(), "serve", "--root", root, "token", "add", "--tenant", "t", "--role", "backup"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(10)
    ]
    tokens = [p.communicate()[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    r = subprocess.run(
        [*cermin_exe(), "--json", "serve", "--root", root, "token", "list"], capture_output=True, check=True
    )
    ids = {json.loads(x)["id"] for x in r.stdout.splitlines()}
    assert ids == {t.split("_")[1] for t in tokens}


def test_client_warns_about_tokens_over_plain_http_to_another_host():
    from cermin.backend.http import HttpBackend

    assert "plain http" in HttpBackend("http://192.0.2.1:9/t", token="x").warnings[0]
    assert not HttpBackend("http://127.0.0.1:9/t", token="x").warnings
    assert not HttpBackend("https://192.0.2.1:9/t", token="x").warnings


# ---- red-team review after issue 14: lock size and quota, audit bounds, config, Range ---------------
def test_a_refused_reupload_leaves_the_lock_with_its_owner(served):
    name = f"lo-{uuid.uuid4().hex[:8]}"
    victim, attacker = served.token(name, "backup"), served.token(name, "read")
    http = urllib3.PoolManager()
    base = f"{served.url(name)}/locks"
    lock = os.urandom(300)
    assert _post(http, base, victim, lock).status == 201
    h = {"Authorization": f"Bearer {attacker}"}
    copy = http.request("GET", f"{base}/{file_id(lock)}", headers=h).data  # clients read others' locks
    assert copy == lock
    assert _post(http, base, attacker, copy).status == 409
    assert http.request("DELETE", f"{base}/{file_id(lock)}", headers=h).status == 403
    before = len(audit_lines(served))
    r = http.request("DELETE", f"{base}/{file_id(lock)}", headers={"Authorization": f"Bearer {victim}"})
    assert r.status == 204
    log = audit_lines(served)[before:]
    assert log[-1]["token"] == victim.split("_")[1] and "removed by its owner" in log[-1]["reason"]


def test_lock_objects_are_small_and_count_against_the_quota(tmp_path):
    srv = Serve(str(tmp_path / "root"), "--quota-bytes", "100KiB")
    try:
        tok, reader = srv.token("q", "backup"), srv.token("q", "read")
        http = urllib3.PoolManager()
        base = srv.url("q")
        # a lock is a sealed record of a few hundred bytes: anything over 64 KiB is refused, announced
        # or streamed (chunked, no Content-Length)
        big = os.urandom((64 << 10) + 1)
        assert _post(http, f"{base}/locks", reader, big).status == 413
        r = http.request(
            "POST",
            f"{base}/locks/{file_id(big)}",
            body=iter([big[: 32 << 10], big[32 << 10 :]]),
            headers={"Authorization": f"Bearer {reader}"},
            chunked=True,
        )
        assert r.status == 413
        assert _post(http, f"{base}/data", tok, os.urandom(90 << 10)).status == 201
        assert _post(http, f"{base}/locks", reader, os.urandom(20 << 10)).status == 507  # 110 KiB > 100 KiB
        lock = os.urandom(5 << 10)
        assert _post(http, f"{base}/locks", reader, lock).status == 201  # 95 KiB
        assert _post(http, f"{base}/data", tok, os.urandom(8 << 10)).status == 507  # the lock takes its room
        h = {"Authorization": f"Bearer {reader}"}
        assert http.request("DELETE", f"{base}/locks/{file_id(lock)}", headers=h).status == 204
        assert _post(http, f"{base}/data", tok, os.urandom(8 << 10)).status == 201  # its room given back
    finally:
        srv.stop()
    # and after a restart, locks already on disk are counted too
    srv = Serve(str(tmp_path / "root"), "--quota-bytes", "100KiB")
    try:
        http = urllib3.PoolManager()
        tok = srv.token("q", "read")
        assert _post(http, f"{srv.url('q')}/locks", tok, os.urandom(4 << 10)).status == 507  # 98 + 4 > 100
        assert _post(http, f"{srv.url('q')}/locks", tok, os.urandom(1 << 10)).status == 201
    finally:
        srv.stop()


def test_an_authenticated_tokens_refusals_add_little_to_the_audit_log(served):
    name = f"au-{uuid.uuid4().hex[:8]}"
    noisy, other = served.token(name, "read"), served.token(name, "read")
    http = urllib3.PoolManager()
    base = served.url(name)
    before = len(audit_lines(served))
    h = {"Authorization": f"Bearer {noisy}"}
    for _ in range(100):
        assert http.request("GET", f"{base}/data/{'x' * 64}", headers=h).status == 400  # bad name
        assert http.request("DELETE", f"{base}/data/{'a' * 64}", headers=h).status == 403  # role may not
    added = audit_lines(served)[before:]
    assert 10 <= len(added) <= 40, len(added)
    assert all(a["token"] == noisy.split("_")[1] for a in added)
    # another token's refusal is still written
    r = http.request("DELETE", f"{base}/data/{'a' * 64}", headers={"Authorization": f"Bearer {other}"})
    assert r.status == 403
    assert audit_lines(served)[-1]["token"] == other.split("_")[1]


def test_config_cannot_be_deleted_on_any_path(served, tmp_path):
    from cermin.backend.base import Kind
    from cermin.server.app import Server
    from cermin.server.approvals import StaleRequest

    name = f"cf-{uuid.uuid4().hex[:8]}"
    admin = served.token(name, "admin")
    http_cli(served, name, admin)("init")
    http = urllib3.PoolManager()
    h = {"Authorization": f"Bearer {admin}"}
    base = served.url(name)
    for path in ("config/config", "config/" + "ab" * 32):
        assert http.request("DELETE", f"{base}/{path}", headers=h).status == 403
    r = http.request("POST", f"{base}/_delete", body=b'{"objects": [["config", "config"]]}', headers=h)
    assert r.status == 400
    assert json.loads(http.request("GET", f"{base}/_approvals", headers=h).data) == []
    assert http.request("GET", f"{base}/config/config", headers=h).status == 200
    # a request naming config queued by an older server is closed, not executed
    srv = Server(str(tmp_path / "root"))
    srv.backend("t").create()
    with open(srv.backend("t")._path(Kind.CONFIG, "config"), "wb") as f:
        f.write(b"config")
    req = srv.approvals.request("t", "delete", {"config": ["config"]}, "a")
    with pytest.raises(StaleRequest):
        srv._execute(srv.state("t"), "t", req)
    assert os.path.exists(os.path.join(srv.backend("t").root, "config"))


def test_absurd_ranges_are_answered_not_crashed(served):
    name = f"rg-{uuid.uuid4().hex[:8]}"
    tok = served.token(name, "backup")
    http = urllib3.PoolManager()
    body = os.urandom(1000)
    assert _post(http, f"{served.url(name)}/data", tok, body).status == 201
    url = f"{served.url(name)}/data/{file_id(body)}"
    auth = {"Authorization": f"Bearer {tok}"}
    huge = "9" * 5000
    r = http.request("GET", url, headers={**auth, "Range": f"bytes={huge}-"})
    assert r.status == 416 and r.headers["content-range"] == "bytes */1000"
    r = http.request("GET", url, headers={**auth, "Range": f"bytes={huge}-{huge}"})
    assert r.status == 416
    r = http.request("GET", url, headers={**auth, "Range": f"bytes=10-{huge}"})  # to the end
    assert r.status == 206 and r.data == body[10:]
    r = http.request("GET", url, headers={**auth, "Range": f"bytes=-{huge}"})  # the whole object
    assert r.status == 206 and r.data == body
    r = http.request("GET", url, headers={**auth, "Range": "bytes=" + "0" * 5000 + "5-9"})  # leading zeros
    assert r.status == 206 and r.data == body[5:10]
    r = http.request("GET", url, headers={**auth, "Range": "bytes=" + "1" * 100_000 + "-"})
    assert r.status in (400, 416, 431)


@contextlib.contextmanager
def _http_backend(do_get):
    """An HttpBackend against a plain loopback HTTP server whose GET handler is `do_get(handler)`:
    a server that misbehaves as a proxy or an attacker might."""
    import http.server
    import threading

    from cermin.backend.http import HttpBackend

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            do_get(self)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield HttpBackend(f"http://127.0.0.1:{srv.server_address[1]}/t", token="x")
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_server_ignoring_range_gets_the_range_cut_from_its_answer():
    """A proxy in front of the repository server may answer a ranged GET with 200 and the whole
    object: the client cuts the range itself instead of returning the whole object as the range."""
    from cermin.backend.base import Kind

    body = bytes(range(256)) * 40

    def whole(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    with _http_backend(whole) as b:
        assert b.load(Kind.DATA, "ab" * 32, 300, 20) == body[300:320]
        assert b.load(Kind.DATA, "ab" * 32, 10_000) == body[10_000:]
        assert b.load(Kind.DATA, "ab" * 32) == body


def test_a_server_answering_more_than_asked_is_refused_without_reading_it_all():
    """A hostile server answers a ranged GET with 206 and an endless body (or an error with one):
    the client reads at most what it asked for (plus one byte, to know), not until the server stops."""
    from cermin.backend.base import Kind
    from cermin.errors import CerminError

    sent = {"bytes": 0}

    def endless(h):
        h.send_response(206 if "Range" in h.headers else 500)
        h.end_headers()  # no Content-Length: the body runs until the connection closes
        try:
            for _ in range(4096):  # 256 MiB at most, if nobody stops reading
                h.wfile.write(b"x" * 65536)
                sent["bytes"] += 65536
        except OSError:
            pass

    with _http_backend(endless) as b:
        with pytest.raises(CerminError, match="more than the 100 bytes asked"):
            b.load(Kind.DATA, "ab" * 32, 0, 100)
        with pytest.raises(CerminError, match="500"):
            b.load(Kind.DATA, "ab" * 32)
    assert sent["bytes"] < 64 << 20, sent  # both answers were dropped early
