"""Tokens with a role per tenant, stored hashed, checked in constant time.

A token reads `cmn_<id>_<secret>`: the id selects the entry, the secret's SHA-256 is compared with
hmac.compare_digest. The server never stores a token, only its hash; `token add` prints it once.
Roles: `backup` (read, list, create new objects, create locks and remove its own), `read` (read and
list, create locks and remove its own: check, restore, mirror), `admin` (also remove any lock, request
destructive operations, and approve other admins' ones). The token file is changed under a file lock
and replaced atomically, so concurrent `token add` runs lose nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import asdict, dataclass

from cermin.errors import UsageError
from cermin.util import now_rfc3339

ROLES = ("backup", "read", "admin")
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass
class TokenEntry:
    id: str
    tenant: str
    role: str
    hash: str
    created: str
    label: str = ""


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not TENANT_RE.match(tenant):
        raise UsageError(f"bad tenant name {tenant!r}: lowercase letters, digits, - and _ (max 63)")
    return tenant


class TokenStore:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "tokens.json")
        self._lock = threading.Lock()
        self._entries: dict[str, TokenEntry] = {}
        self._mtime: tuple = ()
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        os.chmod(state_dir, 0o700)

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._entries = {}
            return
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stamp != self._mtime:  # tokens added or revoked by the CLI take effect at once
            with open(self.path) as f:
                self._entries = {e["id"]: TokenEntry(**e) for e in json.load(f)}
            self._mtime = stamp

    def _save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".tokens-")  # 0600, unique
        try:
            with os.fdopen(fd, "w") as f:
                json.dump([asdict(e) for e in self._entries.values()], f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _exclusive(self):
        """Read-modify-write under a file lock: `token add` from several processes at once (and the
        server) never lose each other's changes."""
        with self._lock:
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._mtime = ()  # re-read under the lock, whatever the cache says
                self._load()
                yield
            finally:
                os.close(fd)

    def add(self, tenant: str, role: str, label: str = "") -> tuple[TokenEntry, str]:
        check_tenant(tenant)
        if role not in ROLES:
            raise UsageError(f"role must be one of {', '.join(ROLES)}")
        with self._exclusive():
            tid = secrets.token_hex(6)
            while tid in self._entries:
                tid = secrets.token_hex(6)
            secret = secrets.token_urlsafe(32)
            entry = TokenEntry(tid, tenant, role, _hash(secret), now_rfc3339(), label)
            self._entries[tid] = entry
            self._save()
        return entry, f"cmn_{tid}_{secret}"

    def revoke(self, tid: str) -> None:
        with self._exclusive():
            if self._entries.pop(tid, None) is None:
                raise UsageError(f"no token {tid}")
            self._save()

    def list(self) -> list[TokenEntry]:
        with self._lock:
            self._load()
            return list(self._entries.values())

    def get(self, tid: str) -> TokenEntry | None:
        with self._lock:
            self._load()
            return self._entries.get(tid)

    def verify(self, token: str) -> TokenEntry | None:
        """The entry for a presented token, or None. Constant time in the secret."""
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "cmn":
            return None
        with self._lock:
            self._load()
            entry = self._entries.get(parts[1])
        expected = entry.hash if entry else _hash("no such token")
        ok = hmac.compare_digest(_hash(parts[2]), expected)
        return entry if (ok and entry is not None) else None
