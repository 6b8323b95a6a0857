"""Two-person rule: a destructive operation requested by one admin runs only after a second admin
of the same tenant approves it within the window. Each request executes at most once."""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass

WINDOW = 3600.0  # seconds an approval may take


@dataclass
class Request:
    id: str
    tenant: str
    action: str  # "delete"
    kind: str
    name: str
    requested_by: str  # token id
    requested_at: float
    status: str = "pending"  # pending, executed, rejected, expired
    decided_by: str = ""
    decided_at: float = 0.0


class ApprovalStore:
    def __init__(self, state_dir: str, window: float = WINDOW) -> None:
        self.path = os.path.join(state_dir, "approvals.json")
        self.window = window
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Request]:
        try:
            with open(self.path) as f:
                return {r["id"]: Request(**r) for r in json.load(f)}
        except FileNotFoundError:
            return {}

    def _write(self, reqs: dict[str, Request]) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump([asdict(r) for r in reqs.values()], f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def request(self, tenant: str, kind: str, name: str, token_id: str) -> Request:
        with self._lock:
            reqs = self._read()
            for r in reqs.values():  # asking twice for the same thing gives the same request
                if (
                    r.status == "pending"
                    and r.tenant == tenant
                    and r.kind == kind
                    and r.name == name
                    and time.time() - r.requested_at < self.window
                ):
                    return r
            r = Request(secrets.token_hex(8), tenant, "delete", kind, name, token_id, time.time())
            reqs[r.id] = r
            self._write(reqs)
            return r

    def list(self, tenant: str) -> list[Request]:
        with self._lock:
            reqs = self._read()
        now = time.time()
        out = []
        for r in reqs.values():
            if r.tenant != tenant:
                continue
            if r.status == "pending" and now - r.requested_at > self.window:
                r.status = "expired"
            out.append(r)
        return sorted(out, key=lambda r: r.requested_at)

    def decide(self, tenant: str, rid: str, token_id: str, approve: bool, execute) -> Request:
        """Approve (and run `execute(request)`) or reject. Raises PermissionError / LookupError /
        ValueError for the refusals the server turns into 403 / 404 / 409."""
        with self._lock:
            reqs = self._read()
            r = reqs.get(rid)
            if r is None or r.tenant != tenant:
                raise LookupError(f"no approval request {rid}")
            if r.status != "pending":
                raise ValueError(f"request {rid} is already {r.status}")
            if time.time() - r.requested_at > self.window:
                r.status = "expired"
                self._write(reqs)
                raise ValueError(f"request {rid} expired")
            if r.requested_by == token_id:
                raise PermissionError("the requester cannot approve their own request")
            if approve:
                execute(r)
            r.status = "executed" if approve else "rejected"
            r.decided_by, r.decided_at = token_id, time.time()
            self._write(reqs)
            return r
