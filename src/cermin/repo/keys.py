"""Key slots: the master key wrapped under keys derived from passwords with Argon2id.

Anyone who can write to `keys/` (a storage credential, a backup token) can plant slots, so opening
never trusts one blindly: a slot must be named by the BLAKE3 of its bytes and carry Argon2id
parameters within `crypto.KDF_*`, or it is skipped with a warning. The slot that opened the
repository last time on this machine is tried first (its name, never a secret, is cached under the
user's cache directory per repository id), then the others from the cheapest derivation up.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from typing import TypeVar

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cermin.backend.base import Kind
from cermin.errors import CerminError, CorruptObject, UsageError, WrongPassword
from cermin.format import crypto
from cermin.format.records import KeyFile
from cermin.util import now_rfc3339, username

KEY_AAD = b"cermin/key"
KEYFILE_VERSION = 1
WRAPPED_LEN = crypto.NONCE_LEN + crypto.KEY_LEN + crypto.TAG_LEN
_HEX64 = re.compile(r"[0-9a-f]{64}")
T = TypeVar("T")


def make_keyfile(master: bytes, password: bytes, params: crypto.KdfParams | None = None) -> KeyFile:
    params = params or crypto.KdfParams()
    problem = params.problem()
    if problem is not None:
        raise UsageError(f"refusing to write a key slot other clients would skip: {problem}")
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
    """A key slot, checked against its name and the KDF bounds (CorruptObject otherwise)."""
    what = f"key file {name[:12]}"
    if crypto.file_id(data) != name:
        raise CorruptObject(f"{what} is corrupted (does not match its name: damaged or planted)")
    try:
        kf = msgspec.json.decode(data, type=KeyFile)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise CorruptObject(f"{what} is corrupted ({e})") from None
    if kf.version != KEYFILE_VERSION or kf.kdf != "argon2id":
        raise CorruptObject(f"{what} has unknown version {kf.version} / kdf {kf.kdf!r}")
    problem = params_of(kf).problem()
    if problem is not None:
        raise CorruptObject(f"{what}: {problem}")
    lo, hi = crypto.KDF_SALT_LEN
    if not lo <= len(kf.salt) <= hi or len(kf.wrapped) != WRAPPED_LEN:
        raise CorruptObject(f"{what} has a salt or wrapped key of the wrong size")
    return kf


def params_of(kf: KeyFile) -> crypto.KdfParams:
    return crypto.KdfParams(kf.memory_kib, kf.iterations, kf.lanes)


def unwrap(kf: KeyFile, password: bytes) -> bytes | None:
    """The master key, or None when the password does not open this slot."""
    kek = crypto.argon2id(password, kf.salt, params_of(kf))
    nonce, ct = kf.wrapped[: crypto.NONCE_LEN], kf.wrapped[crypto.NONCE_LEN :]
    try:
        return AESGCM(kek).decrypt(nonce, ct, KEY_AAD)
    except InvalidTag:
        return None


# ---- the last slot used, remembered per repository ---------------------------------------------
def cache_dir() -> str:
    from cermin.repo.localstate import cache_root

    return os.path.join(cache_root(), "keyslots")


def remembered_slot(repo_id: str) -> str | None:
    if not _HEX64.fullmatch(repo_id or ""):
        return None  # the id comes from the repository: never let it shape a path
    try:
        with open(os.path.join(cache_dir(), repo_id), encoding="ascii") as f:
            name = f.read(65).strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _HEX64.fullmatch(name) else None


def remember_slot(repo_id: str, name: str) -> None:
    if not _HEX64.fullmatch(repo_id or "") or remembered_slot(repo_id) == name:
        return
    d = cache_dir()
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        tmp = os.path.join(d, f".{repo_id}.{os.getpid()}")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(name + "\n")
        os.replace(tmp, os.path.join(d, repo_id))
    except OSError:
        pass  # a cache only: opening works without it


def _load_slot(backend, name: str) -> bytes:
    data = backend.load(Kind.KEY, name)
    if crypto.file_id(data) != name and backend.caps.versions:
        data = backend.load_original(Kind.KEY, name)  # someone may have put a newer version over it
    return data


def open_master(
    backend, password: bytes, repo_id: str, warn: Callable[[str], None], accept: Callable[[bytes], T]
) -> tuple[bytes, str, T]:
    """(master key, slot name, accept(master)) for `password`.

    Slots that are damaged, planted under a wrong name or out of the KDF bounds are skipped with a
    warning. The slot remembered for this repository is tried first, then the others cheapest first,
    so a planted expensive slot costs nothing once a password has worked here. `accept` checks the
    master key against the repository (the config's MAC) and raises CorruptObject when it does not
    fit: a slot someone with the password planted around another key is skipped, not fatal."""
    names = sorted(n for n, _ in backend.list(Kind.KEY))
    if not names:
        raise CorruptObject(f"repository at {backend.location} has no key files")
    last = remembered_slot(repo_id)
    if last in names:  # fast path: one load, one derivation
        names.remove(last)
        names.insert(0, last)
    slots: list[tuple[str, KeyFile]] = []
    errors: list[str] = []
    misfit: CorruptObject | None = None

    def attempt(name: str, kf: KeyFile):
        nonlocal misfit
        master = unwrap(kf, password)
        if master is None:
            return None
        try:
            return master, name, accept(master)
        except CorruptObject as e:
            misfit = misfit or e
            warn(f"key slot {name[:12]} opens with this password but does not fit this repository; skipped")
            return None

    for name in names:
        try:
            kf = decode_keyfile(_load_slot(backend, name), name)
        except CerminError as e:
            errors.append(str(e))
            warn(f"{e}; skipped")
            continue
        if name == last:
            found = attempt(name, kf)
            if found is not None:
                return found
            continue
        slots.append((name, kf))
    for name, kf in sorted(slots, key=lambda s: (params_of(s[1]).cost, s[0])):
        found = attempt(name, kf)
        if found is not None:
            remember_slot(repo_id, name)
            return found
    if misfit is not None:
        raise misfit
    if errors and len(errors) == len(names):
        raise CorruptObject(errors[0])
    raise WrongPassword("wrong password or no key slot matches it")
