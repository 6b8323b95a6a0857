"""Backup observers: plain-data events about every item a backup sees, and fields for its snapshot.

An observer (the ransomware guard, a verbose printer, a test) subclasses `BackupObserver` and is given
to `BackupOptions.observers`. It sees each item once, as restic's archiver `CompleteItem` does:

- `start(BackupStart)`         once, first: the parent snapshot's id and totals (what the tree held
                               before), so an observer can tell what disappeared even inside
                               removed directories; for a stdin backup, the stream's file name.
- `file_read(FileRead)`        a file whose content was read (new or changed): its size and mtime, the
                               previous version's size/mtime/stored size, each chunk's raw and stored
                               length, and a cheap fingerprint of its head (magic bytes, entropy).
- `file_unchanged(FileUnchanged)` a file skipped because the parent snapshot has it with the same
                               size, mtime, ctime and inode.
- `file_removed(FileRemoved)`  an entry of the parent snapshot's directory that is not in the new one
                               (deleted or excluded now; an entry that failed gives an `error`
                               instead, and an unlistable directory reports no removals). A
                               removed directory is one event; what was below it is not listed.
- `directory(DirectoryDone)`   a directory whose tree is complete, with counts of what it holds (the
                               path components above the backup targets are directories too).
- `stdin(StdinRead)`           the data of `backup --stdin`, right after its `file_read`: the stream
                               is also a file read (path = its file name), whose previous version is
                               the file of that name in the parent snapshot (a stdin backup's parent:
                               the newest snapshot this client wrote of the same host, file name and
                               tags), so an observer judges a dump as it judges a changed file.
- `error(BackupError)`         an item that could not be saved (the message is also in the summary).
- `finish(summary)`            once, at the end, with the SnapshotSummary: returns fields for
                               `Snapshot.extra` (e.g. `{"guard": {"verdict": "suspicious", ...}}`).
                               This is how an observer *marks* a snapshot; it never aborts a backup.

Events are frozen msgspec Structs of primitives only (bytes, int, float, bool, tuples of them): they
pickle and cross process boundaries, and an observer may keep them without holding on to the
pipeline's buffers or nodes. With no observer, no event is built.

Processes and threads. Files are read in worker processes (engine/backup/workers.py); every event is
delivered in the process and on the thread that called `run_backup`, one at a time, in this order
within a directory: its entries' events, then its `file_removed` events, then its `directory` event
(so a parent's `directory` follows each of its subdirectories'); events of other directories
interleave with them. `start` comes first; `finish` once, after every other event has returned (it is
not called when the backup fails: a storage error, an interrupt). Each event is delivered exactly once
per item and per observer. The per-file part of the keyed observer (`assess`, a pure function) runs in
the worker that read the file; keep the handlers here short: they run on the walking thread.

Failures. An observer that raises (an `Exception`, in any event or in `finish`) is detached: it gets no
further events, its `finish` is not called, and one backup error names it. The backup goes on and its
snapshot is written with all its data, marked incomplete (exit code 3) because it lacks what the
observer would have added — a snapshot without a guard verdict must not pass for a checked one.
Fields from `finish` that do not encode as msgpack, or whose key is already in `Snapshot.extra`, are
dropped with an error the same way.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import msgspec

from cermin.format.records import SnapshotSummary

HEAD_BYTES = 16  # bytes of a file's head kept in events: enough for magic numbers (SQLite's is 16)
ENTROPY_BYTES = 4096  # the head fragment whose byte-histogram entropy is estimated
# Shorter heads get no estimate (-1): log2(n) caps a histogram of n bytes, so below 1 KiB ciphertext
# cannot be told from text by entropy (and most files of a system tree are that small: skipping them
# is most of the guard's saving on a first backup).
ENTROPY_MIN_BYTES = 1024
ENTROPY_SKIP_RATIO = 0.80  # a head whose chunk stores at <= this of its size is not estimated (see head_facts)


class FileRead(msgspec.Struct, frozen=True, gc=False):
    path: bytes
    size: int  # bytes read and saved
    mtime_ns: int
    chunks: tuple[tuple[int, int], ...]  # (raw length, stored length) per chunk; stored 0: already in the repository
    head: bytes = b""  # the first HEAD_BYTES bytes ("" when no observer asked for the fingerprint)
    # bits per byte over the first ENTROPY_BYTES bytes (0..8); -1: not computed: a head shorter than
    # ENTROPY_MIN_BYTES, or one whose chunk compressed (see head_facts)
    head_entropy: float = -1.0
    previous_size: int = -1  # -1: a new file (no previous version in the parent snapshot)
    previous_mtime_ns: int = -1
    previous_stored: int = -1  # compressed size of the previous version's chunks; -1: unknown
    changed_during_read: bool = False
    # The previous version's Node.extra[node_key] as sorted (key, value) pairs (see BackupObserver.node_key).
    previous_fingerprint: tuple[tuple[str, float | int | str], ...] = ()
    # What the keyed observer's `assess` returned for this file in the process that read it (plain data,
    # as decoded from msgpack: tuples arrive as lists); None: not assessed there (assess it here).
    assessment: Any = None

    @property
    def new(self) -> bool:
        return self.previous_size < 0

    @property
    def raw(self) -> int:
        return sum(c[0] for c in self.chunks)

    @property
    def stored(self) -> int:
        """Compressed bytes this file added (deduplicated chunks add nothing)."""
        return sum(c[1] for c in self.chunks)


class BackupStart(msgspec.Struct, frozen=True, gc=False):
    parent: str = ""  # the parent snapshot's id; "" for none (a first backup)
    parent_files: int = -1  # its summary's total_files / total_bytes (read from the repository: hostile;
    parent_bytes: int = -1  # clipped to >= -1 here); -1: no parent
    stdin: bytes = b""  # a stdin backup: the stream's file name (the whole source is that one file)


class FileUnchanged(msgspec.Struct, frozen=True, gc=False):
    path: bytes
    size: int
    mtime_ns: int


class FileRemoved(msgspec.Struct, frozen=True, gc=False):
    path: bytes
    type: str  # records.FILE, DIR, SYMLINK, ...
    size: int  # of a file in the parent snapshot; 0 for others
    fingerprint: tuple[tuple[str, float | int | str], ...] = ()  # its Node.extra[node_key], as in FileRead


class DirectoryDone(msgspec.Struct, frozen=True, gc=False):
    path: bytes
    files: int
    dirs: int
    others: int  # symlinks, devices, fifos, sockets
    removed: int  # entries of the parent snapshot's directory that are gone


class StdinRead(msgspec.Struct, frozen=True, gc=False):
    name: bytes
    size: int
    chunks: tuple[tuple[int, int], ...]
    head: bytes = b""
    head_entropy: float = -1.0


class BackupError(msgspec.Struct, frozen=True, gc=False):
    path: bytes  # b"" when no path applies (an observer's failure)
    message: str


class BackupObserver:
    """Base class: every event is a no-op. Override what you need; see the module docstring for threads."""

    # False lets the pipeline skip computing FileRead.head/head_entropy/previous_stored for this observer.
    fingerprint: ClassVar[bool] = True
    # Non-empty: the file saver stores `node_fingerprint(ev)` (a small dict of primitives, or None) in the
    # node's extra under this key, and the next backup's FileRead/FileRemoved carry it back as
    # `previous_fingerprint`/`fingerprint`. Only the first observer with a key is asked.
    node_key: ClassVar[str] = ""
    # With a node_key: a pure function of one FileRead (no observer state; of `path` only its last
    # component), run in the worker process that read the file, its plain-data result arriving as
    # `FileRead.assessment`. Moves the per-file part of an observer off the walking process.
    assess: ClassVar[Callable[[FileRead], Any] | None] = None

    def node_fingerprint(self, ev: FileRead) -> dict[str, Any] | None:
        """Once per FileRead, just before `file_read(ev)`; keep it cheap."""
        return None

    def start(self, ev: BackupStart) -> None:
        pass

    def file_read(self, ev: FileRead) -> None:
        pass

    def file_unchanged(self, ev: FileUnchanged) -> None:
        pass

    def file_removed(self, ev: FileRemoved) -> None:
        pass

    def directory(self, ev: DirectoryDone) -> None:
        pass

    def stdin(self, ev: StdinRead) -> None:
        pass

    def error(self, ev: BackupError) -> None:
        pass

    def finish(self, summary: SnapshotSummary) -> dict[str, Any]:
        return {}


class Observers:
    """Several observers as one: fans each event out, detaches an observer that raises and reports it
    through `on_failure(message)`. Thread-safe (a stdin backup's uploads and the walker may overlap)."""

    def __init__(self, observers: Iterable[BackupObserver], on_failure: Callable[[str], None]) -> None:
        self._active: tuple[BackupObserver, ...] = tuple(observers)
        self._lock = threading.Lock()
        self._on_failure = on_failure
        self.fingerprint = any(o.fingerprint for o in self._active)
        keyed = [o for o in self._active if o.node_key]
        self._keyed = keyed[0] if keyed else None
        self.node_key = keyed[0].node_key if keyed else ""
        self.assess = keyed[0].assess if keyed else None  # run by the worker processes (see BackupObserver)

    def __bool__(self) -> bool:
        return bool(self._active)

    def _failed(self, obs: BackupObserver, event: str, exc: Exception) -> None:
        with self._lock:
            if obs not in self._active:
                return
            self._active = tuple(o for o in self._active if o is not obs)
        self._on_failure(
            f"observer {type(obs).__name__} failed in {event} ({type(exc).__name__}: {exc}); "
            "it was detached and its fields are missing from the snapshot"
        )

    def _send(self, event: str, ev) -> None:
        for obs in self._active:  # a tuple: detaching replaces it, iteration is never disturbed
            try:
                getattr(obs, event)(ev)
            except Exception as e:
                self._failed(obs, event, e)

    def start(self, ev: BackupStart) -> None:
        self._send("start", ev)

    def file_read(self, ev: FileRead) -> None:
        self._send("file_read", ev)

    def node_fingerprint(self, ev: FileRead) -> dict[str, Any] | None:
        obs = self._keyed
        if obs is None or obs not in self._active:
            return None
        try:
            return obs.node_fingerprint(ev)
        except Exception as e:
            self._failed(obs, "node_fingerprint", e)
            return None

    def file_unchanged(self, ev: FileUnchanged) -> None:
        self._send("file_unchanged", ev)

    def file_removed(self, ev: FileRemoved) -> None:
        self._send("file_removed", ev)

    def directory(self, ev: DirectoryDone) -> None:
        self._send("directory", ev)

    def stdin(self, ev: StdinRead) -> None:
        self._send("stdin", ev)

    def error(self, ev: BackupError) -> None:
        self._send("error", ev)

    def finish(self, summary: SnapshotSummary, taken: Iterable[str] = ()) -> dict[str, Any]:
        """Fields of every observer's `finish`, merged; a key in `taken` or set twice is refused."""
        out: dict[str, Any] = {}
        taken = set(taken)
        for obs in self._active:
            try:
                fields = obs.finish(summary)
                if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
                    raise TypeError("finish() must return a dict with str keys")
                clash = sorted((taken | out.keys()) & fields.keys())
                if clash:
                    raise ValueError(f"snapshot field(s) {', '.join(clash)} already set")
                msgspec.msgpack.encode(fields)  # refused here rather than when the snapshot is written
            except Exception as e:
                self._failed(obs, "finish", e)
                continue
            out.update(fields)
        return out


_NLOGN = None  # n * log2(n) for n = 0..ENTROPY_BYTES


def head_facts(data, first_chunk: tuple[int, int] | None = None) -> tuple[bytes, float]:
    """The head bytes of a file and the Shannon entropy (bits/byte) of its first ENTROPY_BYTES bytes;
    -1 below ENTROPY_MIN_BYTES, and -1 when `first_chunk` (raw, stored length) shows the chunk holding
    the head compressed to ENTROPY_SKIP_RATIO or less: such a head is not ciphertext, and for a
    compressible file its compression ratio is the stronger witness. Skipping the histogram there is
    most of the guard's saving on a tree of binaries and text (bincount costs ~10 us a file).

    Entropy alone cannot tell ciphertext from compressed data; the guard combines it with the header
    bytes and with the change of compressibility against the previous version."""
    head = bytes(data[:HEAD_BYTES])
    n = min(len(data), ENTROPY_BYTES)
    if n < ENTROPY_MIN_BYTES:
        return head, -1.0
    if first_chunk is not None and 0 < first_chunk[1] <= ENTROPY_SKIP_RATIO * first_chunk[0]:
        return head, -1.0
    import numpy as np

    global _NLOGN
    if _NLOGN is None:
        k = np.arange(ENTROPY_BYTES + 1, dtype=np.float64)
        k[0] = 1.0
        _NLOGN = k * np.log2(k)
    counts = np.bincount(np.frombuffer(data[:n], np.uint8), minlength=256)
    # H = log2(n) - sum(c * log2(c)) / n
    return head, max(0.0, float(math.log2(n) - _NLOGN.take(counts).sum() / n))
