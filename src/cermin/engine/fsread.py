"""Reading the filesystem for backup: paths built on demand, exclusion patterns, sparse-aware
reads, safe opens and cache-directory tags."""

from __future__ import annotations

import errno
import fnmatch
import os

CACHEDIR_TAG = b"CACHEDIR.TAG"
CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
_O_NOATIME = getattr(os, "O_NOATIME", 0)


class WalkPath:
    """Path of the directory being walked, built only when a message needs it."""

    __slots__ = ("parent", "name")

    def __init__(self, parent: WalkPath | None, name: bytes) -> None:
        self.parent = parent
        self.name = name

    def join(self, name: bytes) -> bytes:
        parts = [name]
        p: WalkPath | None = self
        while p is not None:
            parts.append(p.name)
            p = p.parent
        return b"/".join(reversed(parts)).replace(b"//", b"/")

    def full(self) -> bytes:
        """This directory's own path."""
        parts = []
        p: WalkPath | None = self
        while p is not None:
            parts.append(p.name)
            p = p.parent
        return b"/".join(reversed(parts)).replace(b"//", b"/") or b"/"


class Excluder:
    def __init__(self, patterns: list[str]) -> None:
        self.base: list[bytes] = []
        self.full: list[bytes] = []
        for p in patterns:
            b = os.fsencode(p.rstrip("/"))
            if not b:
                continue
            if b.startswith(b"/"):
                self.full.append(b)
            elif b"/" in b:
                self.full.append(b"*/" + b)
            else:
                self.base.append(b)

    def __bool__(self) -> bool:
        return bool(self.base or self.full)

    def excluded(self, name: bytes, path: bytes) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.base) or any(
            fnmatch.fnmatchcase(path, p) for p in self.full
        )


class SparseReader:
    """readinto() that fills holes with zeros from memory instead of reading them (SEEK_DATA/SEEK_HOLE)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self._zeros = b""

    def readinto(self, b) -> int:
        n, pos, fd = len(b), self.pos, self.fd
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:  # ENXIO: only a hole (or nothing) after pos
            if e.errno != errno.ENXIO:
                raise
            data = os.fstat(fd).st_size
            if data <= pos:
                return 0
        if data > pos:
            k = min(n, data - pos)
            if len(self._zeros) < k:
                self._zeros = bytes(max(k, 1 << 22))
            b[:k] = memoryview(self._zeros)[:k]
        else:
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            k = os.preadv(fd, [b[: min(n, hole - pos)]], pos) if hole > pos else 0
        self.pos += k
        return k


def open_for_read(name: bytes, dfd: int) -> int:
    """Open a file the walker stat()ed as regular, never following a symlink and never blocking on a
    FIFO swapped in since. The reader fstat()s the fd before reading: a file replaced by a
    non-regular one is refused there (engine/backup/workers.py `read_one`)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        return os.open(name, flags | _O_NOATIME, dir_fd=dfd)
    except PermissionError:
        return os.open(name, flags, dir_fd=dfd)  # O_NOATIME needs ownership


def is_cache_dir(dfd: int) -> bool:
    try:
        fd = os.open(CACHEDIR_TAG, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError:
        return False
    try:
        return os.read(fd, len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    finally:
        os.close(fd)
