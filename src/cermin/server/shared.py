"""State that every worker process of `cermin serve` must see alike, kept on disk.

With `--workers N` the server is N processes; nothing held in one process's memory is seen by the
others. So every lock is an flock(2) on a file under ROOT/.cermin-server (each acquisition opens its
own descriptor: flock locks belong to the open file description, so threads of one process exclude
each other too), and every counter is a small file read and written under such a lock.

- `FileLock`: an exclusive lock, re-entrant within a thread (the approvals store calls itself).
- `Gate`: many uploads (shared) or one approved deletion executing (exclusive); an exclusive taker
  first takes the `intent` lock, which new shared takers pass through, so it is not starved.
- `TenantFiles`: per tenant, the gate, the lock-file mutex (`locks`: lock link + owner record,
  removal, lock count), the `mutex` guarding the usage counter and the repository's first layout,
  the usage counter itself (valid for one server run; recomputed by listing otherwise), and the last
  creation time of index, snapshot and aux objects (for the approval re-check).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


class FileLock:
    """An exclusive lock shared by threads and processes; re-entrant within one thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    @contextlib.contextmanager
    def hold(self):
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        fd = _open(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
        finally:
            os.close(fd)  # releases the flock

    @property
    def held(self) -> bool:
        return getattr(self._local, "depth", 0) > 0


class Gate:
    """Shared (uploads committing) or exclusive (an approved deletion executing), across processes.
    Exclusive takers are preferred: they hold `intent` while they wait, and shared takers pass
    through `intent` (held only for one flock call) before they take the gate."""

    def __init__(self, gate_path: str, intent_path: str) -> None:
        self.gate_path, self.intent_path = gate_path, intent_path

    @contextlib.contextmanager
    def shared(self):
        gfd = _open(self.gate_path)
        try:
            ifd = _open(self.intent_path)
            try:
                fcntl.flock(ifd, fcntl.LOCK_SH)
                fcntl.flock(gfd, fcntl.LOCK_SH)
            finally:
                os.close(ifd)
            yield
        finally:
            os.close(gfd)

    @contextlib.contextmanager
    def exclusive(self):
        ifd = _open(self.intent_path)
        try:
            fcntl.flock(ifd, fcntl.LOCK_EX)
            gfd = _open(self.gate_path)
            try:
                fcntl.flock(gfd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(gfd)
        finally:
            os.close(ifd)


class TenantFiles:
    """The shared per-tenant state of the server (see the module docstring)."""

    def __init__(self, state_dir: str, tenant: str, run: str) -> None:
        self.dir = os.path.join(state_dir, "tenants", tenant)
        self.run = run
        self._made = False
        self.gate = Gate(self._p("gate"), self._p("intent"))
        self.locks = FileLock(self._p("locks"))
        self.mutex = FileLock(self._p("mutex"))

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def ensure(self) -> None:
        """Create the state directory (in a worker thread: it touches the disk)."""
        if not self._made:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            self._made = True

    # ---- usage counter: (bytes, objects); call under `mutex` ----------------------------------------
    def usage(self) -> tuple[int, int] | None:
        """The counter if it was computed by this server run (another run's may have drifted)."""
        try:
            with open(self._p("usage")) as f:
                d = json.load(f)
            if d.get("run") == self.run:
                return int(d["bytes"]), int(d["objects"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return None

    def set_usage(self, used: tuple[int, int] | None) -> None:
        path = self._p("usage")
        if used is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump({"run": self.run, "bytes": used[0], "objects": used[1]}, f)
        os.replace(tmp, path)  # no fsync: after a crash the next run recomputes it

    def adjust_usage(self, dbytes: int, dobjects: int) -> None:
        with self.mutex.hold():
            used = self.usage()
            if used is not None:
                self.set_usage((used[0] + dbytes, used[1] + dobjects))

    # ---- last creation of objects that may reference others --------------------------------------
    def mark_changed(self, kind: str) -> None:
        path = self._p(f"changed-{kind}")
        now = time.time_ns()
        try:
            os.utime(path, ns=(now, now))
        except FileNotFoundError:
            os.close(_open(path))
            os.utime(path, ns=(now, now))

    def changed_ns(self, kind: str) -> int:
        try:
            return os.stat(self._p(f"changed-{kind}")).st_mtime_ns
        except OSError:
            return 0
