"""Key slots: the master key wrapped under keys derived from passwords with Argon2id."""

from __future__ import annotations

import os
import socket

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cermin.errors import CorruptObject
from cermin.format import crypto
from cermin.format.records import KeyFile
from cermin.util import now_rfc3339, username

KEY_AAD = b"cermin/key"
KEYFILE_VERSION = 1


def make_keyfile(master: bytes, password: bytes, params: crypto.KdfParams | None = None) -> KeyFile:
    params = params or crypto.KdfParams()
    salt = os.urandom(crypto.SALT_LEN)
    kek = crypto.argon2id(password, salt, params)
    nonce = os.urandom(crypto.NONCE_LEN)  # the KEK is unique per salt, so one random nonce is safe
    wrapped = nonce + AESGCM(kek).encrypt(nonce, master, KEY_AAD)
    return KeyFile(
        version=KEYFILE_VERSION,
        kdf="argon2id",
        memory_kib=params.memory_kib,
        iterations=params.iterations,
        lanes=params.lanes,
        salt=salt,
        wrapped=wrapped,
        created=now_rfc3339(),
        hostname=socket.gethostname(),
        username=username(),
    )


def encode_keyfile(kf: KeyFile) -> bytes:
    return msgspec.json.encode(kf)


def decode_keyfile(data: bytes, name: str) -> KeyFile:
    try:
        kf = msgspec.json.decode(data, type=KeyFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CorruptObject(f"key file {name[:12]} is corrupted ({e})") from None
    if kf.version != KEYFILE_VERSION or kf.kdf != "argon2id":
        raise CorruptObject(f"key file {name[:12]} has unknown version {kf.version} / kdf {kf.kdf!r}")
    return kf


def unwrap(kf: KeyFile, password: bytes) -> bytes | None:
    """The master key, or None when the password does not open this slot."""
    params = crypto.KdfParams(kf.memory_kib, kf.iterations, kf.lanes)
    kek = crypto.argon2id(password, kf.salt, params)
    nonce, ct = kf.wrapped[: crypto.NONCE_LEN], kf.wrapped[crypto.NONCE_LEN :]
    try:
        return AESGCM(kek).decrypt(nonce, ct, KEY_AAD)
    except InvalidTag:
        return None
