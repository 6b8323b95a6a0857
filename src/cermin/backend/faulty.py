"""FaultyBackend: wraps a backend and injects faults at the Nth call, for crash-safety tests.

Modes (counted over every protocol call, the capability methods included, or only over one
operation with e.g. `only="save"`):
  fail      call N raises a transient error (InjectedTransient, a TransientError: the retry layer
            retries it); later calls work again
  crash     call N and every call after it raise BackendCrashed: the process "died"; with
            crash_after=True call N reaches the backend first (written but not acknowledged)
  truncate  the Nth save stores only the first half of its bytes and reports success
  flip      the Nth save stores its bytes with one bit flipped and reports success
"""

from __future__ import annotations

import threading
from datetime import datetime

from cermin.backend.base import Backend, BackendWrapper, Kind, Leftover
from cermin.errors import CerminError, TransientError


class InjectedFault(CerminError):
    pass


class InjectedTransient(InjectedFault, TransientError):
    """The `fail` mode's error: what a dropped connection looks like to the retry layer."""


class BackendCrashed(InjectedFault):
    """The process "died": permanent, never retried."""


class FaultyBackend(BackendWrapper):
    def __init__(
        self, inner: Backend, mode: str | None = None, at: int = 0, only: str | None = None, crash_after: bool = False
    ) -> None:
        super().__init__(inner)
        self.mode = mode
        self.at = at
        self.only = only
        self.crash_after = crash_after
        self.calls = 0
        self.dead = False
        self.fired = False
        self._lock = threading.Lock()

    def _tick(self, op: str) -> bool:
        """Count this call; True when the fault fires on it. Raises when the backend is dead."""
        with self._lock:
            if self.dead:
                raise BackendCrashed(f"backend crashed before {op}")
            if self.only is not None and op != self.only:
                return False
            self.calls += 1
            hit = self.mode is not None and self.calls == self.at
            if hit:
                self.fired = True
            return hit

    def _before(self, op: str) -> bool:
        hit = self._tick(op)
        if hit and self.mode == "fail":
            raise InjectedTransient(f"injected failure of {op} (call {self.calls})")
        if hit and self.mode == "crash" and not self.crash_after:
            self.dead = True
            raise BackendCrashed(f"injected crash at {op} (call {self.calls})")
        return hit

    def _after(self, hit: bool, op: str) -> None:
        if hit and self.mode == "crash" and self.crash_after:
            self.dead = True
            raise BackendCrashed(f"injected crash after {op} (call {self.calls})")

    def _call(self, op: str, fn, *args):
        hit = self._before(op)
        out = fn(*args)
        self._after(hit, op)
        return out

    def create(self) -> None:
        self.inner.create()

    def save(self, kind: Kind, name: str, data: bytes) -> None:
        hit = self._before("save")
        if hit and self.mode == "truncate":
            data = bytes(data[: len(data) // 2])
        elif hit and self.mode == "flip":
            b = bytearray(data)
            b[len(b) // 2] ^= 0x10
            data = bytes(b)
        self.inner.save(kind, name, data)
        self._after(hit, "save")

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        hit = self._before("load")
        out = self.inner.load(kind, name, offset, length)
        self._after(hit, "load")
        return out

    def size(self, kind: Kind, name: str) -> int:
        hit = self._before("size")
        out = self.inner.size(kind, name)
        self._after(hit, "size")
        return out

    def list(self, kind: Kind):
        hit = self._before("list")
        out = list(self.inner.list(kind))
        self._after(hit, "list")
        return iter(out)

    def remove(self, kind: Kind, name: str) -> None:
        hit = self._before("remove")
        self.inner.remove(kind, name)
        self._after(hit, "remove")

    def exists(self, kind: Kind, name: str) -> bool:
        hit = self._before("exists")
        out = self.inner.exists(kind, name)
        self._after(hit, "exists")
        return out

    def close(self) -> None:
        self.inner.close()

    # ---- capability methods: counted like the rest, so fault sweeps cover them ----------------------
    def configure(self, extra: dict) -> None:
        self.inner.configure(extra)

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call("load_original", self.inner.load_original, kind, name, offset, length)

    def original_version(self, kind: Kind, name: str) -> str:
        return self._call("original_version", self.inner.original_version, kind, name)

    def original_versions(self, kind: Kind) -> dict[str, tuple[str, int]]:
        return self._call("original_versions", self.inner.original_versions, kind)

    def first_written(self, kind: Kind) -> dict[str, float]:
        return self._call("first_written", self.inner.first_written, kind)

    def hidden(self) -> list[str]:
        return self._call("hidden", self.inner.hidden)

    def unhide(self) -> list[str]:
        return self._call("unhide", self.inner.unhide)

    def retention(self, kind: Kind, name: str, version: str | None = None) -> datetime | None:
        return self._call("retention", self.inner.retention, kind, name, version)

    def extend_retention(self, kind: Kind, name: str, until: datetime, version: str | None = None) -> None:
        return self._call("extend_retention", self.inner.extend_retention, kind, name, until, version)

    def remove_many(self, items: list[tuple[Kind, str]]) -> str | None:
        return self._call("remove_many", self.inner.remove_many, list(items))

    def leftovers(self) -> list[Leftover]:
        return self._call("leftovers", self.inner.leftovers)

    def remove_leftover(self, path: str) -> None:
        return self._call("remove_leftover", self.inner.remove_leftover, path)
