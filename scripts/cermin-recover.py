#!/usr/bin/env python3
"""Recover a snapshot from a cermin repository (format versions 2 and 3) without cermin itself.

Needs only the Python standard library plus `cryptography`, `blake3` and `zstandard`, and follows
FORMAT.md step by step, so the data stays recoverable even if cermin's code is lost. It restores
directories, files (holes kept), symlinks, fifos, modes, owners (as root) and mtimes. Entries with
invalid names (empty, `.`, `..`, `/` or NUL inside), unknown types or repeated names are skipped as
errors (exit 1), and nothing is created or changed through a symlink: restore stays in TARGET_DIR.

Anyone who can write to the repository's storage can plant files in it, so one bad object never
stops a recovery: key slots not named by the BLAKE3 of their bytes or with Argon2id parameters
outside cermin's bounds are skipped unread, the others are tried cheapest first, and index or
snapshot files that fail authentication or decoding are skipped, each with a warning on stderr.

    CERMIN_PASSWORD=... python3 cermin-recover.py REPO_DIR SNAPSHOT_ID_PREFIX|latest TARGET_DIR
"""

from __future__ import annotations

import base64
import datetime
import errno
import json
import os
import stat
import struct
import sys
import time

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
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


MAX_OBJECT_SIZE = 256 * 1024 * 1024  # largest plaintext of an index or snapshot file (FORMAT.md §5)


def payload(data: bytes, limit: int = MAX_OBJECT_SIZE) -> bytes:
    """codec byte || payload, decoded into at most `limit` bytes (a blob's declared length)."""
    if data[0] == 0:
        if len(data) - 1 > limit:
            raise ValueError(f"{len(data) - 1} bytes, more than the {limit} declared")
        return data[1:]
    if data[0] == 1:
        size = zstandard.frame_content_size(data[1:])
        if size > limit:  # zstandard would allocate the declared size up front
            raise ValueError(f"zstd frame declares {size} bytes, more than the {limit} allowed")
        return zstandard.ZstdDecompressor().decompress(data[1:], max_output_size=limit if size < 0 else 0)
    raise ValueError(f"unknown codec {data[0]}")


def unseal(enc_key: bytes, data: bytes, aad: bytes) -> bytes:
    if len(data) < 32 + 16:
        raise ValueError(f"truncated ({len(data)} bytes)")
    return payload(object_cipher(enc_key, data[:32]).decrypt(bytes(12), data[32:], aad))


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# The Argon2id parameters a key slot may carry (cermin's format/crypto.py KDF_*, FORMAT.md §4): a slot
# outside them is skipped unread, or a planted one with 2^31 iterations would hang the recovery.
KDF_MEMORY_KIB = (1024, 4 * 1024 * 1024)
KDF_ITERATIONS = (1, 64)
KDF_LANES = (1, 16)
KDF_SALT_LEN = (16, 64)
WRAPPED_LEN = 12 + 32 + 16  # nonce, master key, tag


