"""Red-team reproductions against `cermin serve` (issue 14 review); both fixed (they were xfail(strict)).
Scripts: /tmp/redteam/server/attack_lock_owner.py, attack_lock_quota.py."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import blake3
import urllib3
from conftest import ServeProcess, cermin_exe


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
