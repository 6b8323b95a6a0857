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
little. A changed canary file is infected outright. Points -> score = 1 - exp(-points / SCALE)."""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from typing import Any, ClassVar

from cermin.engine.observer import BackupObserver, DirectoryDone, FileRead, FileRemoved, FileUnchanged
from cermin.format.records import FILE
from cermin.guard import policy
from cermin.guard import signals as sig
from cermin.util import display_path

KEY = "g"  # Node.extra key of the per-file fingerprint
VERSION = 1

# Extensions a file legitimately gains from a tool (compression, signing, editors, package managers).
_BENIGN_APPENDED = frozenset(
    b"bak old orig tmp temp gpg pgp asc sig age enc part crdownload swp save sav cache new prev backup "
    b"dpkg-old dpkg-new dpkg-dist dpkg-bak rpmsave rpmnew ucf-old ucf-dist lz lz4 z br lzma".split()
) | frozenset(sig.EXPECTED_KIND)


class GuardObserver(BackupObserver):
    fingerprint: ClassVar[bool] = True
    node_key: ClassVar[str] = KEY

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._evidence: list[tuple[float, bytes, str]] = []  # (points, path, signal)
        self._counts: Counter[str] = Counter()
        self._canary: list[bytes] = []
        # per directory: new files (name, ciphertext-like and formatless) and removed files (name -> fingerprint)
        self._new: defaultdict[bytes, list[tuple[bytes, bool]]] = defaultdict(list)
        self._removed: defaultdict[bytes, dict[bytes, dict]] = defaultdict(dict)
        self._notes: defaultdict[bytes, set[bytes]] = defaultdict(set)
        self._prev_bytes = 0
        self._bytes = 0

    # ---- per-file fingerprint (worker threads) ------------------------------------------------------
    def node_fingerprint(self, ev: FileRead) -> dict[str, Any]:
        kind = sig.kind_of(ev.head)
        new_raw, ratio = sig.new_chunk_ratio(ev.chunks)
        self._tls.last = (ev, kind, new_raw, ratio)  # file_read(ev) follows on this thread: computed once
        raw = ev.raw
        if new_raw and new_raw < raw:  # deduplicated chunks: count them at the previous version's ratio
            prev_r = dict(ev.previous_fingerprint).get("r", -1.0)
            if isinstance(prev_r, (int, float)) and prev_r >= 0:
                ratio = (ratio * new_raw + prev_r * (raw - new_raw)) / raw
        elif not new_raw:
            ratio = dict(ev.previous_fingerprint).get("r", -1.0)
        return {"r": round(float(ratio), 3), "e": round(max(ev.head_entropy, 0.0), 2), "k": kind}

    # ---- events -------------------------------------------------------------------------------------
    def file_read(self, ev: FileRead) -> None:
        name = sig.basename(ev.path)
        d = sig.dirname(ev.path)
        last = getattr(self._tls, "last", None)
        if last is not None and last[0] is ev:
            _, kind, new_raw, ratio = last
            self._tls.last = None
        else:
            kind = sig.kind_of(ev.head)
            new_raw, ratio = sig.new_chunk_ratio(ev.chunks)
        share = sig.incompressible_share(ev.chunks) if new_raw else 0.0
        flat_head = sig.ciphertext_head(ev.head_entropy, ev.size)
        cipherlike = not kind and (flat_head or (new_raw >= policy.MIN_COMPARE_BYTES and share >= 0.5))
        found: list[tuple[float, str]] = []
        if ev.new:
            if sig.extension(name) in sig.RANSOM_EXTENSIONS and not kind:
                found.append((policy.KNOWN_EXT_POINTS, "ransom_ext"))
            elif flat_head and sig.magic_mismatch(name, ev.head, ev.size):
                found.append((policy.WEAK, "magic_mismatch"))
            note = sig.ransom_note_name(name)
        else:
            found = self._changed(ev, name, kind, new_raw, ratio, share, flat_head)
            note = False
        with self._lock:
            c = self._counts
            c["files_read"] += 1
            c["files_new" if ev.new else "files_changed"] += 1
            self._bytes += ev.size
            if not ev.new:
                self._prev_bytes += ev.previous_size
                if sig.canary_name(name):
                    self._canary.append(ev.path)
            else:
                self._new[d].append((name, cipherlike))
                if note:
                    self._notes[name].add(d)
            for points, what in found:
                c[what] += 1
                self._evidence.append((points, ev.path, what))

    def _changed(self, ev: FileRead, name, kind, new_raw, ratio, share, flat_head) -> list[tuple[float, str]]:
        fp = dict(ev.previous_fingerprint)
        prev_r = fp.get("r", -1.0)
        if (not isinstance(prev_r, (int, float)) or prev_r < 0) and ev.previous_stored > 0 and ev.previous_size:
            prev_r = ev.previous_stored / ev.previous_size  # a parent made before the guard
        prev_k = fp.get("k")  # None: unknown (no fingerprint)
        prev_e = fp.get("e", -1.0)
        loss = sig.compressibility_loss(float(prev_r), new_raw, ratio, share)
        if prev_k and not kind:
            return [(policy.STRONG, "format_broken")]
        if loss and not kind:
            return [(policy.STRONG, "compress_loss")]
        if loss and kind == prev_k and ratio >= policy.INCOMPRESSIBLE and prev_r <= policy.COMPRESSIBLE - 0.2:
            # header kept, body turned into ciphertext (the attack on header-only tests); also what a
            # database that started storing compressed blobs looks like, hence weak
            return [(policy.WEAK, "compress_loss_magic_kept")]
        if isinstance(prev_e, (int, float)) and 0 <= prev_e <= policy.LOW_ENTROPY and flat_head and not kind:
            return [(policy.WEAK, "entropy_jump")]
        if prev_k is None and flat_head and sig.magic_mismatch(name, ev.head, ev.size):
            return [(policy.WEAK, "magic_mismatch")]
        return []

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
        name = sig.basename(ev.path)
        with self._lock:
            self._counts["files_removed"] += 1
            self._prev_bytes += ev.size
            self._removed[sig.dirname(ev.path)][name] = dict(ev.fingerprint)
            if sig.canary_name(name):
                self._canary.append(ev.path)

    def directory(self, ev: DirectoryDone) -> None:
        pass

    # ---- verdict ------------------------------------------------------------------------------------
    def finish(self, summary) -> dict[str, Any]:
        with self._lock:
            return {"guard": self.verdict()}

    def verdict(self) -> dict[str, Any]:
        c = self._counts
        evidence = list(self._evidence)
        reasons: list[str] = []
        self._renames(evidence, reasons)
        note_dirs = 0
        for name, dirs in sorted(self._notes.items()):
            note_dirs = max(note_dirs, len(dirs))
            if len(dirs) >= policy.NOTE_DIRS:
                reasons.append(f"ransom note {display_path(name)} appeared in {len(dirs)} directories")
                evidence.append((policy.NOTE_POINTS, name, "ransom_note"))
            else:
                evidence.extend((policy.WEAK, d + b"/" + name if d else name, "ransom_note") for d in sorted(dirs))
        prev_files = c["files_changed"] + c["files_unchanged"] + c["files_removed"]
        mass = 0.0
        if prev_files >= policy.MASS_MIN_FILES:
            if c["files_removed"] >= 0.9 * prev_files:
                mass += 3.0
                reasons.append(f"source emptied: {c['files_removed']} of {prev_files} files removed")
            elif c["files_removed"] >= policy.MASS_DELETE_FRACTION * prev_files:
                mass += policy.MASS_POINTS
                reasons.append(f"mass deletion: {c['files_removed']} of {prev_files} files removed")
            if c["files_changed"] >= policy.MASS_REWRITE_FRACTION * prev_files:
                mass += policy.MASS_POINTS
                reasons.append(f"mass rewrite: {c['files_changed']} of {prev_files} files changed")
            if self._prev_bytes and self._bytes < (1 - policy.SHRINK_FRACTION) * self._prev_bytes:
                mass += policy.MASS_POINTS
                reasons.append(f"source shrank from {self._prev_bytes} to {self._bytes} bytes")
        per_signal: Counter[str] = Counter()
        for _, _, what in evidence:
            per_signal[what] += 1
        for what, text in _REASONS:
            if per_signal[what]:
                reasons.append(text.format(n=per_signal[what]))
        points = sum(p for p, _, _ in evidence) + mass
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
        for _, p, _ in sorted(evidence, key=lambda e: -e[0]):
            if len(paths) >= policy.MAX_PATHS:
                break
            if p not in seen:
                seen.add(p)
                paths.append(display_path(p))
        signals: dict[str, float] = {k: v for k, v in sorted(c.items())}
        signals.update({k: v for k, v in sorted(per_signal.items())})
        signals.update(points=round(points, 2), canary=len(self._canary), note_dirs=note_dirs)
        return {
            "version": VERSION,
            "verdict": verdict,
            "score": round(score, 4),
            "reasons": reasons if verdict != "clean" else reasons[:5],
            "paths": paths if verdict != "clean" else [],
            "signals": signals,
        }

    def _renames(self, evidence: list, reasons: list[str]) -> None:
        """Removed a.txt and new a.txt.xyz in the same directory: a rename; with ciphertext, an encryption."""
        by_ext: Counter[bytes] = Counter()
        renamed: defaultdict[bytes, list[bytes]] = defaultdict(list)
        for d, removed in self._removed.items():
            for name, cipherlike in self._new.get(d, ()):
                ext = sig.appended_extension(name, removed)
                path = d + b"/" + name if d else name
                if ext is not None:
                    by_ext[ext] += 1
                    renamed[ext].append(path)
                    if cipherlike:
                        evidence.append((policy.STRONG, path, "renamed_encrypted"))
                elif cipherlike and any(_was_compressible(fp) for fp in removed.values()):
                    evidence.append((policy.WEAK, path, "replaced_by_ciphertext"))
        for ext, n in by_ext.most_common():
            if n >= policy.RENAME_MIN and ext not in _BENIGN_APPENDED and ext not in sig.RANSOM_EXTENSIONS:
                reasons.append(f"{n} files gained the extension .{ext.decode(errors='replace')}")
                evidence.extend((policy.WEAK, p, "mass_rename") for p in renamed[ext])


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
