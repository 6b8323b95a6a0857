"""server/ (`cermin serve --workers N`): state that every worker must see alike, and an event loop that
never waits for the disk.

Two `Server` objects on one root stand for two worker processes: they share nothing in memory (each
has its own caches, counters and thread locks), so whatever one must learn from the other goes
through ROOT/.cermin-server, as it does between processes. The loop test runs a real uvicorn server
in a thread and stalls its disk writes."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
import urllib3
from starlette.testclient import TestClient

from cermin.format.crypto import file_id
from cermin.server import app as server_app
from cermin.server.app import Server
from cermin.server.auth import TokenStore


class Workers:
    """Two workers (A and B) of one server run, and tokens of one tenant."""

    def __init__(self, root: str, **limits) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.servers = [Server(root, run="run-1", **limits) for _ in range(2)]
        self.a, self.b = (TestClient(s.app(), client=("127.0.0.1", 5000)) for s in self.servers)
        self.tokens = TokenStore(os.path.join(root, ".cermin-server"))

    def token(self, role: str, tenant: str = "t") -> dict:
        return {"Authorization": f"Bearer {self.tokens.add(tenant, role)[1]}"}


@pytest.fixture
def w(tmp_path):
    return Workers(str(tmp_path / "root"))


def post(client, kind: str, body: bytes, h: dict, tenant: str = "t"):
    return client.post(f"/{tenant}/{kind}/{file_id(body)}", content=body, headers=h)


def audit(root: str) -> list[dict]:
    with open(os.path.join(root, ".cermin-server", "audit.log")) as f:
        return [json.loads(x) for x in f]


def test_a_deletion_queued_in_one_worker_hides_and_executes_in_the_other(w):
    backup, alice, bob = w.token("backup"), w.token("admin"), w.token("admin")
    pack, keep = os.urandom(3000), os.urandom(3000)
    assert post(w.a, "data", pack, backup).status_code == 201
    assert post(w.a, "data", keep, backup).status_code == 201
    r = w.a.post("/t/_delete", content=json.dumps({"objects": [["data", file_id(pack)]]}), headers=alice)
    assert r.status_code == 202
    rid = r.json()["approval_required"]
    # the other worker has already read the approvals file: the queued pack is gone for every client there
    assert w.b.get(f"/t/data/{file_id(pack)}", headers=backup).status_code == 404
    assert [n for n, _ in w.b.get("/t/data/", headers=backup).json()] == [file_id(keep)]
    assert [r["id"] for r in w.b.get("/t/_approvals", headers=bob).json()] == [rid]
    assert w.b.post(f"/t/_approvals/{rid}/approve", headers=alice).status_code == 403  # own request
    assert w.b.post(f"/t/_approvals/{rid}/approve", headers=bob).json()["status"] == "executed"
    assert w.a.post(f"/t/_approvals/{rid}/approve", headers=bob).status_code == 409  # no replay elsewhere
    assert [n for n, _ in w.a.get("/t/data/", headers=backup).json()] == [file_id(keep)]


def test_a_reupload_in_one_worker_cancels_the_request_made_in_the_other(w):
    backup, alice, bob = w.token("backup"), w.token("admin"), w.token("admin")
    pack = os.urandom(3000)
    assert post(w.a, "data", pack, backup).status_code == 201
    rid = w.a.post("/t/_delete", content=json.dumps({"objects": [["data", file_id(pack)]]}), headers=alice).json()[
        "approval_required"
    ]
    assert post(w.b, "data", pack, backup).status_code == 201  # needed again
    assert w.a.get(f"/t/data/{file_id(pack)}", headers=backup).content == pack
    r = w.a.post(f"/t/_approvals/{rid}/approve", headers=bob)
    assert r.status_code == 409 and "cancelled" in r.json()["error"]
    assert w.b.get(f"/t/data/{file_id(pack)}", headers=backup).content == pack


def test_a_lock_made_through_one_worker_belongs_to_its_token_in_the_other(w):
    mine, other = w.token("backup"), w.token("backup")
    lock = os.urandom(100)
    assert post(w.a, "locks", lock, mine).status_code == 201
    assert w.b.delete(f"/t/locks/{file_id(lock)}", headers=other).status_code == 403
    assert post(w.b, "locks", lock, other).status_code == 409  # re-uploading its bytes makes it no one else's
    assert w.a.delete(f"/t/locks/{file_id(lock)}", headers=other).status_code == 403
    assert w.b.delete(f"/t/locks/{file_id(lock)}", headers=mine).status_code == 204


def test_quota_and_lock_limits_hold_across_workers(tmp_path):
    w = Workers(str(tmp_path / "root"), quota_objects=3, max_locks=2)
    tok = w.token("backup")
    # alternating workers: each one's own count would let a fourth object in
    codes = [post(c, "data", os.urandom(500), tok).status_code for c in (w.a, w.b, w.a, w.b)]
    assert codes == [201, 201, 201, 507]
    w2 = Workers(str(tmp_path / "root2"), max_locks=2)
    tok = w2.token("read")
    codes = [post(c, "locks", os.urandom(50), tok).status_code for c in (w2.a, w2.b, w2.a, w2.b)]
    assert codes == [201, 201, 429, 429]


def test_removals_and_deletions_give_quota_back_in_every_worker(tmp_path):
    w = Workers(str(tmp_path / "root"), quota_objects=2)
    tok = w.token("read")
    lock = os.urandom(50)
    assert post(w.a, "locks", lock, tok).status_code == 201
    assert post(w.b, "locks", os.urandom(50), tok).status_code == 201
    assert post(w.a, "locks", os.urandom(50), tok).status_code == 507
    assert w.b.delete(f"/t/locks/{file_id(lock)}", headers=tok).status_code == 204
    assert post(w.a, "locks", os.urandom(50), tok).status_code == 201


def test_a_noisy_tokens_audit_lines_are_limited_across_workers(w):
    noisy = w.token("read")
    for _ in range(60):
        for c in (w.a, w.b):
            assert c.delete(f"/t/data/{'a' * 64}", headers=noisy).status_code == 403
    lines = audit(w.root)
    assert 25 <= len(lines) <= 31, len(lines)  # 30 a minute for the token, not 30 per worker
    assert len({x["worker"] for x in lines}) == 1  # both "workers" here are this process


def test_an_approval_executing_in_one_worker_freezes_uploads_in_the_other(w):
    backup = w.token("backup")
    st = w.servers[0].state("t")
    st.files.ensure()
    body = os.urandom(2000)
    result: list[int] = []
    with st.files.gate.exclusive():  # what worker A holds while an approved deletion executes
        t = threading.Thread(target=lambda: result.append(post(w.b, "index", body, backup).status_code))
        t.start()
        t.join(1.5)
        assert t.is_alive() and not result, "an upload committed while the tenant was frozen"
        assert not os.path.exists(os.path.join(w.root, "t", "index", file_id(body)))
    t.join(60)
    assert result == [201]
    assert w.servers[0].state("t").files.changed_ns("index") > 0  # seen by the approval re-check


# ---- the event loop never waits for the disk --------------------------------------------------------
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def live(tmp_path):
    """A real uvicorn server (one worker) in a thread of this process."""
    import uvicorn

    root = str(tmp_path / "root")
    os.makedirs(root)
    store = TokenStore(os.path.join(root, ".cermin-server"))
    tok = store.add("t", "backup")[1]
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(server_app.Server(root).app(), host="127.0.0.1", port=port, log_level="warning")
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}/t", {"Authorization": f"Bearer {tok}"}
    server.should_exit = True
    t.join(30)


@pytest.mark.parametrize("size", [3 << 20, 20_000], ids=["streamed", "small"])
def test_requests_are_answered_while_a_disk_write_is_stalled(live, monkeypatch, size):
    """Event ordering, no timer: an upload's write is stalled until the test lets it go; a health
    probe, a read and a listing must be answered before that. If any disk I/O ran on the event loop
    (or the upload held the loop), they could not be answered and the test fails at its timeout."""
    base, auth = live
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=10, read=60))
    assert http.request("POST", f"{base}/config/config", body=b"cfg", headers=auth).status == 201
    entered, release = threading.Event(), threading.Event()
    real = server_app._write_all

    def stalled(fd, data):
        entered.set()
        release.wait(120)
        real(fd, data)

    monkeypatch.setattr(server_app, "_write_all", stalled)
    # streamed: more than one write buffer, the stall hits while the body still arrives; small: read
    # whole, then written in one worker-thread call
    body = os.urandom(size)
    done: list[int] = []
    up = threading.Thread(
        target=lambda: done.append(http.request("POST", f"{base}/data/{file_id(body)}", body=body, headers=auth).status)
    )
    up.start()
    try:
        assert entered.wait(60), "the upload never reached the disk"
        quick = urllib3.PoolManager(timeout=urllib3.Timeout(connect=20, read=20), retries=False)
        assert quick.request("GET", f"{base.rsplit('/', 1)[0]}/_health").status == 200
        r = quick.request("GET", f"{base}/config/config", headers=auth)
        assert r.status == 200 and r.data == b"cfg"
        assert quick.request("GET", f"{base}/data/", headers=auth).status == 200
        assert not done and up.is_alive(), "the upload finished while its write was stalled"
    finally:
        release.set()
        up.join(120)
    assert done == [201]
    assert http.request("GET", f"{base}/data/{file_id(body)}", headers=auth).data == body