def read_key_slot(path: str, name: str) -> dict:
    """A key slot checked against its name (BLAKE3 of its bytes) and the KDF bounds (ValueError)."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    if blake3.blake3(data).hexdigest() != name:
        raise ValueError("does not match its name (damaged or planted)")
    kf = json.loads(data)
    if not isinstance(kf, dict) or kf.get("version") != 1 or kf.get("kdf") != "argon2id":
        raise ValueError("unknown key slot version or KDF")
    for what, (lo, hi) in (("memory_kib", KDF_MEMORY_KIB), ("iterations", KDF_ITERATIONS), ("lanes", KDF_LANES)):
        v = kf.get(what)
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"Argon2id {what}={v!r} is outside {lo}..{hi}")
    kf["salt"], kf["wrapped"] = base64.b64decode(kf["salt"]), base64.b64decode(kf["wrapped"])
    if not KDF_SALT_LEN[0] <= len(kf["salt"]) <= KDF_SALT_LEN[1] or len(kf["wrapped"]) != WRAPPED_LEN:
        raise ValueError("salt or wrapped key of the wrong size")
    return kf


def open_master_key(repo: str, password: bytes, fits) -> tuple[bytes, object]:
    """(master key, fits(master key)) from the first slot the password opens whose key fits the
    repository (`fits` raises otherwise); valid slots are tried cheapest derivation first."""
    slots = []
    for name in sorted(os.listdir(os.path.join(repo, "keys"))):
        try:
            slots.append((name, read_key_slot(os.path.join(repo, "keys", name), name)))
        except (OSError, ValueError, TypeError, KeyError) as e:
            warn(f"key slot {name[:12]}: {e}; skipped")
    for name, kf in sorted(slots, key=lambda s: (s[1]["memory_kib"] * s[1]["iterations"], s[0])):
        kek = Argon2id(
            salt=kf["salt"],
            length=32,
            iterations=kf["iterations"],
            lanes=kf["lanes"],
            memory_cost=kf["memory_kib"],
        ).derive(password)
        wrapped = kf["wrapped"]
        try:
            master = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], b"cermin/key")
        except InvalidTag:
            continue
        try:
            return master, fits(master)
        except Exception as e:
            warn(f"key slot {name[:12]} opens with this password but does not fit this repository ({e}); skipped")
    sys.exit("recover: wrong password")


class Repo:
    def __init__(self, root: str, password: bytes) -> None:
        self.root = root
        config = json.load(open(os.path.join(root, "config")))
        if config["version"] not in (2, 3):
            sys.exit(f"recover: format version {config['version']} is not 2 or 3")
        fields = {k: config.get(k, {} if k == "extra" else None) for k in ("version", "id", "created", "extra")}
        aad = b"cermin/config/" + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        sealed = base64.b64decode(config["secrets"])

        def fits(master: bytes):  # the config's secrets open under this key, or InvalidTag
            enc = hkdf(master, b"cermin/v1/encryption")
            return enc, unpack(unseal(enc, sealed, aad))

        _, (self.enc, secrets) = open_master_key(root, password, fits)
        self.id_key = secrets["id_key"]
        # version 3: tree ids are keyed with a key derived from id_key (FORMAT.md §5)
        derived = blake3.blake3(self.id_key, derive_key_context="cermin 2026-12-02 tree ids").digest()
        self.tree_key = derived if config["version"] >= 3 else self.id_key
        self.index = {}  # blob id -> (pack name, type, offset, length, raw length)
        for name in sorted(os.listdir(os.path.join(root, "index"))):
            try:
                packs, *_ = unpack(unseal(self.enc, self._read("index", name), b"cermin/index"))
                found = [
                    (bid, (pack_id.hex(), t, off, ln, raw))
                    for pack_id, entries in packs
                    for bid, t, off, ln, raw in struct.iter_unpack("<32sBIII", entries)
                ]
            except Exception as e:  # planted or damaged: the other index files still count
                warn(f"index/{name[:12]}: {describe(e)}; skipped")
                continue
            for bid, entry in found:
                self.index.setdefault(bid, entry)

    def _read(self, kind: str, name: str) -> bytes:
        sub = os.path.join(kind, name[:2], name) if kind == "data" else os.path.join(kind, name)
        data = open(os.path.join(self.root, sub), "rb").read()
        if blake3.blake3(data).hexdigest() != name:
            raise ValueError(f"{kind}/{name} is damaged")
        return data

    def blob(self, bid: bytes) -> bytes:
        pack, t, off, ln, raw = self.index[bid]
        with open(os.path.join(self.root, "data", pack[:2], pack), "rb") as f:
            prefix = f.read(40)
            f.seek(off)
            ct = f.read(ln)
        if prefix[:8] != b"CRMNPACK":
            raise ValueError(f"pack {pack} has a bad magic")
        plain = payload(
            object_cipher(self.enc, prefix[8:40]).decrypt(off.to_bytes(12, "big"), ct, bytes([t]) + bid), raw
        )
        if blake3.blake3(plain, key=self.tree_key if t == 1 else self.id_key).digest() != bid:
            raise ValueError(f"blob {bid.hex()} does not match its id")
        return plain

    def snapshot(self, ref: str) -> dict:
        snaps = []
        for n in sorted(os.listdir(os.path.join(self.root, "snapshots"))):
            if ref != "latest" and not n.startswith(ref):
                continue
            try:
                snap = unpack(unseal(self.enc, self._read("snapshots", n), b"cermin/snapshots"))
                snaps.append((snap_time(snap), snap))
            except Exception as e:  # planted or damaged: the other snapshots are still there
                warn(f"snapshots/{n[:12]}: {describe(e)}; skipped")
        if not snaps:
            sys.exit(f"recover: no readable snapshot matches {ref}")
        trusted = [s for s in snaps if s[0] <= time.time() + CLOCK_SKEW]
        if len(trusted) < len(snaps):
            warn(f"{len(snaps) - len(trusted)} snapshots are dated in the future (or undated): not taken as the newest")
        return max(trusted or snaps, key=lambda s: s[0])[1]


CLOCK_SKEW = 600.0  # seconds a snapshot may be dated ahead of this clock and still be the latest


def snap_time(snap: dict) -> float:
    """A snapshot's time (RFC 3339) in seconds since the epoch, +inf when it cannot be read (never
    taken as recent); ValueError when the record is no snapshot at all."""
    if not isinstance(snap, dict) or not isinstance(snap.get("tree"), bytes):
        raise ValueError("not a snapshot record")
    s = snap.get("time")
    try:
        if "." in s:  # Python 3.11 reads microseconds at most: trim nanoseconds
            head, frac = s.split(".", 1)
            digits = "".join(ch for ch in frac if ch.isdigit())
            s = f"{head}.{digits[:6]}{frac[len(digits) :]}"
        t = datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
        return (t if t.tzinfo else t.replace(tzinfo=datetime.UTC)).timestamp()
    except (ValueError, TypeError, OverflowError):
        return float("inf")


def describe(e: Exception) -> str:
    if isinstance(e, InvalidTag):
        return "fails authentication (damaged, or planted by someone without the key)"
    if isinstance(e, OSError):
        return str(e)
    return f"cannot be decoded ({type(e).__name__}: {e})"


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


BLOB_ERRORS = (OSError, ValueError, OverflowError, KeyError, TypeError, IndexError, InvalidTag, zstandard.ZstdError)


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
        except BLOB_ERRORS as e:  # one damaged blob or odd value costs this entry, not the recovery
            error(
                p,
                f"cannot restore: {getattr(e, 'strerror', None) or (describe(e) if isinstance(e, InvalidTag) else e)}",
            )


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
    except BLOB_ERRORS as e:
        sys.exit(f"recover: cannot read the snapshot's root directory: {describe(e)}")
    finally:
        os.close(tfd)
    if ERRORS:
        sys.exit(f"recover: {len(ERRORS)} entries could not be restored from the snapshot of {snap['time']}")
    print(f"recovered snapshot of {snap['time']} into {target}")


if __name__ == "__main__":
    main()
