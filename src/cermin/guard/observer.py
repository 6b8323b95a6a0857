"""GuardObserver: the ransomware guard's signals, computed inline from a backup's events (no second read),
combined per snapshot into the verdict written at commit as `Snapshot.extra["guard"]`:

    {"version": 1, "verdict": "clean" | "suspicious" | "infected", "score": 0..1,
     "reasons": [short strings], "paths": [up to 100 display paths], "signals": {name: number}}

and a per-file fingerprint in each read file's node, `Node.extra["g"] = {"r": stored/raw, "e": head
entropy, "k": format kind}`, which the next backup compares the file's new version with.

Each file adds evidence points (policy.STRONG / WEAK) when it shows a property of encryption that benign
churn rarely has: its changed regions stopped compressing while it compressed before, its format's magic
is gone, its head turned from structured to ciphertext-flat. Names add points (ransomware extensions, many
files gaining one unknown extension, ransom notes in several directories), mass deletion and rewrite add a
little. A changed canary file is infected outright. Points -> score = 1 - exp(-points / SCALE).

A stream (a stdin backup: BackupStart.stdin names its file) is one file that is the whole source, read as
a changed file against the previous dump: its evidence weighs policy.STREAM_FACTOR files, and a stream
that lost most of its bytes is a source emptied (half of them: shrank)."""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from typing import Any, ClassVar

from cermin.engine.observer import (
    BackupObserver,
    BackupStart,
    DirectoryDone,
    FileRead,
    FileRemoved,
    FileUnchanged,
)
from cermin.format.records import FILE
from cermin.guard import canary, policy
from cermin.guard import signals as sig
from cermin.util import display_path

KEY = "g"  # Node.extra key of the per-file fingerprint
VERSION = 1
KEEP_PATHS = 2 * policy.MAX_PATHS  # paths kept per point value (some repeat under two signals)

# Extensions a file legitimately gains from a tool (compression, signing, editors, package managers).
_BENIGN_APPENDED = frozenset(
    b"bak old orig tmp temp gpg pgp asc sig age enc part crdownload swp save sav cache new prev backup "
    b"dpkg-old dpkg-new dpkg-dist dpkg-bak rpmsave rpmnew ucf-old ucf-dist lz lz4 z br lzma".split()
) | frozenset(sig.EXPECTED_KIND)


def assess(ev: FileRead) -> tuple[dict[str, Any], tuple[float, str] | None, bool, bool]:
    """One file's evidence, from the event alone (of its path only the name): (fingerprint for its node,
    (points, signal) or None, new and ciphertext-like without a format, new with a ransom-note name).
    Pure, so it runs in the worker process that read the file; GuardObserver.file_read adds it up."""
    name = ev.path.rpartition(b"/")[2]
    if not ev.size and not ev.head and not ev.chunks and ev.previous_size < 0 and not ev.previous_fingerprint:
        # A new empty file (the walker's, never sent to a worker): only its name can say anything.
        # Equal to the general case below (test_guard_observer), at a third of its cost.
        found = (policy.KNOWN_EXT_POINTS, "ransom_ext") if sig.extension(name) in sig.RANSOM_EXTENSIONS else None
        return {"r": -1.0, "e": -1.0, "k": ""}, found, False, sig.ransom_note_name(name)
    return _assess(ev, name)


def _assess(ev: FileRead, name: bytes) -> tuple[dict[str, Any], tuple[float, str] | None, bool, bool]:
    kind = sig.kind_of(ev.head)
    new_raw, ratio, share = sig.chunk_stats(ev.chunks)
    fp = _fingerprint(ev, kind, new_raw, ratio, share)
    flat_head = sig.ciphertext_head(ev.head_entropy, ev.size)
    if ev.previous_size < 0:
        cipherlike = not kind and (flat_head or (new_raw >= policy.MIN_COMPARE_BYTES and share >= 0.5))
        found = None
        if not kind and sig.extension(name) in sig.RANSOM_EXTENSIONS:
            found = (policy.KNOWN_EXT_POINTS, "ransom_ext")
        elif flat_head and sig.magic_mismatch(name, ev.head, ev.size):
            found = (policy.WEAK, "magic_mismatch")
        return fp, found, bool(cipherlike), sig.ransom_note_name(name)
    return fp, _changed(ev, name, kind, new_raw, ratio, share, flat_head), False, False


