"""Key slot management: add, list, remove, change password."""

from __future__ import annotations

from dataclasses import dataclass

from cermin.backend.base import Kind
from cermin.errors import CerminError, UsageError
from cermin.format import crypto
from cermin.repo import keys as keyslots
from cermin.repo.repository import Repository


@dataclass
class KeyInfo:
    id: str
    current: bool
    created: str
    hostname: str
    username: str


def add_key(repo: Repository, new_password: bytes, kdf: crypto.KdfParams | None = None) -> str:
    data = keyslots.encode_keyfile(keyslots.make_keyfile(repo.keys.master, new_password, kdf))
    name = crypto.file_id(data)
    repo.backend.save(Kind.KEY, name, data)
    return name


def list_keys(repo: Repository) -> list[KeyInfo]:
    out = []
    for name, _ in sorted(repo.backend.list(Kind.KEY)):
        try:
            kf = keyslots.decode_keyfile(repo.backend.load(Kind.KEY, name), name)
            out.append(KeyInfo(name, name == repo.key_name, kf.created, kf.hostname, kf.username))
        except CerminError:
            out.append(KeyInfo(name, False, "?", "(unreadable key file)", ""))
    return out


def resolve_key(repo: Repository, prefix: str) -> str:
    matches = [n for n, _ in repo.backend.list(Kind.KEY) if n.startswith(prefix.lower())]
    if not matches:
        raise CerminError(f"no key with id {prefix}")
    if len(matches) > 1:
        raise CerminError(f"key prefix {prefix} is ambiguous")
    return matches[0]


def remove_key(repo: Repository, prefix: str) -> str:
    name = resolve_key(repo, prefix)
    if name == repo.key_name:
        raise UsageError("refusing to remove the key in use; open the repository with another password first")
    repo.backend.remove(Kind.KEY, name)
    return name


def change_password(repo: Repository, new_password: bytes, kdf: crypto.KdfParams | None = None) -> str:
    """Add a slot for the new password, then remove the slot that opened the repository."""
    new = add_key(repo, new_password, kdf)
    repo.backend.remove(Kind.KEY, repo.key_name)
    repo.key_name = new
    return new
