"""In-memory backend for tests and fault injection."""

from __future__ import annotations

import threading

from cermin.backend.base import CONFIG_NAME, BackendBase, Capabilities, Kind
from cermin.errors import ObjectExists, ObjectNotFound, RepositoryExists


class MemoryBackend(BackendBase):
    caps = Capabilities()  # unversioned, no retention, deletes one object at a time

    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self.objects: dict[tuple[Kind, str], bytes] = {}
        self._lock = threading.Lock()

    def create(self) -> None:
        if (Kind.CONFIG, CONFIG_NAME) in self.objects:
            raise RepositoryExists(f"a repository already exists at {self.location}")

    def save(self, kind: Kind, name: str, data: bytes) -> None:
        with self._lock:
            if (kind, name) in self.objects:
                raise ObjectExists(f"{kind.value}/{name} already exists")
            self.objects[(kind, name)] = bytes(data)

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.objects[(kind, name)]
        except KeyError:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist") from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def size(self, kind: Kind, name: str) -> int:
        return len(self.load(kind, name))

    def list(self, kind: Kind):
        with self._lock:
            items = [(n, len(d)) for (k, n), d in self.objects.items() if k == kind]
        return iter(items)

    def remove(self, kind: Kind, name: str) -> None:
        with self._lock:
            if self.objects.pop((kind, name), None) is None:
                raise ObjectNotFound(f"{kind.value}/{name} does not exist")

    def exists(self, kind: Kind, name: str) -> bool:
        return (kind, name) in self.objects

    def close(self) -> None:
        pass