def _fingerprint(ev: FileRead, kind: str, new_raw: int, ratio: float, share: float) -> dict[str, Any]:
    """Node.extra["g"]: stored/raw, head entropy, format kind."""
    raw = ev.raw
    if new_raw and new_raw < raw:  # deduplicated chunks: count them at the previous version's ratio
        prev_r = dict(ev.previous_fingerprint).get("r", -1.0)
        if isinstance(prev_r, (int, float)) and prev_r >= 0:
            ratio = (ratio * new_raw + prev_r * (raw - new_raw)) / raw
    elif not new_raw:
        ratio = dict(ev.previous_fingerprint).get("r", -1.0)
    e = ev.head_entropy
    return {"r": round(float(ratio), 3), "e": round(e, 2) if e >= 0 else -1.0, "k": kind}


def _changed(ev: FileRead, name, kind, new_raw, ratio, share, flat_head) -> tuple[float, str] | None:
    fp = dict(ev.previous_fingerprint)
    prev_r = fp.get("r", -1.0)
    if (not isinstance(prev_r, (int, float)) or prev_r < 0) and ev.previous_stored > 0 and ev.previous_size:
        prev_r = ev.previous_stored / ev.previous_size  # a parent made before the guard
    prev_k = fp.get("k")  # None: unknown (no fingerprint)
    prev_e = fp.get("e", -1.0)
    loss = sig.compressibility_loss(float(prev_r), new_raw, ratio, share)
    if prev_k and not kind:
        return (policy.STRONG, "format_broken")
    if loss and not kind:
        return (policy.STRONG, "compress_loss")
    if loss and kind == prev_k and ratio >= policy.INCOMPRESSIBLE and prev_r <= policy.COMPRESSIBLE - 0.2:
        # header kept, body turned into ciphertext (the attack on header-only tests); also what a
        # database that started storing compressed blobs looks like, hence weak
        return (policy.WEAK, "compress_loss_magic_kept")
    if isinstance(prev_e, (int, float)) and 0 <= prev_e <= policy.LOW_ENTROPY and flat_head and not kind:
        return (policy.WEAK, "entropy_jump")
    if prev_k is None and flat_head and sig.magic_mismatch(name, ev.head, ev.size):
        return (policy.WEAK, "magic_mismatch")
    return None


