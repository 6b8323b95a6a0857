"""The repository server: one repository per tenant under --root, append-only for backup clients.

HTTP API (every request but /_health carries `Authorization: Bearer <token>`):
  GET    /_health                     {"ok": true, "worker": pid}: on the event loop, no disk
  GET    /{tenant}/{kind}/            list: JSON [[name, size], ...]
  HEAD   /{tenant}/{kind}/{name}      size in Content-Length
  GET    /{tenant}/{kind}/{name}      bytes (Range: bytes=a-b supported)
  POST   /{tenant}/{kind}/{name}      create; 409 if it exists; the name must be the BLAKE3 of the body;
                                      413 over --max-object-size (locks: over 64 KiB), 507 over the
                                      tenant's quota (locks count)
  DELETE /{tenant}/locks/{name}       only the token that created the lock, or an admin (audited)
  DELETE /{tenant}/{kind}/{name}      admin: queued until a second admin approves (202 + request id);
                                      never config (403: only deleting the tenant removes it)
  POST   /{tenant}/_delete            admin: {"objects": [[kind, name], ...]} -> ONE request (202 + id)
  DELETE /{tenant}/                   delete the tenant's repository (admin + a second admin)
  GET    /{tenant}/_approvals         requests with what they delete, who asked and when (admin)
  POST   /{tenant}/_approvals/{id}/approve|reject   (admin, not the requester)

Data packs and index files named by a pending request are hidden (absent from listings, 404 on
read): every client treats them as gone, so nothing new can come to depend on them. An approved
request executes only while no lock is held and only if no index, snapshot or aux object appeared
since it was made (the server cannot read them, so any may reference what it would delete);
otherwise it is closed as "stale" and must be planned again. During execution the tenant is
frozen: no object or lock can be created.

All disk I/O runs in worker threads, never on the event loop; bodies up to 1 MiB are read whole
and stored in one thread call, larger ones stream to a temporary file (hashed on the way); both are
checked, then hard-linked to their final name (write-once). With `--workers N` several processes
serve one root: every lock, counter and pending request they must agree on lives on disk
(server/shared.py, the approvals file, the audit rate table), never only in one process's memory.
A lock's owner record is written only by the request whose link created the lock (a 409
re-upload of its bytes changes nothing). Refused requests are written to the audit log (JSON lines)
with the token id, never the token; rate-limited per client address (unauthenticated) or per token.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cermin.backend.base import CONFIG_NAME, Kind
from cermin.backend.local import LocalBackend, _fsync_dir
from cermin.errors import CerminError, ObjectNotFound
from cermin.server.approvals import HIDDEN_KINDS, ApprovalStore, StaleRequest
from cermin.server.audit import AuditLog, clip
from cermin.server.auth import TENANT_RE, TokenEntry, TokenStore
from cermin.server.shared import TenantFiles
from cermin.util import plural

KINDS = {k.value: k for k in Kind}
READ, WRITE, LOCK, DESTROY, ADMIN = "read", "write", "lock", "destroy", "admin"
ALLOWED = {
    "read": {READ, LOCK},  # read tokens hold their own locks (check, restore, mirror pull)
    "backup": {READ, WRITE, LOCK},
    "admin": {READ, WRITE, LOCK, DESTROY, ADMIN},
}
MAX_OBJECT_SIZE = 128 << 20  # larger than any pack
MAX_LOCKS = 64  # lock files per tenant (each client holds 1, 2 while refreshing)
MAX_LOCK_SIZE = 64 << 10  # a sealed Lock record is a few hundred bytes
MAX_RANGE_DIGITS = 18  # a Range number longer than this is beyond any object (and int() would refuse it)
LOCK_FRESH = 1800.0  # seconds: a lock written more recently may belong to a running client
CHANGE_KINDS = (Kind.INDEX, Kind.SNAPSHOT, Kind.AUX)  # what may reference objects a request deletes
WRITE_BUF = 1 << 20
SMALL_BODY = 1 << 20  # a body up to this size (with a Content-Length) is stored in one worker-thread call


@dataclass
class TenantState:
    backend: LocalBackend
    files: TenantFiles  # gate, lock-file mutex, usage counter, change times: shared by every worker


class Refused(Exception):
    def __init__(self, status: int, message: str, audit: bool = True) -> None:
        super().__init__(message)
        self.status, self.audit = status, audit


class Server:
    def __init__(
        self,
        root: str,
        window: float | None = None,
        max_object_size: int = MAX_OBJECT_SIZE,
        quota_bytes: int = 0,
        quota_objects: int = 0,
        max_locks: int = MAX_LOCKS,
        run: str | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        state = self.state_dir = os.path.join(self.root, ".cermin-server")
        # one id per server run, the same in every worker: usage counters of another run are recomputed
        self.run = run or secrets.token_hex(8)
        self.tokens = TokenStore(state)
        self.approvals = ApprovalStore(state, window) if window is not None else ApprovalStore(state)
        self.owners_dir = os.path.join(state, "lockowners")
        self.audit_log = AuditLog(os.path.join(state, "audit.log"), os.path.join(state, "audit-rate.sqlite"))
        self.max_object_size = max_object_size
        self.quota_bytes, self.quota_objects, self.max_locks = quota_bytes, quota_objects, max_locks
        self._tenants: dict[str, TenantState] = {}
        self._tenants_lock = threading.Lock()

    def state(self, tenant: str) -> TenantState:
        """The tenant's backend and shared state files (touches no disk: safe on the event loop)."""
        with self._tenants_lock:
            t = self._tenants.get(tenant)
            if t is None:
                t = self._tenants[tenant] = TenantState(
                    LocalBackend(os.path.join(self.root, tenant)), TenantFiles(self.state_dir, tenant, self.run)
                )
            return t

    def backend(self, tenant: str) -> LocalBackend:
        return self.state(tenant).backend

    # ---- audit ----------------------------------------------------------------------------------
    def audit(self, request: Request, status: int, reason: str, token_id: str = "", throttle: bool = False) -> None:
        self.audit_log.write(request, status, reason, token_id, throttle)

    # ---- request plumbing ----------------------------------------------------------------------
    def authorize(self, request: Request, tenant: str, need: str) -> TokenEntry:
        """The token's entry, or Refused (audited). Runs in a worker thread (reads the token file)."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        entry = self.tokens.verify(token[:200]) if token else None
        if entry is None:
            self.audit(request, 401, "no valid token")
            raise Refused(401, "a valid token is required", audit=False)
        if not TENANT_RE.match(tenant) or entry.tenant != tenant:
            self.audit(request, 403, f"token of tenant {entry.tenant} used for another tenant", entry.id)
            raise Refused(403, "this token has no access to that tenant", audit=False)
        if need not in ALLOWED[entry.role]:
            self.audit(request, 403, f"role {entry.role} may not {need}", entry.id)
            raise Refused(403, f"role {entry.role} may not {need}", audit=False)
        return entry

    def alive_admin(self, token_id: str) -> bool:
        e = self.tokens.get(token_id)
        return e is not None and e.role == "admin"

    @staticmethod
    def kind_name(request: Request) -> tuple[Kind | None, str]:
        kind = KINDS.get(request.path_params["kind"])
        name = request.path_params.get("name", "")
        if kind is Kind.CONFIG:
            name = CONFIG_NAME
        return kind, name

    @staticmethod
    def bad_name(kind: Kind | None, name: str) -> bool:
        if kind is None:
            return True
        if kind is Kind.CONFIG:
            return False
        return len(name) != 64 or any(c not in "0123456789abcdef" for c in name)

    def hidden(self, tenant: str) -> dict[str, set[str]]:
        return self.approvals.hidden(tenant, self.alive_admin)

    def is_hidden(self, tenant: str, kind: Kind, name: str) -> bool:
        return kind.value in HIDDEN_KINDS and name in self.hidden(tenant)[kind.value]

    async def _run(self, request: Request, fn, *args) -> Response:
        """Run a synchronous handler in a worker thread; turn Refused into its answer."""
        try:
            return await run_in_threadpool(fn, request, *args)
        except Refused as e:
            if e.audit:
                await run_in_threadpool(self.audit, request, e.status, str(e), getattr(e, "token_id", ""))
            return JSONResponse({"error": str(e)}, e.status)

    # ---- listing and reads ------------------------------------------------------------------------
    async def list(self, request: Request) -> Response:
        return await self._run(request, self._list)

    def _list(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        self.authorize(request, tenant, READ)
        kind = KINDS.get(request.path_params["kind"])
        if kind is None:
            return JSONResponse({"error": "unknown kind"}, 404)
        hide = self.hidden(tenant).get(kind.value, set())
        return JSONResponse([[n, s] for n, s in self.backend(tenant).list(kind) if n not in hide])

    async def object(self, request: Request) -> Response:
        if request.method in ("POST", "PUT"):
            return await self.upload(request)
        return await self._run(request, self._object)

    def _object(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        kind, name = self.kind_name(request)
        method = request.method
        need = READ
        if method == "DELETE":
            need = LOCK if kind is Kind.LOCK else DESTROY
        entry = self.authorize(request, tenant, need)
        if self.bad_name(kind, name):
            self.audit(request, 400, "bad object name", entry.id)
            return JSONResponse({"error": "bad kind or object name"}, 400)
        assert kind is not None
        if method == "DELETE" and kind is Kind.CONFIG:
            self.audit(request, 403, "config cannot be deleted (only with the whole tenant)", entry.id)
            return JSONResponse(
                {"error": "the config cannot be deleted: without it the repository is lost (delete the tenant)"}, 403
            )
        backend = self.backend(tenant)
        try:
            if method in ("GET", "HEAD"):
                if self.is_hidden(tenant, kind, name):
                    return JSONResponse({"error": "not found (queued for deletion)"}, 404)
                return self._read(request, backend, kind, name, method)
            if kind is Kind.LOCK:
                return self._remove_lock(request, tenant, entry, name)
            if not backend.exists(kind, name) or self.is_hidden(tenant, kind, name):
                return JSONResponse({"error": "not found"}, 404)
            req = self.approvals.request(tenant, "delete", {kind.value: [name]}, entry.id, entry.label)
            self.audit(request, 202, f"deletion needs a second admin: request {req.id}", entry.id)
            return JSONResponse({"approval_required": req.id, "count": req.count}, 202)
        except ObjectNotFound:
            return JSONResponse({"error": "not found"}, 404)
        except CerminError as e:
            return JSONResponse({"error": str(e)}, 500)

    def _read(self, request: Request, backend: LocalBackend, kind: Kind, name: str, method: str) -> Response:
        size = backend.size(kind, name)
        if method == "HEAD":
            return Response(headers={"content-length": str(size)})
        rng = request.headers.get("range", "")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m is None or (not m[1] and not m[2]):
                return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
            first, last = _range_number(m[1]), _range_number(m[2])
            if m[1]:
                start = first
                end = min(last, size - 1) if m[2] else size - 1
            else:  # suffix: the last N bytes
                start, end = max(0, size - last), size - 1
            if start >= size or end < start:
                return Response(status_code=416, headers={"content-range": f"bytes */{size}"})
            data = backend.load(kind, name, start, end - start + 1)
            return Response(
                data, status_code=206, headers={"content-range": f"bytes {start}-{start + len(data) - 1}/{size}"}
            )
        return Response(backend.load(kind, name), media_type="application/octet-stream")

    # ---- locks: owned by the token that made them ----------------------------------------------------
    def _owner_path(self, tenant: str, name: str) -> str:
        return os.path.join(self.owners_dir, tenant, name)

    def lock_owner(self, tenant: str, name: str) -> str:
        try:
            with open(self._owner_path(tenant, name)) as f:
                return json.load(f).get("token", "")
        except (OSError, ValueError, AttributeError):
            return ""

    def _write_owner(self, tenant: str, name: str, entry: TokenEntry) -> None:
        """Record the lock's creator. Called only by the request whose link created the lock, so a
        re-upload of the same bytes (409) never touches it; replaces a leftover record atomically."""
        owner = self._owner_path(tenant, name)
        d = os.path.dirname(owner)
        os.makedirs(d, mode=0o700, exist_ok=True)
        tmp = os.path.join(d, f".tmp-{name[:16]}-{secrets.token_hex(6)}")
        try:
            with open(tmp, "x") as f:
                json.dump({"token": entry.id, "role": entry.role, "time": time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, owner)
        except BaseException:
            _unlink(tmp)
            raise
        _fsync_dir(d)

    def _remove_lock(self, request: Request, tenant: str, entry: TokenEntry, name: str) -> Response:
        st = self.state(tenant)
        st.files.ensure()
        with st.files.locks.hold():  # not while the same lock is being created and its owner recorded
            owner = self.lock_owner(tenant, name)
            if entry.id != owner and entry.role != "admin":
                self.audit(request, 403, f"lock {name[:12]} belongs to token {owner or '(unknown)'}", entry.id)
                return JSONResponse({"error": "this lock was created by another token (an admin can remove it)"}, 403)
            try:
                size = st.backend.size(Kind.LOCK, name)
                st.backend.remove(Kind.LOCK, name)
            except ObjectNotFound:
                return JSONResponse({"error": "not found"}, 404)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(self._owner_path(tenant, name))
            self._unreserve(st, size)
        mine = entry.id == owner
        who = "its owner" if mine else f"admin (owner {owner or 'unknown'})"
        self.audit(request, 204, f"lock {name[:12]} removed by {who}", entry.id, throttle=mine)
        return Response(status_code=204)

    # ---- uploads: streamed to disk, checked, then linked (write-once) --------------------------------
    async def upload(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        kind, name = self.kind_name(request)
        need = LOCK if kind is Kind.LOCK else WRITE
        tmp = None
        try:
            length = request.headers.get("content-length")
            limit = min(MAX_LOCK_SIZE, self.max_object_size) if kind is Kind.LOCK else self.max_object_size
            st = self.state(tenant)
            entry = await run_in_threadpool(self._admit, request, st, tenant, kind, name, need, length, limit)
            assert kind is not None
            if length is not None and int(length) <= SMALL_BODY:
                # small (indexes, snapshots, trees, locks, most packs of a small backup): read whole,
                # then written, synced, checked and linked in ONE worker-thread call
                body = await self._read_small(request, kind, entry, limit)
                return await run_in_threadpool(self._store_small, request, st, tenant, kind, name, body, entry)
            tmp, size, digest = await self._receive(request, st.backend, kind, name, entry, limit)
            if kind is not Kind.CONFIG and digest != name:
                raise _refused(400, "content does not match its name", entry)
            return await run_in_threadpool(self._commit, request, st, tenant, kind, name, tmp, size, entry)
        except Refused as e:
            if e.audit:
                await run_in_threadpool(self.audit, request, e.status, str(e), getattr(e, "token_id", ""))
            return JSONResponse({"error": str(e)}, e.status)
        except ClientDisconnect:
            return Response(status_code=400)
        except CerminError as e:
            return JSONResponse({"error": str(e)}, 500)
        finally:
            if tmp is not None:
                await run_in_threadpool(_unlink, tmp)

    def _admit(
        self,
        request: Request,
        st: TenantState,
        tenant: str,
        kind: Kind | None,
        name: str,
        need: str,
        length: str | None,
        limit: int,
    ) -> TokenEntry:
        """Everything an upload needs before its body is read, in one worker-thread call."""
        entry = self.authorize(request, tenant, need)
        if length is not None and (not length.isdigit() or len(length) > 18):
            raise _refused(400, "bad Content-Length", entry)
        if length is not None and int(length) > limit:
            raise _refused(413, _too_large(kind, limit), entry)  # type: ignore[arg-type]
        if self.bad_name(kind, name):
            raise _refused(400, "bad object name", entry)
        assert kind is not None
        self._precheck(st, tenant, kind, name, int(length or 0), entry)
        return entry

    async def _read_small(self, request: Request, kind: Kind, entry: TokenEntry, limit: int) -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _refused(413, _too_large(kind, limit), entry)
        return bytes(body)

    def _store_small(
        self, request: Request, st: TenantState, tenant: str, kind: Kind, name: str, body: bytes, entry: TokenEntry
    ) -> Response:
        """Hash, check, write, sync and link a small body (in a worker thread)."""
        import blake3

        if kind is not Kind.CONFIG and blake3.blake3(body).hexdigest() != name:
            raise _refused(400, "content does not match its name", entry)
        final = st.backend._path(kind, name)
        tmp = os.path.join(os.path.dirname(final), f".tmp-{name[:16]}-{secrets.token_hex(6)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            return self._commit(request, st, tenant, kind, name, tmp, len(body), entry)
        finally:
            _unlink(tmp)

    def _precheck(self, st: TenantState, tenant: str, kind: Kind, name: str, length: int, entry: TokenEntry) -> None:
        backend = st.backend
        st.files.ensure()
        if not os.path.isdir(os.path.join(backend.root, Kind.KEY.value)):
            with st.files.mutex.hold():  # first write of a new tenant repository: lay out its directories
                if not os.path.isdir(os.path.join(backend.root, Kind.KEY.value)):
                    backend.create()
        os.makedirs(os.path.dirname(backend._path(kind, name)), exist_ok=True)
        if kind is Kind.LOCK:
            self._check_lock_count(st, entry)  # early, before the body is read; again when it is linked
        if self.quota_bytes or self.quota_objects:
            used_bytes, used_objects = self._usage(st)
            if self.quota_objects and used_objects + 1 > self.quota_objects:
                raise _refused(507, f"tenant quota of {self.quota_objects} objects reached", entry)
            if self.quota_bytes and used_bytes + length > self.quota_bytes:
                raise _refused(507, f"tenant quota of {self.quota_bytes} bytes reached", entry)

    def _check_lock_count(self, st: TenantState, entry: TokenEntry) -> None:
        n = sum(1 for _ in st.backend.list(Kind.LOCK))
        if n >= self.max_locks:
            raise _refused(429, f"too many lock files ({n}); an admin can remove stale ones (`cermin unlock`)", entry)

    def _usage(self, st: TenantState) -> tuple[int, int]:
        """(bytes, objects) of the tenant, locks included; counted by listing once per server run,
        then kept in a file every worker updates under the tenant's mutex."""
        with st.files.mutex.hold():
            used = st.files.usage()
            if used is None:
                b = n = 0
                for k in Kind:  # locks included: they take disk space too
                    for _name, size in st.backend.list(k):
                        b += size
                        n += 1
                used = (b, n)
                st.files.set_usage(used)
            return used

    async def _receive(
        self, request: Request, backend: LocalBackend, kind: Kind, name: str, entry: TokenEntry, limit: int
    ):
        """Stream the body into a temporary file next to its final name, hashing on the way; refuse
        as soon as it passes the size limit (chunked bodies have no Content-Length to check first)."""
        import blake3

        final = backend._path(kind, name)
        tmp = os.path.join(os.path.dirname(final), f".tmp-{name[:16]}-{secrets.token_hex(6)}")
        fd = await run_in_threadpool(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        h = blake3.blake3()
        size = 0
        buf = bytearray()

        def flush(data: bytes) -> None:  # in a worker thread
            h.update(data)
            _write_all(fd, data)

        try:
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise _refused(413, _too_large(kind, limit), entry)
                    buf += chunk
                    if len(buf) >= WRITE_BUF:
                        data, buf = bytes(buf), bytearray()
                        await run_in_threadpool(flush, data)
                if buf:
                    await run_in_threadpool(flush, bytes(buf))
                await run_in_threadpool(os.fsync, fd)
            finally:
                await run_in_threadpool(os.close, fd)
        except BaseException:
            await run_in_threadpool(_unlink, tmp)
            raise
        return tmp, size, h.hexdigest()

    def _commit(
        self,
        request: Request,
        st: TenantState,
        tenant: str,
        kind: Kind,
        name: str,
        tmp: str,
        size: int,
        entry: TokenEntry,
    ) -> Response:
        final = st.backend._path(kind, name)
        st.files.ensure()
        with st.files.gate.shared():  # not while an approved deletion executes (in any worker)
            if self.quota_bytes or self.quota_objects:
                with st.files.mutex.hold():
                    b, n = self._usage(st)
                    if (self.quota_objects and n + 1 > self.quota_objects) or (
                        self.quota_bytes and b + size > self.quota_bytes
                    ):
                        raise _refused(507, "tenant quota reached", entry)
                    st.files.set_usage((b + size, n + 1))  # reserved; given back if the link fails
            try:
                os.chmod(tmp, 0o400)
                os.utime(tmp)  # its creation time, for the approval re-check
                if kind is Kind.LOCK:
                    self._link_lock(st, tenant, name, tmp, final, entry)
                else:
                    os.link(tmp, final)
                _fsync_dir(os.path.dirname(final))
            except FileExistsError:
                self._unreserve(st, size)
                if self.is_hidden(tenant, kind, name):  # needed again: the queued deletion dies
                    ids = self.approvals.cancel_for(tenant, kind.value, name, f"{kind.value}/{name} uploaded again")
                    self.audit(request, 201, f"re-upload cancelled queued deletion {','.join(ids)}", entry.id)
                    return Response(status_code=201)
                raise _refused(409, "object exists (write-once)", entry) from None
            except OSError as e:
                self._unreserve(st, size)
                raise CerminError(f"cannot store {kind.value}/{name[:12]}: {e.strerror or e}") from None
            if kind in CHANGE_KINDS:
                st.files.mark_changed(kind.value)
        return Response(status_code=201)

    def _link_lock(self, st: TenantState, tenant: str, name: str, tmp: str, final: str, entry: TokenEntry) -> None:
        """Create the lock (FileExistsError if it exists: its owner record stays as it is), then
        record this token as its owner; if that fails, the lock goes again."""
        with st.files.locks.hold():
            self._check_lock_count(st, entry)  # exact: every worker counts under this lock
            os.link(tmp, final)
            try:
                self._write_owner(tenant, name, entry)
            except BaseException:
                _unlink(final)
                raise

    def _unreserve(self, st: TenantState, size: int) -> None:
        if self.quota_bytes or self.quota_objects:
            st.files.adjust_usage(-size, -1)

    # ---- deletions: one request per plan, executed after a second admin approves ------------------
    async def delete_many(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        try:
            entry = await run_in_threadpool(self.authorize, request, tenant, DESTROY)
            length = request.headers.get("content-length", "")
            if not length.isdigit() or int(length) > self.max_object_size:
                raise _refused(413, "a deletion request needs a Content-Length within the size limit", entry)
            body = await request.body()
        except Refused as e:
            if e.audit:
                await run_in_threadpool(self.audit, request, e.status, str(e), getattr(e, "token_id", ""))
            return JSONResponse({"error": str(e)}, e.status)
        return await self._run(request, self._delete_many, entry, body)

    def _delete_many(self, request: Request, entry: TokenEntry, body: bytes) -> Response:
        tenant = request.path_params["tenant"]
        try:
            items = json.loads(body)["objects"]
            assert isinstance(items, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise _refused(400, 'body must be {"objects": [[kind, name], ...]}', entry) from None
        backend = self.backend(tenant)
        hidden = self.hidden(tenant)
        objects: dict[str, list[str]] = {}
        missing = 0
        for it in items:
            if not (isinstance(it, list) and len(it) == 2 and all(isinstance(x, str) for x in it)):
                raise _refused(400, "each object is [kind, name]", entry)
            kind = KINDS.get(it[0])
            if kind in (None, Kind.LOCK, Kind.CONFIG) or self.bad_name(kind, it[1]):
                raise _refused(400, f"cannot request deletion of {clip(it[0], 20)}/{clip(it[1], 70)}", entry)
            if not backend.exists(kind, it[1]) or it[1] in hidden.get(kind.value, ()):
                missing += 1
                continue
            names = objects.setdefault(kind.value, [])
            if it[1] not in names:
                names.append(it[1])
        if not objects:
            return JSONResponse({"approval_required": None, "count": 0, "missing": missing}, 200)
        req = self.approvals.request(tenant, "delete", objects, entry.id, entry.label)
        self.audit(request, 202, f"deletion of {req.count} objects needs a second admin: request {req.id}", entry.id)
        return JSONResponse({"approval_required": req.id, "count": req.count, "missing": missing}, 202)

    async def tenant(self, request: Request) -> Response:
        return await self._run(request, self._tenant)

    def _tenant(self, request: Request) -> Response:
        """DELETE /{tenant}/: delete a whole tenant repository, after a second admin approves."""
        tenant = request.path_params["tenant"]
        entry = self.authorize(request, tenant, DESTROY)
        req = self.approvals.request(tenant, "delete-tenant", {}, entry.id, entry.label)
        self.audit(request, 202, f"tenant deletion needs a second admin: request {req.id}", entry.id)
        return JSONResponse({"approval_required": req.id, "count": 0}, 202)

    async def approvals_list(self, request: Request) -> Response:
        return await self._run(request, self._approvals_list)

    def _approvals_list(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        self.authorize(request, tenant, ADMIN)
        out = []
        for r in self.approvals.list(tenant, self.alive_admin):
            d = r.to_json()
            e = self.tokens.get(r.requested_by)
            d["requested_by_label"] = e.label if e else r.requested_by_label
            out.append(d)
        return JSONResponse(out)

    async def approvals_decide(self, request: Request) -> Response:
        return await self._run(request, self._approvals_decide)

    def _approvals_decide(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        entry = self.authorize(request, tenant, ADMIN)
        approve = request.path_params["verb"] == "approve"
        if request.path_params["verb"] not in ("approve", "reject"):
            return JSONResponse({"error": "use approve or reject"}, 404)
        st = self.state(tenant)
        st.files.ensure()
        # an approval freezes the tenant (in every worker) before it takes the approvals file: uploads
        # take the gate first too, then (re-uploading a queued object) the approvals file
        gate = st.files.gate.exclusive() if approve else contextlib.nullcontext()
        try:
            with gate:
                r = self.approvals.decide(
                    tenant,
                    request.path_params["rid"],
                    entry.id,
                    approve,
                    lambda r: self._execute(st, tenant, r),
                    self.alive_admin,
                )
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
        what = "the tenant" if r.action == "delete-tenant" else f"{r.count} objects ({r.to_json()['kind']})"
        self.audit(request, 200, f"request {r.id} {r.status}: delete {what}", entry.id)
        return JSONResponse(r.to_json())

    def _execute(self, st: TenantState, tenant: str, r) -> None:
        """Run an approved request. The caller holds the tenant's gate exclusively: no object or lock
        is created (by any worker) while we check and delete."""
        backend = st.backend
        st.files.ensure()
        if r.action == "delete-tenant":
            import shutil

            shutil.rmtree(backend.root, ignore_errors=True)
            shutil.rmtree(os.path.join(self.owners_dir, tenant), ignore_errors=True)
            with st.files.mutex.hold():
                st.files.set_usage(None)
            self.approvals.drop_tenant(tenant, r.id)
            return
        bad = set(r.objects) - {Kind.DATA.value, Kind.INDEX.value, Kind.SNAPSHOT.value, Kind.KEY.value, Kind.AUX.value}
        if bad:  # e.g. config, queued by an older server: deleting it loses the repository
            raise StaleRequest(f"{', '.join(sorted(bad))} cannot be deleted this way (only with the whole tenant)")
        self._recheck(st, r)
        freed = n = 0
        for kind_name, names in r.objects.items():
            kind = KINDS[kind_name]
            for name in names:
                try:
                    size = backend.size(kind, name)
                    backend.remove(kind, name)
                    freed, n = freed + size, n + 1
                except ObjectNotFound:
                    pass
        st.files.adjust_usage(-freed, -n)

    def _recheck(self, st: TenantState, r) -> None:
        """Refuse to delete while a client works, or when something new may reference the objects."""
        now = time.time()
        fresh = [n for n, _ in st.backend.list(Kind.LOCK) if now - _mtime(st.backend, Kind.LOCK, n) < LOCK_FRESH]
        if fresh:
            raise ValueError(
                f"the repository is in use ({plural(len(fresh), 'lock')} held): approve again when no client is "
                "working (or remove stale locks with an admin token: `cermin unlock`)"
            )
        kinds = set(r.objects)
        if kinds & set(HIDDEN_KINDS):  # packs or index files: anything new may reference them
            watch: tuple[Kind, ...] = CHANGE_KINDS
        elif Kind.SNAPSHOT.value in kinds:  # snapshots: a protection record may have come since
            watch = (Kind.AUX,)
        else:
            watch = ()
        since = r.requested_at_ns or int(r.requested_at * 1e9)
        for k in watch:
            if st.files.changed_ns(k.value) > since:
                raise StaleRequest(f"{k.value} objects were added since the request: plan it again")
            for n, _ in st.backend.list(k):
                if _mtime_ns(st.backend, k, n) > since:
                    raise StaleRequest(
                        f"{k.value}/{n[:12]} was added after the request and may need what it deletes: "
                        "plan it again (e.g. run prune again)"
                    )

    async def health(self, request: Request) -> Response:
        """GET /_health: answered on the event loop without touching the disk (no token needed, names
        nothing but the worker's process id): a load balancer's probe, and the proof in the tests
        that no request blocks the loop."""
        return JSONResponse({"ok": True, "worker": os.getpid()})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/_health", self.health, methods=["GET"]),
                Route("/{tenant}/_approvals", self.approvals_list, methods=["GET"]),
                Route("/{tenant}/_approvals/{rid}/{verb:str}", self.approvals_decide, methods=["POST"]),
                Route("/{tenant}/_delete", self.delete_many, methods=["POST"]),
                Route("/{tenant}/", self.tenant, methods=["DELETE"]),
                Route("/{tenant}/{kind}/", self.list, methods=["GET"]),
                Route("/{tenant}/{kind}/{name}", self.object, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
            ]
        )


def _refused(status: int, message: str, entry: TokenEntry | None = None) -> Refused:
    e = Refused(status, message)
    e.token_id = entry.id if entry else ""  # type: ignore[attr-defined]
    return e


def _too_large(kind: Kind, limit: int) -> str:
    what = "a lock file" if kind is Kind.LOCK else "object"
    return f"{what} larger than the server's limit of {limit} bytes"


def _range_number(digits: str) -> int:
    """A Range bound; one too long to be an offset in any object counts as 'beyond the end'."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_RANGE_DIGITS else 1 << 62


def _write_all(fd: int, data: bytes) -> None:
    """Write all of data (called in worker threads only; tests replace it to stall the disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _mtime_ns(backend: LocalBackend, kind: Kind, name: str) -> int:
    try:
        return os.stat(backend._path(kind, name)).st_mtime_ns
    except OSError:
        return 0


def _mtime(backend: LocalBackend, kind: Kind, name: str) -> float:
    return _mtime_ns(backend, kind, name) / 1e9


def build_app(root: str, window: float | None = None, **limits) -> Starlette:
    """The ASGI app for `cermin serve`. Files and directories it creates are private (umask 077)."""
    os.umask(0o077)
    return Server(root, window, **limits).app()


APP_ENV = "CERMIN_SERVE_APP"


def app_from_env() -> Starlette:
    """The app of one worker process of `cermin serve --workers N` (uvicorn's factory): the settings
    come from the parent through CERMIN_SERVE_APP (JSON: root, window, limits, run id; no secret)."""
    cfg = json.loads(os.environ[APP_ENV])
    return build_app(cfg["root"], cfg["window"], run=cfg["run"], **cfg["limits"])
