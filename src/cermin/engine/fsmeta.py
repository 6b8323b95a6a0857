"""Reading and applying filesystem metadata, always relative to an open directory fd.

Working through dir fds keeps paths of any depth usable (no PATH_MAX limit) and avoids races
with a path being swapped for a symlink between the check and the use.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from functools import lru_cache

from cermin.format.records import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SOCKET, SYMLINK, Node

IS_ROOT = os.geteuid() == 0
_XATTR_SKIP_ERRNOS = {
    errno.ENOTSUP,
    errno.EPERM,
    errno.EACCES,
    errno.ENODATA,
    errno.EOPNOTSUPP,
    errno.EBADF,
    errno.ENOENT,
    errno.ELOOP,
    errno.EINVAL,
}


def node_type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    if stat.S_ISSOCK(mode):
        return SOCKET
    return None


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=4096)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def node_from_stat(name: bytes, st: os.stat_result, ntype: str) -> Node:
    return Node(
        name=name,
        type=ntype,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        links=st.st_nlink,
        size=st.st_size if ntype == FILE else 0,
        rdev=st.st_rdev if ntype in (CHARDEV, BLOCKDEV) else 0,
    )


def read_xattrs(target) -> list[tuple[bytes, bytes]]:
    """target: an fd (files, dirs) or a /proc/self/fd path for other types (not followed)."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno in _XATTR_SKIP_ERRNOS:
            return []
        raise
    out = []
    for n in sorted(names):
        try:
            out.append((os.fsencode(n), os.getxattr(target, n, follow_symlinks=follow)))
        except OSError as e:
            if e.errno not in _XATTR_SKIP_ERRNOS:
                raise
    return out


def proc_path(dir_fd: int, name: bytes) -> bytes:
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def make_socket(dir_fd: int, name: bytes) -> None:
    """Create the Unix socket entry `name` in dir_fd, as restic and borg do (nothing listens on it).

    bind() only takes a path, limited to 107 bytes: the socket is bound under a short random name
    through /proc/self/fd/N (the pinned directory itself, so no component is looked up by name and any
    depth or name length works; bind never follows or replaces an existing entry), then hard-linked
    to `name` (link neither follows nor replaces anything either) and the temporary name removed."""
    import secrets
    import socket

    tmp = b".cermin-sock-" + secrets.token_hex(8).encode()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(proc_path(dir_fd, tmp))
    finally:
        s.close()
    try:
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.unlink(tmp, dir_fd=dir_fd)


EUID, EGID = os.geteuid(), os.getegid()
SUID_SGID = stat.S_ISUID | stat.S_ISGID


# File capabilities: privileges granted on exec, like setuid bits (and dropped with them).
CAPABILITY_XATTR = b"security.capability"
# Namespaces the kernel and security modules act on and only root may set: security.* (capabilities,
# SELinux/SMACK/AppArmor labels — an exec transition into a privileged domain —, IMA/EVM) and
# trusted.* (overlayfs redirect/metacopy, which make an overlay show another file's data).
PRIVILEGED_XATTR_PREFIXES = (b"security.", b"trusted.")


def restored_mode(node: Node, owner: bool = True, special: bool = True) -> int:
    """The permission bits to set. Without `special` setuid/setgid are dropped; without `owner` too,
    because they would then grant the restoring user's ids (as root: root's) instead of the owner's."""
    mode = node.mode & 0o7777
    if not (owner and special):
        mode &= ~SUID_SGID
    return mode


def restored_xattrs(node: Node, owner: bool = True, special: bool = True) -> list[tuple[bytes, bytes]]:
    """The extended attributes to set. Whenever setuid/setgid bits are dropped (see restored_mode)
    the file capabilities go too: `security.capability` grants privileges on exec the same way.
    Without `special` every privilege-bearing namespace is dropped (PRIVILEGED_XATTR_PREFIXES);
    user.* and system.* (ACLs) stay."""
    if owner and special:
        return list(node.xattrs)
    if not special:
        return [(k, v) for k, v in node.xattrs if not _privileged_xattr(k)]
    return [(k, v) for k, v in node.xattrs if k != CAPABILITY_XATTR]


def _privileged_xattr(name) -> bool:
    if not isinstance(name, bytes):
        return True  # not a name a filesystem call accepts as ours: never set it
    return name.startswith(PRIVILEGED_XATTR_PREFIXES)


def apply_file_meta(
    fd: int, node: Node, warn, owned: bool = False, owner: bool = True, xattrs: bool = True, special: bool = True
) -> None:
    """Owner, mode, xattrs and mtime on an open file or directory (nothing is looked up by name).

    owned: the file was just created by us in a directory we created, so it already belongs to
    (EUID, EGID) and a chown to the same ids can be skipped. owner/xattrs: set those at all;
    special: keep setuid/setgid bits and privilege-bearing xattrs (see restored_mode, restored_xattrs)."""
    chown = owner and not (owned and node.uid == EUID and node.gid == EGID)
    _set_meta(fd, node, warn, chown, owner, xattrs, special)


def _set_meta(target, node: Node, warn, chown: bool, owner: bool, xattrs: bool, special: bool) -> None:
    """Owner, xattrs, mode, mtime on `target`: an open fd, or an O_PATH fd's /proc/self/fd path —
    never a name that could be swapped for a symlink. Mode after chown, which clears setuid bits."""
    if chown and IS_ROOT:
        try:
            os.chown(target, node.uid, node.gid)
        except (OSError, OverflowError) as e:
            warn(f"cannot set owner: {_why(e)}")
    if xattrs:
        for k, v in restored_xattrs(node, owner, special):
            try:
                os.setxattr(target, k, v)
            except (OSError, ValueError) as e:
                warn(f"cannot set xattr {k.decode('utf-8', 'backslashreplace')}: {_why(e)}")
    os.chmod(target, restored_mode(node, owner, special))
    os.utime(target, ns=(node.mtime_ns, node.mtime_ns))


def apply_path_meta(
    dir_fd: int, name: bytes, node: Node, warn, owner: bool = True, xattrs: bool = True, special: bool = True
) -> None:
    """Metadata for entries that cannot be opened for reading (symlinks, fifos, devices).

    Never follows a symlink: a symlink gets lchown/lutimes only; any other type is pinned with an
    O_PATH|O_NOFOLLOW fd, checked to still be that type, and changed through /proc/self/fd/N, so
    swapping the entry for a symlink cannot redirect chown, chmod, setxattr or utime."""
    if node.type == SYMLINK:
        if owner and IS_ROOT:
            try:
                os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            except (OSError, OverflowError) as e:
                warn(f"cannot set owner: {_why(e)}")
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        return
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if node_type(os.fstat(fd).st_mode) != node.type:
            raise OSError(errno.ESTALE, "entry was replaced while it was restored")
        _set_meta(b"/proc/self/fd/%d" % fd, node, warn, owner, owner, xattrs, special)
    finally:
        os.close(fd)


def _why(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)
