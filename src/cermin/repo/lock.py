"""Repository locks: shared for backup/restore/check, exclusive for prune/repair.

A lock is a sealed object in locks/. It is refreshed (new lock written, old one removed) every
REFRESH seconds; a lock older than STALE seconds, or held by a dead process on this host, is stale
and ignored, so a crashed client never blocks the repository for long. A lock dated more than
CLOCK_SKEW seconds in the future is stale too: its age cannot be known, and trusting it would let
anyone who can write locks/ block every backup for as long as they like (clients must keep their
clocks within the allowance, as S3 request signing already demands).

A repository we cannot write (a read-only mount, a read-only credential or token: the storage
answers EROFS, EACCES or 403) cannot hold our lock. Read-only work (READ_ONLY_OPERATIONS) then goes
on without one and says so once as a warning: a shared lock only keeps a concurrent prune from
deleting packs under a reader, and nothing else is at stake. Every other operation stops with one
line naming the read-only repository (ReadOnlyRepository).
"""

from __future__ import annotations

import os
import socket
import threading
import time

import msgspec

from cermin.backend.base import Kind
from cermin.errors import AccessDenied, CerminError, CorruptObject, ObjectNotFound, ReadOnlyRepository, RepositoryLocked
from cermin.format import records
from cermin.format.records import Lock
from cermin.repo.repository import Repository
from cermin.repo.snapshots import CLOCK_SKEW, timestamp
from cermin.util import now_rfc3339, username

REFRESH = 300.0
STALE = 1800.0

# Operations that write nothing but their lock: on a read-only repository they run without one.
READ_ONLY_OPERATIONS = frozenset(
    {"restore", "dump", "check", "ls", "snapshots", "diff", "find", "stats", "cat", "mount", "key list"}
    | {"mirror-source", "mirror verify"}  # the source side of `mirror` only reads A; verify reads both
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lock: Lock, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    t = timestamp(lock.time)
    if t is None:
        return True
    age = now - t
    if age > STALE or age < -CLOCK_SKEW:
        return True
    return lock.hostname == socket.gethostname() and not _pid_alive(lock.pid)


def read_locks(repo: Repository) -> list[tuple[str, Lock | None]]:
    out = []
    for name, _ in repo.backend.list(Kind.LOCK):
        try:
            out.append((name, records.decode(repo.load_object(Kind.LOCK, name), Lock)))
        except ObjectNotFound:
            continue  # removed while we listed
        except (CorruptObject, msgspec.DecodeError, msgspec.ValidationError):
            out.append((name, None))  # damaged: `unlock` removes it; an I/O error propagates instead
    return out


class RepoLock:
    """`readonly_ok`: when the repository refuses the lock write as read-only, go on without a lock
    (with one warning through `repo.warn`) instead of failing. Default: for a shared lock taken by
    one of READ_ONLY_OPERATIONS. `unlocked` is then the reason; `name` stays None."""

    def __init__(self, repo: Repository, exclusive: bool, operation: str, readonly_ok: bool | None = None) -> None:
        self.repo = repo
        self.exclusive = exclusive
        self.operation = operation
        if readonly_ok is None:
            readonly_ok = not exclusive and operation in READ_ONLY_OPERATIONS
        self.readonly_ok = readonly_ok
        self.unlocked: str | None = None
        self.name: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._written_at = 0.0  # monotonic time of the last successful lock write

    def _write(self) -> str:
        t = time.monotonic()
        lock = Lock(
            time=now_rfc3339(),
            exclusive=self.exclusive,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            username=username(),
            operation=self.operation,
        )
        name = self.repo.save_object(Kind.LOCK, records.encode(lock))
        self._written_at = t
        return name

    def ensure_fresh(self) -> None:
        """Before destructive steps: our lock must still exist and be far from going stale."""
        with self._mutex:
            name = self.name
        if name is None or time.monotonic() - self._written_at > STALE - 2 * REFRESH:
            raise RepositoryLocked("the lock could not be refreshed in time; stopped before deleting anything")
        if not self.repo.backend.exists(Kind.LOCK, name):
            raise RepositoryLocked("our lock was removed by someone else; stopped before deleting anything")

    def acquire(self) -> RepoLock:
        # Write ours first, then look: two racing clients both see each other and back off.
        try:
            self.name = self._write()
        except AccessDenied as e:  # ReadOnlyRepository, or a 403 from a read-only credential or token
            where = self.repo.backend.location
            if not self.readonly_ok:
                raise ReadOnlyRepository(
                    f"{self.operation or 'this command'} needs to write to the repository at {where}, "
                    f"which is read-only to us ({e})"
                ) from None
            self.unlocked = str(e)
            self.repo.warn(
                f"the repository at {where} is read-only to us or full ({e}): {self.operation} goes on without a lock "
                "(a shared lock only keeps a concurrent `prune` from deleting data this command reads; "
                "run no prune meanwhile)"
            )
            return self
        for name, lock in read_locks(self.repo):
            if name == self.name or lock is None or is_stale(lock):
                continue
            if self.exclusive or lock.exclusive:
                self._remove(self.name)
                self.name = None
                kind = "exclusively" if lock.exclusive else "shared"
                raise RepositoryLocked(
                    f"repository is locked {kind} by {lock.operation or 'another process'} "
                    f"(pid {lock.pid} on {lock.hostname} since {lock.time}); "
                    f"use `cermin unlock` if that process is gone"
                )
        self._thread = threading.Thread(target=self._refresh_loop, name="cermin-lock", daemon=True)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH):
            self.refresh()

    def refresh(self) -> bool:
        """Rewrite the lock (a new object, then the old one removed); False when the write failed
        (the next refresh tries again; `ensure_fresh` stops destructive work before it goes stale)."""
        try:
            new = self._write()
        except CerminError:
            return False
        with self._mutex:
            old, self.name = self.name, new
        if old:
            self._remove(old)
        return True

    def _remove(self, name: str) -> None:
        try:
            self.repo.backend.remove(Kind.LOCK, name)
        except (ObjectNotFound, CerminError):
            pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            name, self.name = self.name, None
        if name:
            self._remove(name)

    def __enter__(self) -> RepoLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_stale_locks(repo: Repository, all_locks: bool = False) -> list[str]:
    removed = []
    for name, lock in read_locks(repo):
        if all_locks or lock is None or is_stale(lock):
            try:
                repo.backend.remove(Kind.LOCK, name)
                removed.append(name)
            except ObjectNotFound:
                pass
    return removed
