#!/usr/bin/env python3
"""Recover a snapshot from a cermin repository (format version 2) without cermin itself.

Needs only the Python standard library plus `cryptography`, `blake3` and `zstandard`, and follows
FORMAT.md step by step, so the data stays recoverable even if cermin's code is lost. It restores
directories, files (holes kept), symlinks, fifos, modes, owners (as root) and mtimes. Entries with
invalid names (empty, `.`, `..`, `/` or NUL inside), unknown types or repeated names are skipped as
errors (exit 1), and nothing is created or changed through a symlink: restore stays in TARGET_DIR.

    CERMIN_PASSWORD=... python3 cermin-recover.py REPO_DIR SNAPSHOT_ID_PREFIX|latest TARGET_DIR
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
import struct
import sys

import blake3
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


# ---- a minimal msgpack decoder (the subset cermin writes) ------------------------------------
def unpack(data: bytes):
    value, end = _unpack(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after msgpack value")
    return value


def _unpack(b: bytes, i: int):
    t = b[i]
    i += 1
    if t <= 0x7F:
        return t, i
    if t >= 0xE0:
        return t - 0x100, i
    if 0x80 <= t <= 0x8F:
        return _map(b, i, t & 0x0F)
    if 0x90 <= t <= 0x9F:
        return _array(b, i, t & 0x0F)
    if 0xA0 <= t <= 0xBF:
        n = t & 0x1F
        return b[i : i + n].decode(), i + n
    fixed = {0xC0: None, 0xC2: False, 0xC3: True}
    if t in fixed:
        return fixed[t], i
    if t in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB):
        size = {0xC4: 1, 0xD9: 1, 0xC5: 2, 0xDA: 2, 0xC6: 4, 0xDB: 4}[t]
        n = int.from_bytes(b[i : i + size], "big")
        i += size
        raw = b[i : i + n]
        return (raw.decode() if t >= 0xD9 else raw), i + n
    ints = {
        0xCC: ">B",
        0xCD: ">H",
        0xCE: ">I",
        0xCF: ">Q",
        0xD0: ">b",
        0xD1: ">h",
        0xD2: ">i",
        0xD3: ">q",
        0xCA: ">f",
        0xCB: ">d",
    }
    if t in ints:
        fmt = ints[t]
        return struct.unpack_from(fmt, b, i)[0], i + struct.calcsize(fmt)
    if t in (0xDC, 0xDD):
        size = 2 if t == 0xDC else 4
        return _array(b, i + size, int.from_bytes(b[i : i + size], "big"))
    if t in (0xDE, 0xDF):
        size = 2 if t == 0xDE else 4
        return _map(b, i + size, int.from_bytes(b[i : i + size], "big"))
    raise ValueError(f"unsupported msgpack type 0x{t:02x}")


def _array(b, i, n):
    out = []
    for _ in range(n):
        v, i = _unpack(b, i)
        out.append(v)
    return out, i


def _map(b, i, n):
    out = {}
    for _ in range(n):
        k, i = _unpack(b, i)
        v, i = _unpack(b, i)
        out[k] = v
    return out, i


# ---- keys and decryption (FORMAT.md §3, §4) --------------------------------------------------
def hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(key)


def object_cipher(enc_key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(hkdf(enc_key, b"cermin/v1/object", salt))


def payload(data: bytes) -> bytes:
    if data[0] == 0:
        return data[1:]
    if data[0] == 1:
        return zstandard.ZstdDecompressor().decompress(data[1:])
    raise ValueError(f"unknown codec {data[0]}")


def unseal(enc_key: bytes, data: bytes, aad: bytes) -> bytes:
    return payload(object_cipher(enc_key, data[:32]).decrypt(bytes(12), data[32:], aad))


def open_master_key(repo: str, password: bytes) -> bytes:
    for name in sorted(os.listdir(os.path.join(repo, "keys"))):
        kf = json.load(open(os.path.join(repo, "keys", name)))
        kek = Argon2id(
            salt=base64.b64decode(kf["salt"]),
            length=32,
            iterations=kf["iterations"],
            lanes=kf["lanes"],
            memory_cost=kf["memory_kib"],
        ).derive(password)
        wrapped = base64.b64decode(kf["wrapped"])
        try:
            return AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], b"cermin/key")
        except Exception:
            continue
    sys.exit("recover: wrong password")


class Repo:
    def __init__(self, root: str, password: bytes) -> None:
        self.root = root
        config = json.load(open(os.path.join(root, "config")))
        if config["version"] != 2:
            sys.exit(f"recover: format version {config['version']} is not 2")
        self.enc = hkdf(open_master_key(root, password), b"cermin/v1/encryption")
        fields = {k: config.get(k, {} if k == "extra" else None) for k in ("version", "id", "created", "extra")}
        aad = b"cermin/config/" + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        secrets = unpack(unseal(self.enc, base64.b64decode(config["secrets"]), aad))
        self.id_key = secrets["id_key"]
        self.index = {}  # blob id -> (pack name, type, offset, length)
        for name in os.listdir(os.path.join(root, "index")):
            packs, *_ = unpack(unseal(self.enc, self._read("index", name), b"cermin/index"))
            for pack_id, entries in packs:
                for bid, t, off, ln, _raw in struct.iter_unpack("<32sBIII", entries):
                    self.index.setdefault(bid, (pack_id.hex(), t, off, ln))

    def _read(self, kind: str, name: str) -> bytes:
        sub = os.path.join(kind, name[:2], name) if kind == "data" else os.path.join(kind, name)
        data = open(os.path.join(self.root, sub), "rb").read()
        if blake3.blake3(data).hexdigest() != name:
            raise ValueError(f"{kind}/{name} is damaged")
        return data

    def blob(self, bid: bytes) -> bytes:
        pack, t, off, ln = self.index[bid]
        with open(os.path.join(self.root, "data", pack[:2], pack), "rb") as f:
            prefix = f.read(40)
            f.seek(off)
            ct = f.read(ln)
        if prefix[:8] != b"CRMNPACK":
            raise ValueError(f"pack {pack} has a bad magic")
        plain = payload(object_cipher(self.enc, prefix[8:40]).decrypt(off.to_bytes(12, "big"), ct, bytes([t]) + bid))
        if blake3.blake3(plain, key=self.id_key).digest() != bid:
            raise ValueError(f"blob {bid.hex()} does not match its id")
        return plain

    def snapshot(self, ref: str) -> dict:
        names = os.listdir(os.path.join(self.root, "snapshots"))
        snaps = {
            n: unpack(unseal(self.enc, self._read("snapshots", n), b"cermin/snapshots"))
            for n in names
            if ref == "latest" or n.startswith(ref)
        }
        if not snaps:
            sys.exit(f"recover: no snapshot matches {ref}")
        return max(snaps.values(), key=lambda s: s["time"])


# ---- restoring (FORMAT.md §8): names are hostile input, symlinks are never followed -----------
NODE_TYPES = ("file", "dir", "symlink", "fifo", "chardev", "blockdev", "socket")
ERRORS: list[str] = []


def entry_problem(n: dict, seen: set) -> str | None:
    """Why an entry must be skipped: the same rules as cermin's format/names.py."""
    name = n.get("name")
    if not isinstance(name, bytes) or not name:
        return "empty name"
    if name in (b".", b".."):
        return f"name is {name.decode()!r}"
    if b"/" in name:
        return "name contains '/'"
    if b"\x00" in name:
        return "name contains NUL"
    if n.get("type") not in NODE_TYPES:
        return f"unknown type {n.get('type')!r}"
    target = n.get("target", b"")
    if n["type"] == "symlink" and (not isinstance(target, bytes) or not target or b"\x00" in target):
        return "symlink target is empty or contains NUL"
    if name in seen:
        return "duplicate name in the same directory"
    return None


