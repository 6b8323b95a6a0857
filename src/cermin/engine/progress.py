"""One typed progress stream for every long operation (backup, restore, dump, check, prune, repair).

An operation takes `progress: Reporter | None` and calls it with `Progress` events: plain data
(a msgspec Struct), so a CLI line, a `status` JSON line, the agent's log and the dashboard all read
the same fields. Operations whose workers count without locks (backup, restore) do not call the
reporter per file: a `Ticker` samples their counters on one thread every `interval` seconds (the
reporter's own `interval` attribute, default 1 s). Step-wise operations (check, prune, repair) call
it at each phase and item through `Phases`. A reporter must be cheap and must not raise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import msgspec


class Progress(msgspec.Struct, kw_only=True):
    operation: str  # backup, restore, dump, check, prune, forget, repair index|packs|snapshots
    phase: str = ""  # e.g. "packs", "trees", "read data", "repack", "index", "delete"
    done: int = 0  # items done in this phase (files, packs, ...; see unit)
    total: int = 0  # items in this phase; 0: not known
    unit: str = ""  # what done/total count: "files", "packs", ...
    bytes_done: int = 0
    bytes_total: int = 0  # 0: not known
    dirs_done: int = 0  # backup: directories listed
    elapsed: float = 0.0  # seconds since the operation started
    message: str = ""  # one line for people

    def to_json(self) -> dict:
        """The `status` JSON line (docs/json.md): the fields of earlier versions first, then the rest."""
        d: dict = {"message_type": "status", "operation": self.operation}
        if self.unit == "files":
            d["files_done"] = self.done
        if self.operation == "backup":
            d["dirs_done"] = self.dirs_done
        d["bytes_done"] = self.bytes_done
        d.update(
            phase=self.phase,
            done=self.done,
            total=self.total,
            unit=self.unit,
            bytes_total=self.bytes_total,
            elapsed=round(self.elapsed, 3),
            message=self.message,
        )
        return d

    def to_text(self) -> str:
        """One status line for a terminal."""
        from cermin.util import fmt_bytes, plural

        s = int(self.elapsed)
        head = f"[{s // 60}:{s % 60:02d}] {self.operation}"
        if self.message:
            return f"{head}: {self.message}"
        parts = [self.phase] if self.phase else []
        if self.unit:
            one = self.unit[:-1] if self.unit.endswith("s") else self.unit
            parts.append(f"{self.done}/{self.total} {self.unit}" if self.total else plural(self.done, one, self.unit))
        if self.bytes_done or self.bytes_total:
            b = fmt_bytes(self.bytes_done)
            parts.append(f"{b} of {fmt_bytes(self.bytes_total)}" if self.bytes_total else b)
        return f"{head}: {', '.join(parts)}" if parts else head


class Reporter(Protocol):
    """Receives progress events; may set `interval` (seconds between sampled events)."""

    def __call__(self, event: Progress) -> None: ...


class Phases:
    """For step-wise operations: `step(phase, message, done=, total=, unit=)` builds and sends one event."""

    def __init__(self, reporter: Reporter | None, operation: str) -> None:
        self.reporter = reporter
        self.operation = operation
        self.start = time.monotonic()

    def __call__(self, phase: str, message: str = "", **counts) -> None:
        if self.reporter is not None:
            ev = Progress(
                operation=self.operation,
                phase=phase,
                message=message,
                elapsed=time.monotonic() - self.start,
                **counts,
            )
            self.reporter(ev)


class Ticker:
    """For operations whose workers count without locks: sample `sample()` into an event on one
    thread every `interval` seconds while the `with` block runs. No thread without a reporter."""

    def __init__(self, reporter: Reporter | None, sample: Callable[[float], Progress]) -> None:
        self.reporter = reporter
        self.sample = sample  # called with the elapsed seconds
        self.interval = float(getattr(reporter, "interval", 1.0) or 1.0)
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        assert self.reporter is not None
        while not self._stop.wait(self.interval):
            self.reporter(self.sample(time.monotonic() - self.start))

    def __enter__(self) -> Ticker:
        if self.reporter is not None:
            self._thread = threading.Thread(target=self._loop, name="cermin-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
