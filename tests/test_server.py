"""server/ (`cermin serve` end to end): attacks with a stolen backup token, the two-person rule, and a load
test, all against a real server process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import blake3
import pytest
import urllib3
from conftest import PASSWORD, Cli, ServeProcess, cermin_exe
from helpers import assert_same_tree, make_source


def jl(r):
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def http_cli(served, tenant, token) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    env["CERMIN_TOKEN"] = token
    return Cli(served.url(tenant), env)


@pytest.fixture
def tenant(served, tmp_path):
    name = f"t-{uuid.uuid4().hex[:8]}"
    backup_tok = served.token(name, "backup")
    cli = http_cli(served, name, backup_tok)
    cli("init")
    src = tmp_path / "src"
    make_source(src, files=6)
    cli("backup", str(src))
    return name, cli, src, backup_tok


def audit_lines(served) -> list[dict]:
    try:
        with open(os.path.join(served.root, ".cermin-server", "audit.log")) as f:
            return [json.loads(x) for x in f]
    except FileNotFoundError:
        return []


def test_backup_token_cannot_destroy_or_overwrite(served, tenant, tmp_path):
    name, cli, src, tok = tenant
    http = urllib3.PoolManager()
    auth = {"Authorization": f"Bearer {tok}"}
    base = served.url(name)
    objects = {}
    for kind in ("data", "index", "snapshots", "keys"):
        listing = json.loads(http.request("GET", f"{base}/{kind}/", headers=auth).data)
        assert listing, kind
        objects[kind] = listing[0][0]
    before = len(audit_lines(served))
    for kind, obj in objects.items():
        r = http.request("DELETE", f"{base}/{kind}/{obj}", headers=auth)
        assert r.status == 403, (kind, r.status)
        r = http.request("POST", f"{base}/{kind}/{obj}", body=b"ransom", headers=auth)
        assert r.status in (400, 409), (kind, r.status)  # wrong content for the name, or exists
    r = http.request("POST", f"{base}/config/config", body=b"{}", headers=auth)
    assert r.status == 409, "the config cannot be replaced"
    refused = audit_lines(served)[before:]
    assert len(refused) >= 8 and all(a["status"] in (400, 403, 409) for a in refused)
    assert all(tok not in json.dumps(a) for a in refused), "the audit log never holds a token"
    # a bogus snapshot with a valid name is stored (the server cannot read encrypted data) but it
    # hides nothing: check names it, every real snapshot restores
    from cermin.format.crypto import file_id

    bogus = os.urandom(200)
    assert http.request("POST", f"{base}/snapshots/{file_id(bogus)}", body=bogus, headers=auth).status == 201
    report = jl(cli("--json", "check", "--read-data", ok=False))
    planted = [x for x in report if x["message_type"] == "notice" and x["kind"] == "foreign_object"]
    assert [x["object"] for x in planted] == [f"snapshots/{file_id(bogus)}"]
    listing = jl(cli("--json", "snapshots"))
    assert listing[0]["message_type"] == "warning" and file_id(bogus)[:8] in listing[0]["message"]
    snaps = listing[-1]["snapshots"]
    assert len(snaps) == 1
    out = tmp_path / "out"
    cli("restore", snaps[0]["id"], "--target", str(out), "--verify")
    assert_same_tree(src, out / str(src).lstrip("/"))


def test_tokens_stay_in_their_tenant_and_role(served, tenant):
    name, cli, src, tok = tenant
    other = f"t-{uuid.uuid4().hex[:8]}"
    other_admin = served.token(other, "admin")
    http = urllib3.PoolManager()
    assert (
        http.request("GET", f"{served.url(name)}/snapshots/", headers={"Authorization": f"Bearer {other_admin}"}).status
        == 403
    )
    assert (
        http.request("GET", f"{served.url(name)}/snapshots/", headers={"Authorization": "Bearer cmn_x_y"}).status == 401
    )
    assert http.request("GET", f"{served.url(name)}/snapshots/").status == 401
    reader = http_cli(served, name, served.token(name, "read"))
    assert len(jl(reader("--json", "snapshots"))[0]["snapshots"]) == 1
    r = reader("backup", str(src), ok=False)
    assert r.returncode == 1 and b"refused" in r.stderr and b"Traceback" not in r.stderr
    r = http_cli(served, name, "cmn_bad_token")("snapshots", ok=False)
    assert r.returncode == 1 and b"token" in r.stderr


def test_two_person_rule(served, tenant):
    name, cli, src, tok = tenant
    a1 = http_cli(served, name, served.token(name, "admin"))
    a2 = http_cli(served, name, served.token(name, "admin"))
    snap = jl(cli("--json", "snapshots"))[0]["snapshots"][0]["id"]
    r = a1("forget", snap[:8], ok=False)
    assert r.returncode == 20 and b"waiting for approval" in r.stderr and b"Object Lock" not in r.stderr
    assert len(jl(a1("--json", "snapshots"))[0]["snapshots"]) == 1, "nothing is deleted on one admin's word"
    pending = [x for x in jl(a1("--json", "approvals", "list")) if x["status"] == "pending"]
    assert len(pending) == 1 and pending[0]["objects"] == {"snapshots": [snap]} and pending[0]["count"] == 1
    assert pending[0]["action"] == "delete" and pending[0]["requested"] and pending[0]["requested_by"]
    rid = pending[0]["id"]
    r = a1("approvals", "approve", rid, ok=False)
    assert r.returncode == 1 and b"own request" in r.stderr
    a2("approvals", "approve", rid)
    assert jl(a2("--json", "snapshots"))[0]["snapshots"] == []
    r = a2("approvals", "approve", rid, ok=False)  # replay
    assert r.returncode == 1 and b"already executed" in r.stderr
    r = http_cli(served, name, tok)("approvals", "approve", rid, ok=False)  # a backup token
    assert r.returncode == 1 and b"refused" in r.stderr


def test_approval_window_expires(tmp_path):
    srv = ServeProcess(str(tmp_path / "root"), window=1)
    try:
        name = "win"
        cli = http_cli(srv, name, srv.token(name, "admin"))
        cli("init")
        (tmp_path / "s").mkdir()
        cli("backup", str(tmp_path / "s"))
        snap = jl(cli("--json", "snapshots"))[0]["snapshots"][0]["id"]
        r = cli("--json", "forget", snap[:8], ok=False)
        assert r.returncode == 20
        rid = [x for x in jl(r) if x["message_type"] == "approval_required"][0]["id"]
        assert jl(cli("--json", "approvals", "list"))[0]["id"] == rid
        time.sleep(1.5)
        r = http_cli(srv, name, srv.token(name, "admin"))("approvals", "approve", rid, ok=False)
        assert r.returncode == 1 and b"expired" in r.stderr
        assert len(jl(cli("--json", "snapshots"))[0]["snapshots"]) == 1
    finally:
        srv.stop()


def test_eight_clients_back_up_at_once(served, tmp_path):
    name = f"load-{uuid.uuid4().hex[:8]}"
    tok = served.token(name, "backup")
    cli = http_cli(served, name, tok)
    cli("init")
    procs, sources = [], []
    for i in range(8):
        src = tmp_path / f"client{i}"
        make_source(src, files=6, seed=i)
        sources.append(src)
        env = dict(cli.env, CERMIN_PASSWORD=PASSWORD)
        procs.append(
            subprocess.Popen(
                [*cermin_exe(), "-r", cli.repo, "backup", str(src), "--host", f"h{i}"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    snaps = jl(cli("--json", "snapshots"))[0]["snapshots"]
    assert len(snaps) == 8
    assert jl(cli("--json", "check", "--read-data"))[-1]["ok"] is True
    for s in snaps:
        src = sources[int(s["hostname"][1:])]
        out = tmp_path / f"out-{s['hostname']}"
        cli("restore", s["id"], "--target", str(out), "--verify")
        assert_same_tree(src, out / str(src).lstrip("/"))


def test_tenant_deletion_needs_two_admins(served, tmp_path):
    name = f"del-{uuid.uuid4().hex[:8]}"
    a1 = http_cli(served, name, served.token(name, "admin"))
    a2 = http_cli(served, name, served.token(name, "admin"))
    a1("init")
    rid = jl(a1("--json", "approvals", "delete-tenant"))[0]["id"]
    assert len(jl(a1("--json", "snapshots"))[-1]["snapshots"]) == 0  # still there
    assert a1("approvals", "approve", rid, ok=False).returncode == 1
    a2("approvals", "approve", rid)
    assert not os.path.exists(os.path.join(served.root, name))
    assert a2("snapshots", ok=False).returncode == 10


@pytest.mark.parametrize("workers", [1, 2])
def test_tls(tmp_path, workers):
    """--tls-cert/--tls-key serve HTTPS, with one worker process or several; the client trusts the
    server's certificate via CERMIN_CACERT."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    tok = (
        subprocess.run(
            [*cermin_exe(), "serve", "--root", str(root), "token", "add", "--tenant", "tls", "--role", "backup"],
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    proc = subprocess.Popen(
        [
            *cermin_exe(),
            "serve",
            "--root",
            str(root),
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(tmp_path / "cert.pem"),
            "--tls-key",
            str(tmp_path / "key.pem"),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        cli = Cli(f"https://127.0.0.1:{port}/tls", dict(env, CERMIN_TOKEN=tok))
        r = cli("init", ok=False)
        assert r.returncode == 1 and b"Traceback" not in r.stderr, "an unknown certificate is refused"
        cli.env["CERMIN_CACERT"] = str(tmp_path / "cert.pem")
        cli("init")
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "f").write_bytes(b"over tls")
        cli("backup", str(tmp_path / "s"))
        assert cli("dump", "latest", str(tmp_path / "s" / "f")).stdout == b"over tls"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_range_requests(served, tenant):
    name, cli, src, tok = tenant
    http = urllib3.PoolManager()
    auth = {"Authorization": f"Bearer {tok}"}
    base = served.url(name)
    pack, size = json.loads(http.request("GET", f"{base}/data/", headers=auth).data)[0]
    whole = http.request("GET", f"{base}/data/{pack}", headers=auth).data
    assert len(whole) == size
    r = http.request("GET", f"{base}/data/{pack}", headers={**auth, "Range": "bytes=-10"})
    assert r.status == 206 and r.data == whole[-10:]
    r = http.request("GET", f"{base}/data/{pack}", headers={**auth, "Range": "bytes=5-9"})
    assert r.data == whole[5:10]
    for bad in ("bytes=x-", "bytes=-", f"bytes={size + 5}-", "items=1-2"):
        assert http.request("GET", f"{base}/data/{pack}", headers={**auth, "Range": bad}).status == 416


def test_reuploading_anothers_lock_does_not_make_it_yours(tmp_path):
    srv = ServeProcess(str(tmp_path / "root"))
    try:
        victim, attacker = srv.token("t1", "backup"), srv.token("t1", "read")
        http = urllib3.PoolManager()
        base = f"http://127.0.0.1:{srv.port}/t1"
        body = os.urandom(100)
        name = blake3.blake3(body).hexdigest()
        assert (
            http.request(
                "POST", f"{base}/locks/{name}", body=body, headers={"Authorization": f"Bearer {victim}"}
            ).status
            == 201
        )
        h = {"Authorization": f"Bearer {attacker}"}
        stolen = http.request("GET", f"{base}/locks/{name}", headers=h).data
        assert http.request("POST", f"{base}/locks/{name}", body=stolen, headers=h).status == 409
        assert http.request("DELETE", f"{base}/locks/{name}", headers=h).status == 403
    finally:
        srv.stop()


def test_lock_files_count_against_the_quota(tmp_path):
    """Red-team reproduction (issue 14 review)."""
    root = str(tmp_path / "root")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = subprocess.Popen(
        cermin_exe() + ["serve", "--root", root, "--listen", f"127.0.0.1:{port}", "--quota-bytes", str(1 << 20)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        tok = (
            subprocess.run(
                cermin_exe() + ["serve", "--root", root, "token", "add", "--tenant", "t1", "--role", "read"],
                capture_output=True,
                check=True,
            )
            .stdout.decode()
            .strip()
        )
        http = urllib3.PoolManager()
        stored = 0
        for _ in range(4):
            body = os.urandom(1 << 20)
            r = http.request(
                "POST",
                f"http://127.0.0.1:{port}/t1/locks/{blake3.blake3(body).hexdigest()}",
                body=body,
                headers={"Authorization": f"Bearer {tok}"},
            )
            stored += len(body) if r.status == 201 else 0
        assert stored <= 1 << 20, f"{stored >> 20} MiB of lock files stored under a 1 MiB quota"
    finally:
        p.terminate()
        p.wait(10)