def error(path: bytes, msg: str) -> None:
    ERRORS.append(f"{path.decode('utf-8', 'backslashreplace')}: {msg}")
    print(f"error: {ERRORS[-1]}", file=sys.stderr)


def remove_existing(dfd: int, name: bytes) -> None:
    """Unlink a non-directory in the way (a symlink is removed, never followed)."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory is in the way")
    os.unlink(name, dir_fd=dfd)


def set_meta(fd_or_path, n: dict) -> None:
    """Owner (as root), mode and mtime through an fd or a /proc/self/fd path: nothing looked up by name."""
    if os.geteuid() == 0:
        os.chown(fd_or_path, n.get("uid", 0), n.get("gid", 0))
    os.chmod(fd_or_path, n.get("mode", 0o644) & 0o7777)
    mtime = n.get("mtime_ns", 0)
    os.utime(fd_or_path, ns=(mtime, mtime))


def restore_tree(repo: Repo, tree_id: bytes, dfd: int, path: bytes) -> None:
    """Restore one tree's entries into the open directory dfd."""
    seen: set = set()
    for n in unpack(repo.blob(tree_id)).get("nodes", []):  # default values are omitted
        why = entry_problem(n, seen)
        if isinstance(n.get("name"), bytes):
            seen.add(n["name"])
        if why:
            name = n.get("name")
            shown = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else str(name)
            error(path or b"/", f"invalid entry {shown!r}: {why}")
            continue
        name, kind = n["name"], n["type"]
        p = path + b"/" + name
        try:
            restore_entry(repo, n, dfd, name, kind, p)
        except (OSError, ValueError, OverflowError, KeyError, TypeError) as e:
            error(p, f"cannot restore: {getattr(e, 'strerror', None) or e}")


