"""server/ (`cermin serve --workers 2`) under load: 32 clients back up at once into one server, 16 into
their own tenants and 16 into one shared repository; every snapshot is there, `check --read-data` is
clean on every repository, every snapshot restores byte for byte, the server refused nothing, and both
worker processes served requests. Real server process on 127.0.0.1, real CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import FAST_KDF, PASSWORD, Cli, ServeProcess, cermin_exe
from helpers import assert_same_tree, make_source

from cermin.backend.http import HttpBackend
from cermin.repo.repository import Repository
from cermin.server.auth import TokenStore

OWN, SHARED = 16, 16  # clients with a tenant each; clients sharing one tenant


def _jl(r) -> list[dict]:
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


@pytest.mark.timeout(900)
def test_32_clients_back_up_into_one_server_with_two_workers(tmp_path):
    root = str(tmp_path / "root")
    srv = ServeProcess(root, 3600, "--workers", "2")
    try:
        workers = _run(srv, root, tmp_path)
    finally:
        srv.stop()
    assert srv.proc.returncode is not None
    deadline = time.monotonic() + 30  # stopping the server stops its workers
    while any(os.path.exists(f"/proc/{w}") for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}")], "a worker outlived cermin serve"


def _run(srv: ServeProcess, root: str, tmp_path) -> set[int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    store = TokenStore(os.path.join(root, ".cermin-server"))
    clients = []  # (tenant, host, source, token)
    for i in range(OWN):
        clients.append((f"own{i:02d}", f"h{i}", tmp_path / f"src-own{i}", store.add(f"own{i:02d}", "backup")[1]))
    for i in range(SHARED):
        clients.append(("shared", f"s{i}", tmp_path / f"src-shared{i}", store.add("shared", "backup")[1]))
    for n, (_tenant, host, src, _tok) in enumerate(clients):
        # the shared tenant's clients back up pairwise identical data: concurrent deduplication
        make_source(src, files=6, seed=n if host.startswith("h") else 100 + n % 8)

    def cli(tenant: str, token: str) -> Cli:
        return Cli(srv.url(tenant), dict(env, CERMIN_TOKEN=token))

    firsts = {}
    for tenant, _h, _s, tok in clients:
        firsts.setdefault(tenant, tok)
    for tenant, tok in firsts.items():  # a cheap key derivation: each of the ~100 CLI runs below derives it
        Repository.init(HttpBackend(srv.url(tenant), tok), PASSWORD.encode(), kdf=FAST_KDF).close()

    procs = []
    for tenant, host, src, tok in clients:  # all 32 at once
        procs.append(
            subprocess.Popen(
                [*cermin_exe(), "-r", srv.url(tenant), "backup", str(src), "--host", host],
                env=dict(env, CERMIN_TOKEN=tok, CERMIN_PASSWORD=PASSWORD),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    failed = []
    for (tenant, host, _s, _t), p in zip(clients, procs, strict=True):
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            failed.append(f"{tenant}/{host}: exit {p.returncode}: {err.decode()[-500:]}")
    assert not failed, failed

    # every snapshot is there, every repository checks clean
    by_tenant: dict[str, dict[str, str]] = {}
    for tenant, tok in firsts.items():
        snaps = _jl(cli(tenant, tok)("--json", "snapshots"))[-1]["snapshots"]
        by_tenant[tenant] = {s["hostname"]: s["id"] for s in snaps}
    expected: dict[str, set[str]] = {}
    for tenant, host, _s, _t in clients:
        expected.setdefault(tenant, set()).add(host)
    assert {t: set(h) for t, h in by_tenant.items()} == expected

    def check(kv) -> dict:
        return _jl(cli(*kv)("--json", "check", "--read-data"))[-1]

    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(check, firsts.items()))
    assert all(r["ok"] is True for r in reports), reports

    def restore(c) -> None:
        tenant, host, src, tok = c
        out = tmp_path / f"out-{tenant}-{host}"
        cli(tenant, tok)("restore", by_tenant[tenant][host], "--target", str(out), "--verify")
        assert_same_tree(src, out / str(src).lstrip("/"))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(restore, clients))

    # the server refused nothing, and both worker processes answered requests
    with open(os.path.join(root, ".cermin-server", "audit.log")) as f:
        audit = [json.loads(x) for x in f]
    assert [a for a in audit if a["status"] >= 400] == []
    removals = [a for a in audit if "removed by its owner" in a.get("reason", "")]
    assert len(removals) >= len(clients)  # each backup removed its own lock
    workers = {a["worker"] for a in removals}
    assert len(workers) == 2, "one worker process served every client"
    return workers
