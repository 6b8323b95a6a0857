#!/usr/bin/env python3
"""Recover a snapshot from a cermin repository (format version 2) without cermin itself.

Needs only the Python standard library plus `cryptography`, `blake3` and `zstandard`, and follows
FORMAT.md step by step, so the data stays recoverable even if cermin's code is lost. It restores
directories, files (holes kept), symlinks, fifos, modes, owners (as root) and mtimes.

    CERMIN_PASSWORD=... python3 cermin-recover.py REPO_DIR SNAPSHOT_ID_PREFIX|latest TARGET_DIR
"""

from __future__ import annotations

import base64
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


def restore_tree(repo: Repo, tree_id: bytes, dest: bytes) -> None:
    os.makedirs(dest, exist_ok=True)
    for n in unpack(repo.blob(tree_id)).get("nodes", []):  # default values are omitted
        p = os.path.join(dest, n["name"])
        kind, mtime = n["type"], n.get("mtime_ns", 0)
        if kind == "dir":
            restore_tree(repo, n["subtree"], p)
        elif kind == "file":
            with open(p, "wb") as f:
                ids = n.get("content", b"")
                for i in range(0, len(ids), 32):
                    data = repo.blob(ids[i : i + 32])
                    if data.count(0) == len(data):
                        f.seek(len(data), 1)
                    else:
                        f.write(data)
                f.truncate(n.get("size", 0))
        elif kind == "symlink":
            os.symlink(n["target"], p)
        elif kind == "fifo":
            os.mkfifo(p)
        elif kind in ("chardev", "blockdev") and os.geteuid() == 0:
            os.mknod(p, 0o600 | (stat.S_IFCHR if kind == "chardev" else stat.S_IFBLK), n.get("rdev", 0))
        else:
            print(f"skipping {kind} {p!r}", file=sys.stderr)
            continue
        if os.geteuid() == 0:
            os.chown(p, n.get("uid", 0), n.get("gid", 0), follow_symlinks=False)
        if kind != "symlink":
            os.chmod(p, n.get("mode", 0o644))
        os.utime(p, ns=(mtime, mtime), follow_symlinks=False)


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
    restore_tree(repo, snap["tree"], os.fsencode(target))
    print(f"recovered snapshot of {snap['time']} into {target}")


if __name__ == "__main__":
    main()
