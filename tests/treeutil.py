"""Build source trees with every kind of metadata, and compare a restore with its source."""

from __future__ import annotations

import os
import stat


def make_rich_tree(root: str) -> None:
    """A tree with the metadata cermin must round-trip (run as root for devices and ownership)."""
    r = os.fsencode(root)
    os.makedirs(r, exist_ok=True)
    with open(r + b"/plain.txt", "wb") as f:
        f.write(b"hello world\n" * 1000)
    with open(r + b"/random.bin", "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    open(r + b"/empty", "wb").close()
    os.makedirs(r + b"/emptydir")
    os.makedirs(r + b"/sub/deeper")
    with open(r + b"/sub/deeper/x", "wb") as f:
        f.write(b"x" * 5000)
    os.chmod(r + b"/sub/deeper/x", 0o4751)
    with open(r + b"/caf\xe9-not-utf8", "wb") as f:  # a Latin-1 name
        f.write(b"latin1 name")
    os.symlink(b"plain.txt", r + b"/link")
    os.symlink(b"/nonexistent/target", r + b"/dangling")
    os.link(r + b"/plain.txt", r + b"/hardlink")
    os.mkfifo(r + b"/fifo")
    if os.geteuid() == 0:
        os.mknod(r + b"/chardev", 0o640 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(r + b"/sub/deeper/x", 1234, 5678)
        os.chown(r + b"/link", 4321, 8765, follow_symlinks=False)
    try:
        os.setxattr(r + b"/plain.txt", b"user.cermin", b"value\x00\xff")
    except OSError:
        pass
    with open(r + b"/sparse", "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(32 * 1024 * 1024)
        f.write(b"data in the middle")
    os.utime(r + b"/sub", ns=(1_000_000_123, 1_500_000_456_789))
    os.chmod(r + b"/emptydir", 0o500)


def snapshot_of(root) -> dict:
    """path -> comparable metadata + content, for every entry under root (not root itself)."""
    root = os.fsencode(root)
    out = {}
    inodes: dict[int, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            d = {
                "mode": st.st_mode,
                "uid": st.st_uid,
                "gid": st.st_gid,
                "mtime_ns": st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None,
            }
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    d["content"] = f.read()
                d["size"] = st.st_size
                if st.st_nlink > 1:
                    d["link_group"] = inodes.setdefault(st.st_ino, rel)
                try:
                    d["xattrs"] = sorted((k, os.getxattr(p, k)) for k in os.listxattr(p))
                except OSError:
                    pass
            elif stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
                d["mtime_ns"] = st.st_mtime_ns
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                d["rdev"] = st.st_rdev
            out[rel] = d
    return out


def assert_same_tree(src, dst) -> None:
    a, b = snapshot_of(src), snapshot_of(dst)
    assert sorted(a) == sorted(b), (
        f"entries differ: only in source {sorted(set(a) - set(b))[:5]}, only in restore {sorted(set(b) - set(a))[:5]}"
    )
    for k in a:
        if a[k] != b[k]:
            diffs = {f: (a[k].get(f), b[k].get(f)) for f in a[k] if a[k].get(f) != b[k].get(f) and f != "content"}
            if a[k].get("content") != b[k].get("content"):
                diffs["content"] = "differs"
            raise AssertionError(f"{k!r} differs: {diffs}")


def allocated_bytes(path) -> int:
    return os.stat(path).st_blocks * 512
