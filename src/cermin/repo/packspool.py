"""Packs filled in an unnamed temporary file, for stores that take whole objects (S3, `cermin serve`,
and any store behind a wrapper): the pack being filled sits on local disk, not in memory, and is read
back whole only to be saved through the backend (retries, verification and all), like a pack built in
memory. The file is made with O_TMPFILE in the cache directory: it has no name, so a killed process
leaves nothing behind, and it holds only the pack's ciphertext."""

from __future__ import annotations

import errno
import os

from cermin.errors import CerminError
from cermin.util import write_all


class TempSpool:
    whole = True

    def __init__(self, fd: int, where: str) -> None:
        self.fd = fd
        self.where = where
        self.size = 0

    def write(self, parts: list) -> None:
        try:
            write_all(self.fd, parts)
        except OSError as e:
            what = "no space left on device" if e.errno == errno.ENOSPC else e.strerror or str(e)
            raise CerminError(f"cannot write a temporary pack in {self.where}: {what}") from None
        self.size += sum(len(p) for p in parts)

    def read(self) -> bytes:
        """Everything written, in one buffer."""
        data = os.pread(self.fd, self.size, 0)
        while len(data) < self.size:  # a regular file reads whole; continue if it ever does not
            more = os.pread(self.fd, self.size - len(data), len(data))
            if not more:
                raise CerminError(f"a temporary pack in {self.where} lost its end")
            data += more
        return data

    def commit(self, name: str) -> None:
        raise CerminError("internal error: a temporary pack is read back and saved, never committed")

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_temp() -> TempSpool | None:
    """A new temporary pack file, or None (no O_TMPFILE there, or the directory cannot be made):
    the pack then stays in memory, as before."""
    from cermin.repo.localstate import cache_root

    where = os.path.join(cache_root(), "tmp")
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        fd = os.open(where, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        return None
    return TempSpool(fd, where)
