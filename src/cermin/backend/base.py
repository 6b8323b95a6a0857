"""The narrow storage protocol every backend implements (local directory, memory, S3, HTTP).

Objects are write-once: `save` must fail with ObjectExists rather than replace an existing object,
and must only return once the object is durable. Only locks are ever removed outside prune.

What a store can do beyond the core calls is declared in its `caps` (a `Capabilities` record), never
probed with getattr: every backend has every method of the protocol, and `BackendBase` gives the
meaning each one has on a store without the capability (an unversioned store's "original version"
is the object itself; a batch removal is a loop over `remove`; a store without Object Lock keeps no
retention).

Errors: drivers raise `TransientError` for what may succeed if tried again (connection refused or
reset, timeouts, 5xx, throttling) and typed permanent errors for the rest (ObjectNotFound,
ObjectExists, ObjectLocked, AccessDenied, ...). Drivers do not retry: `backend/retry.py` does, once,
for every backend that can fail transiently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class Kind(StrEnum):
    CONFIG = "config"
    KEY = "keys"
    DATA = "data"
    INDEX = "index"
    SNAPSHOT = "snapshots"
    LOCK = "locks"
    AUX = "aux"  # auxiliary immutable records: protections, later drill reports and evidence


CONFIG_NAME = "config"

# Local disks: 8 MiB packs halve the memory a backup holds in packs being filled and uploaded.
# Object stores (S3, the HTTP server) declare 16 MiB: fewer requests, per shared/DESIGN.md.
LOCAL_PACK_SIZE = 8 * 1024 * 1024
OBJECT_STORE_PACK_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the core calls. Callers branch on these, never on getattr."""

    versions: bool = False
    """The store keeps every version of a key (S3 with versioning): `load_original` reads the first
    version, the one cermin wrote, `original_version(s)` name it, `hidden`/`unhide` find and remove
    delete markers. Without it those read the object itself and nothing is ever hidden."""
    retention: bool = False
    """The store can hold objects under per-object Object Lock retention when the repository has a
    lock policy (`lock`): `retention` / `extend_retention` read and extend it."""
    batch_remove: bool = False
    """`remove_many` is ONE request (a server with a two-person rule): it may queue the deletion and
    answer with an approval request id. Without it `remove_many` is a loop over `remove`."""
    takes_config: bool = False
    """`configure(extra)` applies repository settings stored in the config (the Object Lock policy)."""
    default_pack_size: int = LOCAL_PACK_SIZE
    """Pack size for new repositories on this store."""


@dataclass(frozen=True)
class Leftover:
    """A temporary file an interrupted write left behind: never an object, never read."""

    path: str  # relative to the repository root, e.g. "data/ab/.tmp-0123abcd-5e6f"
    size: int
    mtime: float  # when it was last written (seconds since the epoch, the storage's clock)


class Spool(Protocol):
    """A temporary object being written (`Backend.spool`). `commit` makes it the object `name` with
    the guarantees of `save` (durable before it is visible, never replacing an object:
    ObjectExists); `discard` drops it. Either ends it; an interrupted process leaves a leftover."""

    size: int  # bytes written so far
    # True: a file the caller reads back whole to `save` it (repo/packspool.py, for stores that take
    # whole objects); False: the store's own, made the object by `commit`
    whole: bool

    def write(self, parts: list) -> None: ...

    def commit(self, name: str) -> None: ...

    def discard(self) -> None: ...


