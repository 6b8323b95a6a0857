"""Two-person rule: a destructive operation requested by one admin runs only after a second admin
of the same tenant approves it, by its id, within the window. Each request executes at most once.

A request names everything it deletes (`objects`: kind -> names); a prune makes ONE request for its
whole plan. While a request is pending, the data packs and index files it names are hidden by the
server (treated as gone by every client). A pending request dies ("revoked") when its requester's
token is revoked, "expired" after the window, "stale" when the repository changed under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from cermin.server.shared import FileLock

WINDOW = 3600.0  # seconds an approval may take
HIDDEN_KINDS = ("data", "index")  # what a pending request hides from every client


@dataclass
class Request:
    id: str
    tenant: str
    action: str  # "delete" (objects) or "delete-tenant"
    objects: dict[str, list[str]]  # kind -> names
    requested_by: str  # token id
    requested_at: float
    requested_by_label: str = ""
    status: str = "pending"  # pending, executed, rejected, expired, revoked, stale, cancelled
    decided_by: str = ""
    decided_at: float = 0.0
    reason: str = ""
    requested_at_ns: int = field(default=0)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.objects.values())

    def to_json(self) -> dict:
        d = asdict(self)
        d["count"] = self.count
        d["kind"] = ",".join(sorted(self.objects)) if self.action == "delete" else "tenant"
        names = [n for v in self.objects.values() for n in v]
        d["name"] = names[0] if len(names) == 1 else ""
        d["requested"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.requested_at))
        return d


class ApprovalStore:
    """Requests in one JSON file, shared by every worker process of the server: changes are made
    under a file lock on a fresh read of the file and replace it atomically, each with a strictly
    larger mtime (its generation); readers (`hidden`, on every read of a pack) re-read the file only
    when its generation changed."""

    def __init__(self, state_dir: str, window: float = WINDOW) -> None:
        self.path = os.path.join(state_dir, "approvals.json")
        self.window = window
        self._lock = FileLock(self.path + ".lock")
        self._txn_reqs = threading.local()  # the working copy of the thread holding the lock
        self._cache: tuple[tuple, dict[str, Request]] = ((), {})
        self._cache_lock = threading.Lock()

    # ---- persistence ------------------------------------------------------------------------------
    def _read(self) -> tuple[tuple, dict[str, Request]]:
        try:
            f = open(self.path)
        except FileNotFoundError:
            return (0,), {}
        with f:
            st = os.fstat(f.fileno())
            raw = json.load(f)
        reqs = {}
        for r in raw:
            if "objects" not in r:  # written by an older server: one object per request
                r["objects"] = {r.pop("kind"): [r.pop("name")]} if r.get("kind") != "tenant" else {}
                if r.get("action") == "delete" and not r["objects"]:
                    r["action"] = "delete-tenant"
            r = {k: v for k, v in r.items() if k in Request.__dataclass_fields__}
            reqs[r["id"]] = Request(**r)
        return (st.st_mtime_ns, st.st_ino, st.st_size), reqs

    def _snapshot(self) -> dict[str, Request]:
        """The requests as last written, for reading only (never changed in place)."""
        try:
            st = os.stat(self.path)
            stamp: tuple = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            stamp = (0,)
        with self._cache_lock:
            if self._cache[0] == stamp:
                return self._cache[1]
        stamp, reqs = self._read()
        with self._cache_lock:
            self._cache = (stamp, reqs)
        return reqs

    @contextlib.contextmanager
    def _txn(self):
        """A working copy of the requests read under the file lock (the same one for nested calls)."""
        with self._lock.hold():
            outer = getattr(self._txn_reqs, "reqs", None)
            if outer is not None:
                yield outer
                return
            self._txn_reqs.reqs = self._read()[1]
            try:
                yield self._txn_reqs.reqs
            finally:
                self._txn_reqs.reqs = None

    def _all(self) -> dict[str, Request]:
        return self._txn_reqs.reqs

    def _write(self) -> None:
        reqs = self._all()
        d = os.path.dirname(self.path)
        try:
            prev = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            prev = 0
        gen = max(prev + 1, time.time_ns())  # strictly increasing: readers never miss a change
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".approvals-")
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(r) for r in reqs.values()], f, indent=1)
            f.flush()
            os.utime(f.fileno(), ns=(gen, gen))
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _refresh(self, r: Request, alive: Callable[[str], bool] | None) -> bool:
        """Settle a pending request that died; True if its status changed."""
        if r.status != "pending":
            return False
        now = time.time()
        if now - r.requested_at > self.window:
            r.status, r.decided_at, r.reason = "expired", r.requested_at + self.window, "not approved in time"
            return True
        if alive is not None and not alive(r.requested_by):
            r.status, r.decided_at, r.reason = "revoked", now, "the requester's token was revoked"
            return True
        return False

    # ---- API ------------------------------------------------------------------------------------
    def request(
        self, tenant: str, action: str, objects: dict[str, list[str]], token_id: str, label: str = ""
    ) -> Request:
        with self._txn() as reqs:
            for r in reqs.values():  # asking twice for the same thing gives the same request
                self._refresh(r, None)
                if r.status == "pending" and r.tenant == tenant and r.action == action and r.objects == objects:
                    return r
            r = Request(
                secrets.token_hex(8),
                tenant,
                action,
                objects,
                token_id,
                time.time(),
                label,
                requested_at_ns=time.time_ns(),
            )
            reqs[r.id] = r
            self._write()
            return r

    def list(self, tenant: str, alive: Callable[[str], bool] | None = None) -> list[Request]:
        with self._txn() as reqs:
            changed = False
            out = []
            for r in reqs.values():
                if r.tenant == tenant:
                    changed |= self._refresh(r, alive)
                    out.append(r)
            if changed:
                self._write()
        return sorted(out, key=lambda r: r.requested_at)

    def hidden(self, tenant: str, alive: Callable[[str], bool] | None = None) -> dict[str, set[str]]:
        """kind -> names queued for deletion by a live pending request: gone for every client."""
        out: dict[str, set[str]] = {k: set() for k in HIDDEN_KINDS}
        for r in self._snapshot().values():
            if r.tenant == tenant and r.status == "pending":
                if time.time() - r.requested_at > self.window or (alive is not None and not alive(r.requested_by)):
                    continue
                for k in HIDDEN_KINDS:
                    out[k].update(r.objects.get(k, ()))
        return out

    def cancel_for(self, tenant: str, kind: str, name: str, reason: str) -> list[str]:
        """An object queued for deletion was needed again (uploaded anew): its requests die."""
        with self._txn() as reqs:
            ids = []
            for r in reqs.values():
                if r.tenant == tenant and r.status == "pending" and name in r.objects.get(kind, ()):
                    r.status, r.decided_at, r.reason = "cancelled", time.time(), reason
                    ids.append(r.id)
            if ids:
                self._write()
            return ids

    def drop_tenant(self, tenant: str, keep: str) -> None:
        with self._txn() as reqs:
            for r in reqs.values():
                if r.tenant == tenant and r.status == "pending" and r.id != keep:
                    r.status, r.decided_at, r.reason = "cancelled", time.time(), "the tenant was deleted"
            self._write()

    def decide(
        self,
        tenant: str,
        rid: str,
        token_id: str,
        approve: bool,
        execute: Callable[[Request], None],
        alive: Callable[[str], bool] | None = None,
    ) -> Request:
        """Approve (and run `execute(request)`) or reject. Raises PermissionError / LookupError /
        ValueError for the refusals the server turns into 403 / 404 / 409. `execute` may raise
        StaleRequest: the request is then closed as "stale" (re-plan and request again)."""
        with self._txn() as reqs:
            r = reqs.get(rid)
            if r is None or r.tenant != tenant:
                raise LookupError(f"no approval request {rid}")
            if self._refresh(r, alive):
                self._write()
            if r.status != "pending":
                raise ValueError(f"request {rid} is already {r.status}" + (f" ({r.reason})" if r.reason else ""))
            if r.requested_by == token_id:
                raise PermissionError("the requester cannot approve their own request")
            if approve:
                try:
                    execute(r)
                except StaleRequest as e:
                    r.status, r.decided_by, r.decided_at, r.reason = "stale", token_id, time.time(), str(e)
                    self._write()
                    raise ValueError(f"request {rid} not executed: {e}") from None
            r.status = "executed" if approve else "rejected"
            r.decided_by, r.decided_at = token_id, time.time()
            self._write()
            return r


class StaleRequest(Exception):
    """The repository changed since the request was made: executing it could delete needed data."""
