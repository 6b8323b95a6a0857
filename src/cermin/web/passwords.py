"""Passwords hashed with Argon2id (argon2-cffi), verified in constant time for unknown users too.

`HASHER` holds the parameters (RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes). A login by
an unknown or disabled name verifies the password against a dummy hash made with the same parameters, so
the answer takes as long as for a real user. At most two hashes are computed at once per process: each
takes 64 MiB and ~0.1 s of CPU, and a burst of logins should not exhaust the host.
"""

from __future__ import annotations

import threading

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4, hash_len=32, salt_len=16, type=Type.ID)
MIN_LENGTH = 10
MAX_LENGTH = 1024

_slots = threading.BoundedSemaphore(2)
_dummy: dict[tuple, str] = {}


def _params(h: PasswordHasher) -> tuple:
    return (h.time_cost, h.memory_cost, h.parallelism, h.hash_len, h.salt_len, h.type)


def check_strength(password: str) -> None:
    """A new password: 10..1024 characters (length is what matters; no composition rules)."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise ValueError(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    with _slots:
        return HASHER.hash(password)


def _dummy_hash() -> str:
    key = _params(HASHER)
    if key not in _dummy:
        _dummy[key] = HASHER.hash("cermin: no such user")
    return _dummy[key]


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether the password matches; with stored_hash None (no such user) a dummy hash is verified and
    False returned, taking the same time."""
    target = stored_hash or _dummy_hash()
    try:
        with _slots:
            ok = HASHER.verify(target, password[:MAX_LENGTH])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and stored_hash is not None


def needs_rehash(stored_hash: str) -> bool:
    try:
        return HASHER.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return False
