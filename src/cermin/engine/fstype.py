"""Which file systems report a regular file's size truthfully: there a size-0 file is empty and the
backup finishes it without opening it (`EmptyFiles`).

A file system on a block device (ext4, xfs, ... : a device number with a major other than 0) always
does. Among the rest (anonymous device numbers), tmpfs, btrfs, ZFS and bcachefs do too, but procfs,
sysfs, debugfs, FUSE with direct_io and NFS (cached attributes) may report 0 for a file that holds
data: those are read like any other file. The type comes from fstatfs(2), which Python's `os` does
not expose (`os.statvfs` has no f_type), through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import platform

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
_F_TYPE = ctypes.c_uint if platform.machine() == "s390x" else ctypes.c_ulong
_STATFS_BYTES = 256
_fstatfs = None


def fs_magic(fd: int) -> int | None:
    """f_type of the file system holding the open `fd` (an O_PATH fd will do), or None."""
    global _fstatfs
    if _fstatfs is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _fstatfs = libc.fstatfs
            _fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
            _fstatfs.restype = ctypes.c_int
        except (OSError, AttributeError):
            _fstatfs = False
    if _fstatfs is False:
        return None
    buf = ctypes.create_string_buffer(_STATFS_BYTES)
    if _fstatfs(fd, buf) != 0:
        return None
    return _F_TYPE.from_buffer(buf).value & 0xFFFFFFFF


class EmptyFiles:
    """Per backup: whether a size-0 file is known empty, decided once per device number.

    An unknown device is looked up through the file itself (opened O_PATH, never followed, and only
    believed when the opened file is still on that device): a file bind-mounted from procfs into a
    tmpfs directory has procfs's device number, not the directory's."""

    __slots__ = ("_devices",)

    def __init__(self) -> None:
        self._devices: dict[int, bool] = {}

    def known(self, st: os.stat_result, dir_fd: int, name: bytes) -> bool:
        if st.st_size != 0:
            return False
        dev = st.st_dev
        exact = self._devices.get(dev)
        if exact is None:
            if os.major(dev) != 0:
                exact = True
            else:
                exact = self._look_up(dev, dir_fd, name)
                if exact is None:
                    return False  # not settled for the device: read this file, ask again next time
            self._devices[dev] = exact
        return exact

    @staticmethod
    def _look_up(dev: int, dir_fd: int, name: bytes) -> bool | None:
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_dev != dev:  # replaced since the walker's stat
                return None
            magic = fs_magic(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        return magic is not None and magic in EXACT_SIZE_MAGIC
