"""The repository server: one repository per tenant under --root, append-only for backup clients.

HTTP API (every request carries `Authorization: Bearer <token>`):
  GET    /{tenant}/{kind}/            list: JSON [[name, size], ...]
  HEAD   /{tenant}/{kind}/{name}      size in Content-Length
  GET    /{tenant}/{kind}/{name}      bytes (Range: bytes=a-b supported)
  POST   /{tenant}/{kind}/{name}      create; 409 if it exists; the name must be the BLAKE3 of the body
  DELETE /{tenant}/{kind}/{name}      locks: backup/admin at once; anything else: admin, and only
                                      after a second admin approves (202 + request id)
  DELETE /{tenant}/                   delete the tenant's repository (admin + a second admin)
  GET    /{tenant}/_approvals         pending and decided requests (admin)
  POST   /{tenant}/_approvals/{id}/approve|reject   (admin, not the requester)
Refused requests are written to the audit log (JSON lines) with the token id, never the token.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cermin.backend.base import CONFIG_NAME, Kind
from cermin.backend.local import LocalBackend
from cermin.errors import CerminError, ObjectExists, ObjectNotFound
from cermin.format.crypto import file_id
from cermin.server.approvals import ApprovalStore
from cermin.server.auth import TENANT_RE, TokenStore

KINDS = {k.value: k for k in Kind}
READ, WRITE, DELETE_LOCK, DESTROY, ADMIN = "read", "write", "delete-lock", "destroy", "admin"
ALLOWED = {
    "read": {READ},
    "backup": {READ, WRITE, DELETE_LOCK},
    "admin": {READ, WRITE, DELETE_LOCK, DESTROY, ADMIN},
}


class Server:
    def __init__(self, root: str, window: float | None = None) -> None:
        self.root = os.path.abspath(root)
        state = os.path.join(self.root, ".cermin-server")
        self.tokens = TokenStore(state)
        self.approvals = ApprovalStore(state, window) if window is not None else ApprovalStore(state)
        self.audit_path = os.path.join(state, "audit.log")
        self._audit_lock = threading.Lock()
        self._backends: dict[str, LocalBackend] = {}

    def backend(self, tenant: str) -> LocalBackend:
        b = self._backends.get(tenant)
        if b is None:
            b = self._backends[tenant] = LocalBackend(os.path.join(self.root, tenant))
        return b

    def audit(self, request: Request, status: int, reason: str, token_id: str = "") -> None:
        rec = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "remote": request.client.host if request.client else "",
            "method": request.method,
            "path": request.url.path,
            "token": token_id,
            "status": status,
            "reason": reason,
        }
        with self._audit_lock, open(self.audit_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ---- request plumbing ----------------------------------------------------------------------
    def authorize(self, request: Request, tenant: str, need: str):
        """(token entry, None) or (None, refusal response); every refusal is audited."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        entry = self.tokens.verify(token) if token else None
        if entry is None:
            self.audit(request, 401, "no valid token")
            return None, JSONResponse({"error": "a valid token is required"}, 401)
        if not TENANT_RE.match(tenant) or entry.tenant != tenant:
            self.audit(request, 403, f"token of tenant {entry.tenant} used for {tenant}", entry.id)
            return None, JSONResponse({"error": "this token has no access to that tenant"}, 403)
        if need not in ALLOWED[entry.role]:
            self.audit(request, 403, f"role {entry.role} may not {need}", entry.id)
            return None, JSONResponse({"error": f"role {entry.role} may not {need}"}, 403)
        return entry, None

    @staticmethod
    def kind_name(request: Request) -> tuple[Kind | None, str]:
        kind = KINDS.get(request.path_params["kind"])
        name = request.path_params.get("name", "")
        if kind is Kind.CONFIG:
            name = CONFIG_NAME
        return kind, name

    def bad_name(self, kind: Kind | None, name: str) -> bool:
        if kind is None:
            return True
        if kind is Kind.CONFIG:
            return False
        return len(name) != 64 or any(c not in "0123456789abcdef" for c in name)

    # ---- endpoints -----------------------------------------------------------------------------
    async def list(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        entry, refused = self.authorize(request, tenant, READ)
        if refused:
            return refused
        kind = KINDS.get(request.path_params["kind"])
        if kind is None:
            return JSONResponse({"error": "unknown kind"}, 404)
        items = await run_in_threadpool(lambda: [[n, s] for n, s in self.backend(tenant).list(kind)])
        return JSONResponse(items)

    async def object(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        kind, name = self.kind_name(request)
        method = request.method
        need = {"GET": READ, "HEAD": READ, "POST": WRITE, "PUT": WRITE}.get(method)
        if method == "DELETE":
            need = DELETE_LOCK if kind is Kind.LOCK else DESTROY
        entry, refused = self.authorize(request, tenant, need)
        if refused:
            return refused
        if self.bad_name(kind, name):
            self.audit(request, 400, "bad object name", entry.id)
            return JSONResponse({"error": "bad kind or object name"}, 400)
        backend = self.backend(tenant)
        try:
            if method in ("GET", "HEAD"):
                return await run_in_threadpool(self._read, request, backend, kind, name, method)
            if method in ("POST", "PUT"):
                body = await request.body()
                if kind is not Kind.CONFIG and file_id(body) != name:
                    self.audit(request, 400, "content does not match its name", entry.id)
                    return JSONResponse({"error": "content does not match its name"}, 400)
                await run_in_threadpool(self._store, backend, kind, name, body)
                return Response(status_code=201)
            # DELETE
            if kind is Kind.LOCK:
                backend.remove(kind, name)
                return Response(status_code=204)
            if not backend.exists(kind, name):
                return JSONResponse({"error": "not found"}, 404)
            req = self.approvals.request(tenant, kind.value, name, entry.id)
            self.audit(request, 202, f"deletion needs a second admin: request {req.id}", entry.id)
            return JSONResponse({"approval_required": req.id}, 202)
        except ObjectNotFound:
            return JSONResponse({"error": "not found"}, 404)
        except ObjectExists:
            self.audit(request, 409, "object exists (write-once)", entry.id)
            return JSONResponse({"error": "object exists"}, 409)
        except CerminError as e:
            return JSONResponse({"error": str(e)}, 500)

    def _store(self, backend: LocalBackend, kind: Kind, name: str, body: bytes) -> None:
        if not os.path.isdir(os.path.join(backend.root, Kind.KEY.value)):
            with self._audit_lock:  # first write of a new tenant repository: lay out its directories
                if not os.path.isdir(os.path.join(backend.root, Kind.KEY.value)):
                    backend.create()
        backend.save(kind, name, body)

    def _read(self, request: Request, backend: LocalBackend, kind: Kind, name: str, method: str) -> Response:
        size = backend.size(kind, name)
        if method == "HEAD":
            return Response(headers={"content-length": str(size)})
        rng = request.headers.get("range", "")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m is None or (not m[1] and not m[2]):
                return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), size - 1) if m[2] else size - 1
            else:  # suffix: the last N bytes
                start, end = max(0, size - int(m[2])), size - 1
            if start >= size or end < start:
                return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
            data = backend.load(kind, name, start, end - start + 1)
            return Response(
                data, status_code=206, headers={"content-range": f"bytes {start}-{start + len(data) - 1}/{size}"}
            )
        return Response(backend.load(kind, name), media_type="application/octet-stream")

    async def tenant(self, request: Request) -> Response:
        """DELETE /{tenant}/: delete a whole tenant repository, after a second admin approves."""
        tenant = request.path_params["tenant"]
        entry, refused = self.authorize(request, tenant, DESTROY)
        if refused:
            return refused
        req = self.approvals.request(tenant, "tenant", tenant, entry.id)
        self.audit(request, 202, f"tenant deletion needs a second admin: request {req.id}", entry.id)
        return JSONResponse({"approval_required": req.id}, 202)

    async def approvals_list(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        entry, refused = self.authorize(request, tenant, ADMIN)
        if refused:
            return refused
        return JSONResponse([r.__dict__ for r in self.approvals.list(tenant)])

    async def approvals_decide(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        entry, refused = self.authorize(request, tenant, ADMIN)
        if refused:
            return refused
        approve = request.path_params["verb"] == "approve"
        backend = self.backend(tenant)

        def execute(r) -> None:
            if r.kind == "tenant":  # the whole repository goes
                import shutil

                shutil.rmtree(backend.root, ignore_errors=True)
                self._backends.pop(tenant, None)
                return
            try:
                backend.remove(KINDS[r.kind], r.name)
            except ObjectNotFound:
                pass

        try:
            r = self.approvals.decide(tenant, request.path_params["rid"], entry.id, approve, execute)
        except PermissionError as e:
            self.audit(request, 403, str(e), entry.id)
            return JSONResponse({"error": str(e)}, 403)
        except LookupError as e:
            self.audit(request, 404, str(e), entry.id)
            return JSONResponse({"error": str(e)}, 404)
        except ValueError as e:
            self.audit(request, 409, str(e), entry.id)
            return JSONResponse({"error": str(e)}, 409)
        except (OSError, CerminError) as e:  # the request stays pending and can be approved again
            self.audit(request, 500, f"approved operation failed: {e}", entry.id)
            return JSONResponse({"error": f"the operation failed: {e}"}, 500)
        self.audit(request, 200, f"request {r.id} {r.status}: {r.kind}/{r.name}", entry.id)
        return JSONResponse(r.__dict__)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{tenant}/_approvals", self.approvals_list, methods=["GET"]),
                Route("/{tenant}/_approvals/{rid}/{verb:str}", self.approvals_decide, methods=["POST"]),
                Route("/{tenant}/", self.tenant, methods=["DELETE"]),
                Route("/{tenant}/{kind}/", self.list, methods=["GET"]),
                Route("/{tenant}/{kind}/{name}", self.object, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
            ]
        )


def build_app(root: str, window: float | None = None) -> Starlette:
    return Server(root, window).app()
