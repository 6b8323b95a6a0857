"""VerifyingBackend: read every content-addressed object back after saving it.

A store can acknowledge a write and keep other bytes (a truncated upload, a flipped bit on a bad disk
or controller). Names are BLAKE3 of the content, so a read-back proves the object: its size first (one
cheap call), then its bytes. A mismatch raises StoredDamaged; nothing is overwritten or deleted (the
backends refuse to replace an object, and under Object Lock nothing can be), so callers store the
content again under a new name: Repository.save_object re-seals (fresh nonce, new name),
BlobSaver rebuilds the pack with a new salt. The damaged object is left for `check` to name and prune
to remove. Used by `cermin mirror` for its target; costs one read of everything written.
"""

from __future__ import annotations

from cermin.backend.base import BackendWrapper, Kind
from cermin.errors import StoredDamaged

VERIFIED_KINDS = frozenset({Kind.DATA, Kind.INDEX, Kind.SNAPSHOT, Kind.AUX})


class VerifyingBackend(BackendWrapper):
    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.damaged: list[tuple[Kind, str]] = []  # objects found damaged after their save

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def save(self, kind: Kind, name: str, data) -> None:
        self.inner.save(kind, name, data)
        if kind not in VERIFIED_KINDS:
            return
        n = len(data)
        size = self.inner.size(kind, name)
        why = None
        if size != n:
            why = f"{size} bytes stored of {n}"
        elif bytes(self.inner.load(kind, name)) != bytes(data):
            why = "its bytes differ from those written"
        if why is not None:
            self.damaged.append((kind, name))
            raise StoredDamaged(f"{kind.value}/{name[:12]} was stored damaged ({why})", kind, name)

    def load(self, kind, name, offset=0, length=None):
        return self.inner.load(kind, name, offset, length)

    def size(self, kind, name):
        return self.inner.size(kind, name)

    def list(self, kind):
        return self.inner.list(kind)

    def remove(self, kind, name):
        return self.inner.remove(kind, name)

    def exists(self, kind, name):
        return self.inner.exists(kind, name)

    def create(self):
        return self.inner.create()

    def close(self):
        return self.inner.close()