class GuardObserver(BackupObserver):
    """Memory stays bounded by the directories in flight, not by the tree: a directory's new and removed
    files are compared (renames) when its `directory` event arrives, then dropped; evidence keeps
    counts, point totals and at most KEEP_PATHS paths per point value."""

    fingerprint: ClassVar[bool] = True
    node_key: ClassVar[str] = KEY

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._points = 0.0  # sum of every file's evidence points
        self._per_signal: Counter[str] = Counter()  # evidence signal -> files
        self._paths: defaultdict[float, list[bytes]] = defaultdict(list)  # points -> first KEEP_PATHS paths
        self._counts: Counter[str] = Counter()
        self._canary: list[bytes] = []
        # per directory in flight: new files (name, ciphertext-like and formatless) and removed files
        # (name -> fingerprint); settled into renames when the directory is done
        self._new: defaultdict[bytes, list[tuple[bytes, bool]]] = defaultdict(list)
        self._removed: defaultdict[bytes, dict[bytes, dict]] = defaultdict(dict)
        self._by_ext: Counter[bytes] = Counter()  # appended extension -> files renamed so
        self._renamed: defaultdict[bytes, list[bytes]] = defaultdict(list)  # ext -> first KEEP_PATHS paths
        self._notes: defaultdict[bytes, set[bytes]] = defaultdict(set)
        self._prev_bytes = 0
        self._bytes = 0
        self._parent = BackupStart()  # the parent's totals: removals inside removed directories count too

    # ---- per-file assessment (in the worker process that read the file, see `assess`) ----------------
    assess = staticmethod(assess)

    def node_fingerprint(self, ev: FileRead) -> dict[str, Any]:
        a = ev.assessment if ev.assessment is not None else assess(ev)
        self._tls.last = (ev, a)  # file_read(ev) follows on this thread
        return a[0]

    # ---- events -------------------------------------------------------------------------------------
    def start(self, ev: BackupStart) -> None:
        self._parent = ev

    def file_read(self, ev: FileRead) -> None:
        path = ev.path
        d, _, name = path.rpartition(b"/")
        last = getattr(self._tls, "last", None)
        if ev.assessment is not None:
            a = ev.assessment
        elif last is not None and last[0] is ev:  # computed once, by node_fingerprint
            a = last[1]
        else:
            a = assess(ev)
        self._tls.last = None
        _, found, cipherlike, note = a
        new = ev.previous_size < 0
        if found is not None and not new and self._parent.stdin:  # the one file of a stream is the whole source
            found = (found[0] * policy.STREAM_FACTOR, found[1])
        with self._lock:
            c = self._counts
            c["files_read"] += 1
            self._bytes += ev.size
            if new:
                c["files_new"] += 1
                self._new[d].append((name, cipherlike))
                if note:
                    self._notes[name].add(d)
            else:
                c["files_changed"] += 1
                self._prev_bytes += ev.previous_size
                if name.startswith(canary.PREFIX):
                    self._canary.append(path)
            if found is not None:
                self._add(found[0], path, found[1])

    def _add(self, points: float, path: bytes, what: str) -> None:
        """One file's evidence (under the lock)."""
        self._points += points
        self._per_signal[what] += 1
        kept = self._paths[points]
        if len(kept) < KEEP_PATHS:
            kept.append(path)

    def file_unchanged(self, ev: FileUnchanged) -> None:
        with self._lock:
            self._counts["files_unchanged"] += 1
            self._bytes += ev.size
            self._prev_bytes += ev.size

    def file_removed(self, ev: FileRemoved) -> None:
        if ev.type != FILE:
            with self._lock:
                self._counts["removed_other"] += 1
            return
        d, _, name = ev.path.rpartition(b"/")
        with self._lock:
            self._counts["files_removed"] += 1
            self._prev_bytes += ev.size
            self._removed[d][name] = dict(ev.fingerprint)
            if name.startswith(canary.PREFIX):
                self._canary.append(ev.path)

    def directory(self, ev: DirectoryDone) -> None:
        # every entry's event has returned: settle this directory's renames and forget its files
        d = b"" if ev.path == b"/" else ev.path
        with self._lock:
            self._settle(d, self._new.pop(d, ()), self._removed.pop(d, None))

    def _settle(self, d: bytes, new, removed) -> None:
        """Removed a.txt and new a.txt.xyz in the same directory: a rename; with ciphertext, an encryption."""
        if not removed:
            return
        for name, cipherlike in new:
            ext = sig.appended_extension(name, removed)
            path = d + b"/" + name if d else name
            if ext is not None:
                self._by_ext[ext] += 1
                if len(self._renamed[ext]) < KEEP_PATHS:
                    self._renamed[ext].append(path)
                if cipherlike:
                    self._add(policy.STRONG, path, "renamed_encrypted")
            elif cipherlike and any(_was_compressible(fp) for fp in removed.values()):
                self._add(policy.WEAK, path, "replaced_by_ciphertext")

    # ---- verdict ------------------------------------------------------------------------------------
    def finish(self, summary) -> dict[str, Any]:
        with self._lock:
            for d in list(self._new.keys() | self._removed.keys()):  # directories without a `directory` event
                self._settle(d, self._new.pop(d, ()), self._removed.pop(d, None))
            return {"guard": self.verdict()}

    def verdict(self) -> dict[str, Any]:
        c = self._counts
        points = self._points
        per_signal = Counter(self._per_signal)
        paths_by_points = {p: list(v) for p, v in self._paths.items()}
        reasons: list[str] = []

        def add(p: float, path: bytes, what: str) -> None:
            nonlocal points
            points += p
            per_signal[what] += 1
            kept = paths_by_points.setdefault(p, [])
            if len(kept) < KEEP_PATHS:
                kept.append(path)

        for ext, n in self._by_ext.most_common():
            if n >= policy.RENAME_MIN and ext not in _BENIGN_APPENDED and ext not in sig.RANSOM_EXTENSIONS:
                reasons.append(f"{n} files gained the extension .{ext.decode(errors='replace')}")
                points += policy.WEAK * (n - len(self._renamed[ext]))  # renamed beyond the kept paths
                per_signal["mass_rename"] += n - len(self._renamed[ext])
                for p in self._renamed[ext]:
                    add(policy.WEAK, p, "mass_rename")
        note_dirs = 0
        # A note-like name in one or two directories is what a system's own documentation looks like
        # (howto.txt, recover.txt, 00_README.txt, FOO_WARNING.txt: a dozen on a Debian /usr/share): it
        # counts only beside evidence from the files themselves.
        beside_evidence = points > 0
        for name, dirs in sorted(self._notes.items()):
            note_dirs = max(note_dirs, len(dirs))
            if len(dirs) >= policy.NOTE_DIRS:
                reasons.append(f"ransom note {display_path(name)} appeared in {len(dirs)} directories")
                add(policy.NOTE_POINTS, name, "ransom_note")
            elif beside_evidence:
                for d in sorted(dirs):
                    add(policy.WEAK, d + b"/" + name if d else name, "ransom_note")
        # A removed directory is one event: what it held shows only as the parent's totals minus what
        # is still here (a parent read from the repository may lie: it can only raise these counts).
        kept = c["files_changed"] + c["files_unchanged"]
        removed = max(c["files_removed"], self._parent.parent_files - kept)
        prev_bytes = max(self._prev_bytes, self._parent.parent_bytes)
        prev_files = kept + removed
        mass = 0.0
        if prev_files >= policy.MASS_MIN_FILES:
            if removed >= 0.9 * prev_files:
                mass += 3.0
                reasons.append(f"source emptied: {removed} of {prev_files} files removed")
            elif removed >= policy.MASS_DELETE_FRACTION * prev_files:
                mass += policy.MASS_POINTS
                reasons.append(f"mass deletion: {removed} of {prev_files} files removed")
            if c["files_changed"] >= policy.MASS_REWRITE_FRACTION * prev_files:
                mass += policy.MASS_POINTS
                reasons.append(f"mass rewrite: {c['files_changed']} of {prev_files} files changed")
            if prev_bytes and self._bytes < (1 - policy.SHRINK_FRACTION) * prev_bytes:
                mass += policy.MASS_POINTS
                reasons.append(f"source shrank from {prev_bytes} to {self._bytes} bytes")
        elif self._parent.stdin:  # a stream: its bytes are the source, compared with its previous version's
            before = self._prev_bytes if c["files_changed"] else -1
            if before < 0 and self._parent.parent_files == 1:  # the previous version's node was unreadable
                before = self._parent.parent_bytes
            name = display_path(self._parent.stdin)
            if before < policy.MIN_COMPARE_BYTES:
                pass
            elif self._bytes <= (1 - policy.STREAM_EMPTIED_FRACTION) * before:
                mass += policy.STREAM_EMPTIED_POINTS
                reasons.append(f"source emptied: {name} went from {before} to {self._bytes} bytes")
            elif self._bytes < (1 - policy.SHRINK_FRACTION) * before:
                mass += policy.MASS_POINTS
                reasons.append(f"source shrank: {name} went from {before} to {self._bytes} bytes")
        for what, text in _REASONS:
            if per_signal[what]:
                reasons.append(text.format(n=per_signal[what]))
        points += mass
        score = 1.0 - math.exp(-points / policy.SCALE)
        if self._canary:
            score = 1.0
            reasons.insert(0, f"canary file changed or removed: {display_path(self._canary[0])}")
        if score >= policy.INFECTED_SCORE:
            verdict = "infected"
        elif score >= policy.SUSPICIOUS_SCORE:
            verdict = "suspicious"
        else:
            verdict = "clean"
        paths: list[str] = [display_path(p) for p in self._canary[: policy.MAX_PATHS]]
        seen = set(self._canary)
        for p in (p for pts in sorted(paths_by_points, reverse=True) for p in paths_by_points[pts]):
            if len(paths) >= policy.MAX_PATHS:
                break
            if p not in seen:
                seen.add(p)
                paths.append(display_path(p))
        signals: dict[str, float] = {k: v for k, v in sorted(c.items())}
        signals.update({k: v for k, v in sorted(per_signal.items()) if v})
        signals.update(points=round(points, 2), canary=len(self._canary), note_dirs=note_dirs)
        if removed > c["files_removed"]:
            signals["files_removed_in_dirs"] = removed - c["files_removed"]
        return {
            "version": VERSION,
            "verdict": verdict,
            "score": round(score, 4),
            "reasons": reasons if verdict != "clean" else reasons[:5],
            "paths": paths if verdict != "clean" else [],
            "signals": signals,
        }


def _was_compressible(fp: dict) -> bool:
    r = fp.get("r", -1.0)
    return isinstance(r, (int, float)) and 0 <= r <= policy.COMPRESSIBLE


_REASONS = (
    ("compress_loss", "{n} file(s) stopped compressing (changed regions look like ciphertext)"),
    ("format_broken", "{n} file(s) lost their format's magic bytes"),
    ("compress_loss_magic_kept", "{n} file(s) kept their header but their body stopped compressing"),
    ("entropy_jump", "{n} file(s) turned from structured to ciphertext-like"),
    ("magic_mismatch", "{n} file(s) named as a format their bytes are not"),
    ("ransom_ext", "{n} file(s) with a known ransomware extension"),
    ("renamed_encrypted", "{n} file(s) renamed with a new extension and encrypted"),
    ("replaced_by_ciphertext", "{n} file(s) replaced by ciphertext-like files"),
    ("ransom_note", "{n} ransom-note-like file name(s)"),
)
