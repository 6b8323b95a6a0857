"""Keys, key derivation and authenticated encryption (AES-256-GCM), as documented in FORMAT.md.

Nonces never repeat because every encryption key is used for one object only: each object (pack,
index, snapshot, lock, config secrets) gets a fresh random 32-byte salt, its AES key is
HKDF-SHA256(encryption key, salt), and blobs inside a pack use a counter nonce under that key.
"""

from __future__ import annotations

import os
import threading

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cermin.errors import CorruptObject

KEY_LEN = 32
SALT_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
HEADER_NONCE = b"\xff" * NONCE_LEN  # pack header nonce; blob offsets never reach it

# Argon2id from two threads at once deadlocks inside OpenSSL (shared/DESIGN.md): serialise.
_argon2_lock = threading.Lock()


# Argon2id parameters a key slot may carry (FORMAT.md §4). A slot outside them is skipped: anyone
# with write access to keys/ could otherwise plant one with 2^32 iterations or terabytes of memory
# and hang every command. The lower memory bound admits the 1 MiB the tests use.
KDF_MEMORY_KIB = (1024, 4 * 1024 * 1024)  # 1 MiB .. 4 GiB
KDF_ITERATIONS = (1, 64)
KDF_LANES = (1, 16)
KDF_SALT_LEN = (16, 64)


class KdfParams:
    __slots__ = ("memory_kib", "iterations", "lanes")

    def __init__(self, memory_kib: int = 65536, iterations: int = 3, lanes: int = 2) -> None:
        self.memory_kib = memory_kib
        self.iterations = iterations
        self.lanes = lanes

    def problem(self) -> str | None:
        """Why these parameters are out of bounds, or None when they are acceptable."""
        for what, value, (lo, hi) in (
            ("memory_kib", self.memory_kib, KDF_MEMORY_KIB),
            ("iterations", self.iterations, KDF_ITERATIONS),
            ("lanes", self.lanes, KDF_LANES),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                return f"Argon2id {what}={value!r} is outside {lo}..{hi}"
        return None

    @property
    def cost(self) -> int:
        """Relative work of one derivation, to try cheap slots first."""
        return self.memory_kib * self.iterations


def argon2id(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    problem = params.problem()
    if problem is not None:  # never run an unbounded derivation, whoever asks
        raise CorruptObject(problem)
    kdf = Argon2id(
        salt=salt,
        length=KEY_LEN,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    with _argon2_lock:
        return kdf.derive(password)


def hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(key)


class MasterKeys:
    """Subkeys derived from the 32-byte master key."""

    __slots__ = ("master", "encryption")

    def __init__(self, master: bytes) -> None:
        if len(master) != KEY_LEN:
            raise ValueError("master key must be 32 bytes")
        self.master = master
        self.encryption = hkdf(master, b"cermin/v1/encryption")

    @classmethod
    def generate(cls) -> MasterKeys:
        return cls(os.urandom(KEY_LEN))

    def object_cipher(self, salt: bytes) -> AESGCM:
        return AESGCM(hkdf(self.encryption, b"cermin/v1/object", salt))


def seal(keys: MasterKeys, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt a standalone object: salt || AES-GCM(subkey(salt), nonce=0, plaintext, aad)."""
    salt = os.urandom(SALT_LEN)
    return salt + keys.object_cipher(salt).encrypt(bytes(NONCE_LEN), plaintext, aad)


def unseal(keys: MasterKeys, data: bytes, aad: bytes, what: str) -> bytes:
    if len(data) < SALT_LEN + TAG_LEN:
        raise CorruptObject(f"{what} is truncated ({len(data)} bytes)")
    salt = data[:SALT_LEN]
    try:
        return keys.object_cipher(salt).decrypt(bytes(NONCE_LEN), data[SALT_LEN:], aad)
    except InvalidTag:
        raise CorruptObject(f"{what} failed authentication (damaged or not from this repository)") from None


def blob_nonce(offset: int) -> bytes:
    return offset.to_bytes(NONCE_LEN, "big")


def decrypt(cipher: AESGCM, nonce: bytes, data: bytes | memoryview, aad: bytes, what: str) -> bytes:
    try:
        return cipher.decrypt(nonce, data, aad)
    except InvalidTag:
        raise CorruptObject(f"{what} failed authentication") from None


def keyed_hasher(id_key: bytes):
    """Return f(data) -> 32-byte keyed BLAKE3 id. blake3 releases the GIL on large inputs."""
    template = blake3.blake3(key=id_key)

    def blob_id(data) -> bytes:
        h = template.copy()
        h.update(data)
        return h.digest()

    return blob_id


def tree_id_key(id_key: bytes) -> bytes:
    """The key tree ids are made with (format version 3): derived from the blob-id key, so a file
    whose bytes equal a tree's encoding (an empty directory's is one byte, 0x80) gets another id
    than that tree, and neither dedupes into the other."""
    return blake3.blake3(id_key, derive_key_context="cermin 2026-12-02 tree ids").digest()


def file_id(data: bytes | memoryview) -> str:
    """Storage name of a whole file: unkeyed BLAKE3 of its bytes, so integrity is checkable without keys."""
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO if len(data) > (8 << 20) else 1).hexdigest()


def file_hasher():
    """`file_id` of a file written in pieces: update() each piece in order, then hexdigest()."""
    return blake3.blake3()
