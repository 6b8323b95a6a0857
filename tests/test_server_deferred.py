"""server/ (`cermin serve` end to end): deferred deletions through `cermin serve` never delete data that became
needed, and approvals show what they approve. Real server process, real CLI, honest admins."""

from __future__ import annotations

import json
import uuid

import urllib3
from helpers import assert_same_tree, make_source
from test_server import http_cli, jl


def _pending(cli) -> list[dict]:
    return [r for r in jl(cli("--json", "approvals", "list")) if r["status"] == "pending"]


def test_queued_pack_deletion_never_deletes_data_a_later_backup_needs(served, tmp_path):
    """Reported data loss: prune queues an unused pack; `repair index` takes it back and a new backup
    deduplicates against it; the approval then deletes it. Packs queued for deletion must be gone for
    every writer, and the approval must re-check before deleting."""
    name = f"dd-{uuid.uuid4().hex[:8]}"
    alice = http_cli(served, name, served.token(name, "admin"))
    bob = http_cli(served, name, served.token(name, "admin"))
    alice("init")
    keep, old = tmp_path / "keep", tmp_path / "old"
    make_source(keep, files=4, seed=1)
    make_source(old, files=6, seed=2)
    alice("backup", str(keep))
    alice("backup", str(old))
    snaps = jl(alice("--json", "snapshots"))[-1]["snapshots"]
    old_id = next(s["id"] for s in snaps if s["paths"] == [str(old)])
    alice("forget", old_id[:8], ok=False)
    for r in _pending(alice):
        bob("approvals", "approve", r["id"])
    assert len(jl(alice("--json", "snapshots"))[-1]["snapshots"]) == 1
    r = alice("prune", ok=False)  # queues the old snapshot's packs (and the old index files)
    queued = _pending(alice)
    assert queued, "prune through the server queues its deletions"
    bob("repair", "index")  # honest: "check said packs are unindexed"
    alice("backup", str(old))  # the same data again
    for q in queued:
        bob("approvals", "approve", q["id"], ok=False)  # honest second admin approves the prune
    # one request for the whole plan, reported as such (exit 20), and refused once the repository changed
    assert r.returncode == 20 and b"waiting for approval" in r.stderr, r.stderr
    assert len(queued) == 1 and queued[0]["count"] > 1
    assert [x["status"] for x in jl(bob("--json", "approvals", "list")) if x["id"] == queued[0]["id"]] == ["stale"]
    report = jl(alice("--json", "check", "--read-data", ok=False))
    assert report[-1]["ok"] is True, report
    snaps = jl(alice("--json", "snapshots"))[-1]["snapshots"]
    assert len(snaps) == 2
    for s in snaps:
        out = tmp_path / f"out-{s['id'][:8]}"
        alice("restore", s["id"], "--target", str(out), "--verify")
        src = keep if s["paths"] == [str(keep)] else old
        assert_same_tree(src, out / str(src).lstrip("/"))
    # planned again, the prune is approved and frees what is really unused; nothing needed goes
    r = alice("--json", "prune", ok=False)
    assert r.returncode == 20
    (req,) = [x for x in jl(r) if x["message_type"] == "approval_required"]
    r = bob("--json", "approvals", "approve", req["id"])
    assert jl(r)[0]["status"] == "executed"
    assert jl(alice("--json", "check", "--read-data"))[-1]["ok"] is True


def test_queued_objects_are_hidden_and_a_reupload_cancels_the_request(served, tmp_path):
    name = f"dq-{uuid.uuid4().hex[:8]}"
    admin = served.token(name, "admin")
    backup = served.token(name, "backup")
    cli = http_cli(served, name, admin)
    cli("init")
    (tmp_path / "s").mkdir()
    cli("backup", str(tmp_path / "s"))
    http = urllib3.PoolManager()
    base = served.url(name)

    def as_(tok):
        return {"Authorization": f"Bearer {tok}"}

    (idx, _size), *_ = json.loads(http.request("GET", f"{base}/index/", headers=as_(backup)).data)
    body = http.request("GET", f"{base}/index/{idx}", headers=as_(backup)).data
    r = http.request("DELETE", f"{base}/index/{idx}", headers=as_(admin))
    assert r.status == 202
    rid = json.loads(r.data)["approval_required"]
    listed = [n for n, _ in json.loads(http.request("GET", f"{base}/index/", headers=as_(backup)).data)]
    assert idx not in listed, "an index file queued for deletion is gone for every client"
    assert http.request("GET", f"{base}/index/{idx}", headers=as_(backup)).status == 404
    assert http.request("HEAD", f"{base}/index/{idx}", headers=as_(backup)).status == 404
    # needed again: uploaded anew (same name = same bytes) -> the queued deletion dies
    assert http.request("POST", f"{base}/index/{idx}", body=body, headers=as_(backup)).status == 201
    assert [x["status"] for x in jl(cli("--json", "approvals", "list")) if x["id"] == rid] == ["cancelled"]
    assert http.request("GET", f"{base}/index/{idx}", headers=as_(backup)).data == body
    assert jl(cli("--json", "check"))[-1]["ok"] is True
