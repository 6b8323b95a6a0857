"""The narrow storage protocol every backend implements (local directory, memory, later S3 and HTTP).

Objects are write-once: `save` must fail with ObjectExists rather than replace an existing object,
and must only return once the object is durable. Only locks are ever removed outside prune.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import Protocol


class Kind(StrEnum):
    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"
    AUX = "aux"  # auxiliary immutable records: protections, later drill reports and evidence


CONFIG_NAME = "config"


class Backend(Protocol):
    location: str

    def create(self) -> None:
        """Create an empty repository layout; RepositoryExists if a config is already there."""

    def save(self, kind: Kind, name: str, data: bytes) -> None: ...

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """ObjectNotFound if absent. A short read at the end is returned as is (callers check)."""

    def size(self, kind: Kind, name: str) -> int: ...

    def list(self, kind: Kind) -> Iterator[tuple[str, int]]:
        """(name, size) of every object of a kind, in no particular order."""

    def remove(self, kind: Kind, name: str) -> None:
        """Delete an object. Removing a missing object may succeed or raise ObjectNotFound (S3 DELETE
        is idempotent); an object the storage keeps under Object Lock raises ObjectLocked."""

    def exists(self, kind: Kind, name: str) -> bool: ...

    def close(self) -> None: ...


def exists_by_size(backend: Backend, kind: Kind, name: str) -> bool:
    """`exists` for backends whose cheapest probe is a size lookup."""
    from cermin.errors import ObjectNotFound

    try:
        backend.size(kind, name)
        return True
    except ObjectNotFound:
        return False