def restore_entry(repo: Repo, n: dict, dfd: int, name: bytes, kind: str, p: bytes) -> None:
    if kind == "dir":
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=dfd)  # e.g. a symlink in the way: removed, not followed
                os.mkdir(name, 0o700, dir_fd=dfd)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            os.fchmod(fd, 0o700)
            restore_tree(repo, n["subtree"], fd, p)
            set_meta(fd, n)
        finally:
            os.close(fd)
    elif kind == "file":
        remove_existing(dfd, name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            ids, off = n.get("content", b""), 0
            for i in range(0, len(ids), 32):
                data = repo.blob(ids[i : i + 32])
                if data.count(0) != len(data):  # all-zero chunks stay holes
                    os.pwrite(fd, data, off)
                off += len(data)
            os.ftruncate(fd, n.get("size", 0))
            set_meta(fd, n)
        finally:
            os.close(fd)
    elif kind == "symlink":
        remove_existing(dfd, name)
        os.symlink(n["target"], name, dir_fd=dfd)
        if os.geteuid() == 0:
            os.chown(name, n.get("uid", 0), n.get("gid", 0), dir_fd=dfd, follow_symlinks=False)
        mtime = n.get("mtime_ns", 0)
        os.utime(name, ns=(mtime, mtime), dir_fd=dfd, follow_symlinks=False)
    elif kind == "fifo" or (kind in ("chardev", "blockdev") and os.geteuid() == 0):
        remove_existing(dfd, name)
        if kind == "fifo":
            os.mkfifo(name, 0o600, dir_fd=dfd)
        else:
            os.mknod(name, 0o600 | (stat.S_IFCHR if kind == "chardev" else stat.S_IFBLK), n.get("rdev", 0), dir_fd=dfd)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dfd)  # pinned: a swapped-in symlink is not followed
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise OSError(errno.ESTALE, "replaced while restored")
            set_meta(f"/proc/self/fd/{fd}", n)
        finally:
            os.close(fd)
    else:
        print(f"skipping {kind} {p!r}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    repo_dir, ref, target = sys.argv[1:]
    password = os.environ.get("CERMIN_PASSWORD")
    if not password:
        sys.exit("recover: set CERMIN_PASSWORD")
    repo = Repo(repo_dir, password.encode())
    snap = repo.snapshot(ref)
    sys.setrecursionlimit(100_000)
    os.makedirs(target, exist_ok=True)
    tfd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        restore_tree(repo, snap["tree"], tfd, b"")
    finally:
        os.close(tfd)
    if ERRORS:
        sys.exit(f"recover: {len(ERRORS)} entries could not be restored from the snapshot of {snap['time']}")
    print(f"recovered snapshot of {snap['time']} into {target}")


if __name__ == "__main__":
    main()