@runtime_checkable
class Backend(Protocol):
    location: str
    caps: Capabilities
    lock: Any  # the Object Lock policy in force (an s3.LockPolicy), None without one
    planted_config: int  # newer versions of `config` seen, written by someone else (caps.versions)

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

    # ---- capability methods: meaningful per `caps`, harmless defaults otherwise (BackendBase) ----
    def configure(self, extra: dict) -> None:
        """Apply repository settings from the plaintext config (caps.takes_config)."""

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """The first version ever written under this name (caps.versions); else `load`."""

    def original_version(self, kind: Kind, name: str) -> str:
        """Version id of the first version (caps.versions); "" on an unversioned store."""

    def original_versions(self, kind: Kind) -> dict[str, tuple[str, int]]:
        """name -> (first version id, number of real versions) for every object of a kind."""

    def first_written(self, kind: Kind) -> dict[str, float]:
        """name -> storage time of each object's first version (caps.versions); else {}."""

    def hidden(self) -> list[str]:
        """Keys whose newest entry is a delete marker over real data (caps.versions); else []."""

    def unhide(self) -> list[str]:
        """Remove delete markers hiding real versions; returns the keys made visible again."""

    def retention(self, kind: Kind, name: str, version: str | None = None) -> datetime | None:
        """Retain-until date of the version cermin wrote (caps.retention); None without one."""

    def extend_retention(self, kind: Kind, name: str, until: datetime, version: str | None = None) -> None:
        """Extend Object Lock retention (caps.retention); UsageError on a store without it."""

    def remove_many(self, items: list[tuple[Kind, str]]) -> str | None:
        """Remove all `items`: an approval request id when a server queued them (caps.batch_remove),
        None when they are gone. Missing objects are skipped; ObjectLocked propagates."""

    def leftovers(self) -> list[Leftover]:
        """Temporary files of interrupted writes (a directory's `.tmp-*` after a kill -9); [] on a
        store whose writes are atomic (S3 single-shot puts, the server's own disk)."""

    def remove_leftover(self, path: str) -> None:
        """Remove one temporary file `leftovers` listed; gone already is fine. Never an object."""

    def spool(self, kind: Kind, owner: str = "") -> Spool | None:
        """A new object written piece by piece before its name is known (a pack, named by the hash
        of its bytes), so it is never held whole in memory; None: this store takes whole objects
        (`save`), and callers build them in memory. Wrappers return None: every write goes through
        their own `save`. `owner` (letters, digits, '-') names who may `drop_spools` it."""

    def drop_spools(self, owner: str) -> None:
        """Remove the spools handed out for `owner` and not committed or discarded: it was stopped
        (a backup worker)."""


class BackendBase:
    """Defaults of the capability methods for a store without the capability. Drivers subclass it
    and override what their `caps` declare."""

    location: str = ""
    caps: Capabilities = Capabilities()
    lock: Any = None
    planted_config: int = 0

    def configure(self, extra: dict) -> None:
        """Nothing to apply. An Object Lock policy in the config of a copy on a store without
        retention (a locked repository copied to a disk) is not refused here: the copy opens, and
        `Repository.init` refuses to create such a repository (it checks caps.retention)."""

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.load(kind, name, offset, length)  # type: ignore[attr-defined]

    def original_version(self, kind: Kind, name: str) -> str:
        self.size(kind, name)  # type: ignore[attr-defined]  # ObjectNotFound when absent
        return ""

    def original_versions(self, kind: Kind) -> dict[str, tuple[str, int]]:
        return {n: ("", 1) for n, _ in self.list(kind)}  # type: ignore[attr-defined]

    def first_written(self, kind: Kind) -> dict[str, float]:
        return {}

    def hidden(self) -> list[str]:
        return []

    def unhide(self) -> list[str]:
        return []

    def retention(self, kind: Kind, name: str, version: str | None = None) -> datetime | None:
        return None

    def extend_retention(self, kind: Kind, name: str, until: datetime, version: str | None = None) -> None:
        from cermin.errors import UsageError

        raise UsageError(f"{self.location} cannot hold Object Lock retention")

    def remove_many(self, items: list[tuple[Kind, str]]) -> str | None:
        from cermin.errors import ObjectNotFound

        for kind, name in items:
            try:
                self.remove(kind, name)  # type: ignore[attr-defined]
            except ObjectNotFound:
                pass
        return None

    def leftovers(self) -> list[Leftover]:
        return []

    def remove_leftover(self, path: str) -> None:
        pass

    def spool(self, kind: Kind, owner: str = "") -> Spool | None:
        return None

    def drop_spools(self, owner: str) -> None:
        """Nothing to remove: this store hands out no spools."""


def exists_by_size(backend: Backend, kind: Kind, name: str) -> bool:
    """`exists` for backends whose cheapest probe is a size lookup."""
    from cermin.errors import ObjectNotFound

    try:
        backend.size(kind, name)
        return True
    except ObjectNotFound:
        return False


class BackendWrapper:
    """A backend around another one (fault injection, retries): the wrapped store's attributes show
    through; subclasses forward each call in their own way."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location

    @property
    def caps(self) -> Capabilities:
        return self.inner.caps

    def spool(self, kind: Kind, owner: str = "") -> Spool | None:
        return None  # never the inner store's: that would bypass this wrapper's `save`

    def drop_spools(self, owner: str) -> None:
        pass  # it handed out none

    @property
    def lock(self):
        return self.inner.lock

    @property
    def planted_config(self) -> int:
        return self.inner.planted_config
