"""Which file systems report a regular file's size truthfully: there a size-0 file is empty and the
backup finishes it without opening it (`EmptyFiles`).

A file system on a block device (ext4, xfs, ... : a device number with a major other than 0) always
does. Among the rest (anonymous device numbers), tmpfs, btrfs, ZFS and bcachefs do too, but procfs,
sysfs, debugfs, FUSE with direct_io and NFS (cached attributes) may report 0 for a file that holds
data: those are read like any other file. The type comes from fstatfs(2), which Python's `os` does
not expose (`os.statvfs` has no f_type), through ctypes; without it every such file is read.
"""

from __future__ import annotations

import os

# statfs(2) f_type of the anonymous-device file systems whose sizes are exact (linux/magic.h).
EXACT_SIZE_MAGIC = frozenset(
    {
        0x01021994,  # TMPFS_MAGIC
        0x858458F6,  # RAMFS_MAGIC
        0x9123683E,  # BTRFS_SUPER_MAGIC (each subvolume has its own anonymous device)
        0x2FC12FC1,  # ZFS_SUPER_MAGIC
        0xCA451A4E,  # BCACHEFS_SUPER_MAGIC
    }
)

# struct statfs starts with f_type: a long everywhere but s390x, where it is an unsigned int. The
# buffer is larger than the struct on every architecture (120 bytes on 64-bit ones).
_STATFS_BYTES = 256
_fstatfs = None


def fs_magic(fd: int) -> int | None:
    """f_type of the file system holding the open `fd` (an O_PATH fd will do), or None."""
    global _fstatfs
    if _fstatfs is None:
        try:
            import ctypes
            import platform

            libc = ctypes.CDLL(None, use_errno=True)
            f = libc.fstatfs
            f.argtypes = (ctypes.c_int, ctypes.c_void_p)
            f.restype = ctypes.c_int
            kind = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_ulong
            _fstatfs = (f, kind, ctypes.create_string_buffer)
        except (ImportError, OSError, AttributeError):
            _fstatfs = False
    if _fstatfs is False:
        return None
    f, kind, make = _fstatfs
    buf = make(_STATFS_BYTES)
    if f(fd, buf) != 0:
        return None
    return kind.from_buffer(buf).value & 0xFFFFFFFF


def exact_sizes(fd: int) -> bool:
    magic = fs_magic(fd)
    return magic is not None and magic in EXACT_SIZE_MAGIC


class EmptyFiles:
    """Per backup: whether a size-0 file is known empty.

    Decided through the directory being walked, whose open fd pins its file system: a device number
    is never trusted beyond that, since an unmounted tmpfs's number is handed to the next mount
    (procfs, a FUSE or NFS automount) as soon as it is free. The last directory's answer is kept, so
    it costs an fstat and an fstatfs per directory that holds size-0 files. A file on another device
    than its directory (bind-mounted from elsewhere) is looked up through the file itself (opened
    O_PATH, never followed, believed only when still on that device), each time."""

    __slots__ = ("_dir", "_dir_dev", "_dir_exact")

    def __init__(self) -> None:
        self._dir: object = None  # the directory (its walk job: fd numbers are reused) last asked about
        self._dir_dev = -1
        self._dir_exact = False

    def known(self, st: os.stat_result, dir_fd: int, name: bytes, directory: object) -> bool:
        """`directory`: an object that stands for the directory open as `dir_fd` while it is walked."""
        if st.st_size != 0:
            return False
        dev = st.st_dev
        if os.major(dev) != 0:
            return True
        if self._dir is not directory:
            try:
                self._dir_dev = os.fstat(dir_fd).st_dev
                self._dir_exact = exact_sizes(dir_fd)
            except OSError:
                self._dir_dev, self._dir_exact = -1, False
            self._dir = directory
        if dev == self._dir_dev:
            return self._dir_exact
        return _through_the_file(dev, dir_fd, name)


def _through_the_file(dev: int, dir_fd: int, name: bytes) -> bool:
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return os.fstat(fd).st_dev == dev and exact_sizes(fd)  # replaced since the walker's stat: read it
    except OSError:
        return False
    finally:
        os.close(fd)
