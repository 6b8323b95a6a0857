"""`cermin guard scan`: re-evaluate existing snapshots by reading their data (docs/guard.md
"Re-scanning snapshots"; the result is a `guard_scan` aux record, FORMAT.md §10a).

For snapshots made before the guard or with `--no-guard`, and after a rule update. A snapshot is
replayed as a backup's events into an unchanged GuardObserver, so its verdict is the one the guard
gives inline:

- its tree is walked against its parent's: the snapshot's `parent` field when that names an older
  live snapshot of the same host and paths, else the newest older one of that group (or the one
  given); a first snapshot has none, and every file of it is new;
- a file whose node equals the parent's (size, mtime, ctime, inode and content) is FileUnchanged; an
  entry of the parent's directory that is gone is FileRemoved; every directory is DirectoryDone;
- every other file is FileRead: each chunk's raw and stored length come from the index — stored 0
  for a chunk that the parent snapshot or an earlier file of this one already holds, deduplicated as
  the backup saw it —, its head bytes and entropy from its first blob(s), which are the only data
  read (grouped by pack: a pack many of them live in is loaded once); the previous version's
  fingerprint from the parent's node, or, where that has none (the parent was made without the
  guard), computed the same way from the previous version's first blob and index entries.

YARA (`yara`: rules compiled by `load_yara`, through the optional yara-x package) matches the whole
content of every file read — of every file with `all_files` —; any match makes the snapshot
infected, naming the rules and paths. Data that cannot be read is an error of the scan, which is
then `incomplete`: its alarms count, a clean result does not (guard/verdict.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cermin import __version__
from cermin.engine.observer import ENTROPY_BYTES, DirectoryDone, FileRead, FileRemoved, FileUnchanged, head_facts
from cermin.engine.progress import Progress, Reporter, Ticker
from cermin.engine.results import Line, answer, error, error_json, note, warning
from cermin.engine.treewalk import bad_entry_message, tree_nodes
from cermin.errors import EXIT_INCOMPLETE, CerminError, CorruptObject, ObjectNotFound, UsageError
from cermin.format import crypto
from cermin.format.records import DIR, FILE, ID_LEN, AuxRecord, Node, SnapshotSummary
from cermin.guard import policy
from cermin.guard.observer import KEY, GuardObserver
from cermin.guard.scanread import BlobSet, YaraRules, blob_ids, load_one, load_yara, read_heads
from cermin.guard.verdict import (
    AUX_GUARD_SCAN,
    INFECTED,
    Evidence,
    judge,
    load_evidence,
    parse_scan,
    write_scan,
)
from cermin.repo.packcache import PackCache
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef, aux_records, group_of, list_snapshots, timestamp
from cermin.util import display_path, fmt_bytes, now_rfc3339, plural

SCAN_VERSION = 1
YARA_MAX_BYTES = 256 * 1024 * 1024  # larger files are not matched (YARA needs the whole file in memory)
MAX_YARA_MATCHES = 1000  # (rule, path) pairs kept in the record
MAX_ERRORS = 1000  # error messages kept per snapshot
READ_BATCH = 2048  # files whose heads are fetched (grouped by pack) and judged together
FP_CACHE_MAX = 500_000  # fingerprints kept for the next snapshot's comparison, across one run


# ---- progress --------------------------------------------------------------------------------
@dataclass
class _Counters:
    snapshot: str = ""
    index: int = 0
    count: int = 0
    phase: str = ""
    files: int = 0
    files_total: int = 0
    bytes: int = 0

    def sample(self, t: float) -> Progress:
        phase = f"snapshot {self.index}/{self.count} {self.snapshot[:8]}: {self.phase}"
        return Progress(
            operation="guard scan",
            phase=phase,
            unit="files",
            done=self.files,
            total=self.files_total,
            bytes_done=self.bytes,
            elapsed=t,
        )


# ---- one snapshot ----------------------------------------------------------------------------
@dataclass
class ScanOptions:
    parent: str | None = None  # compare every scanned snapshot with this one instead of its own parent
    yara: YaraRules | str | None = None  # compiled rules, or a path for load_yara
    all_files: bool = False  # YARA: match every file, not only those read
    record: bool = True  # False: --dry-run / --no-record, the guard_scan record is not written
    workers: int = 4


class _Replay:
    """One snapshot replayed into a GuardObserver (see the module docstring)."""

    def __init__(
        self,
        repo: Repository,
        ref: SnapshotRef,
        parent: SnapshotRef | None,
        opts: ScanOptions,
        rules: YaraRules | None,
        fp_cache: dict[bytes, tuple],
        counters: _Counters,
    ) -> None:
        self.repo, self.ref, self.parent, self.opts, self.rules = repo, ref, parent, opts, rules
        self.fp_cache = fp_cache  # content digest -> fingerprint pairs, across the snapshots of one run
        self.c = counters
        self.obs = GuardObserver()
        self._fp_obs = GuardObserver()  # computes fingerprints of previous versions; its verdict is unused
        self.known = BlobSet()  # blobs the parent snapshot holds: deduplicated when read again
        self.reads: list[tuple[bytes, Node, Node | None]] = []  # (path, node, previous node) in tree order
        self.unchanged: list[tuple[bytes, Node]] = []  # kept only for YARA with all_files
        self.removed_trees: list[bytes] = []
        # (files read before it, removals, DirectoryDone) per directory, in the order a backup completes them
        self.timeline: list[tuple[int, list[FileRemoved], DirectoryDone]] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.matches: list[tuple[str, str]] = []  # (rule, display path)
        self.yara_files = self.yara_skipped = 0
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._seen: set[bytes] = set()

    def _error(self, path: bytes | None, msg: str) -> None:
        with self._lock:
            self.error_count += 1
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(msg if path is None else f"{display_path(path or b'/')}: {msg}")

    def _bytes(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n
            self.c.bytes += n

    # ---- walk ----------------------------------------------------------------------------------
    def _nodes(self, tree_id: bytes, path: bytes, own: bool) -> list[Node] | None:
        if not tree_id:
            return []

        def bad(dir_path, n, why):
            if own:
                self._error(None, bad_entry_message(dir_path, n, why) + " (not scanned)")

        try:
            return tree_nodes(self.repo, tree_id, path, bad)
        except CerminError as e:
            if own:
                self._error(path, f"tree unreadable, nothing below it scanned: {e}")
            return None  # a parent's tree that cannot be read: its files count as new, as in a backup

    def walk(self) -> None:
        self.c.phase = "trees"
        parent_tree = self.parent.snapshot.tree if self.parent is not None else b""
        stack: list[tuple] = [("dir", b"", self.ref.snapshot.tree, parent_tree)]
        while stack:
            item = stack.pop()
            if item[0] == "done":  # after every entry below it: its removals and DirectoryDone, in order
                self.timeline.append((len(self.reads), item[1], item[2]))
                continue
            _, path, tree_id, prev_tree = item
            nodes = self._nodes(tree_id, path, True)
            if nodes is None:
                continue
            prev = {n.name: n for n in (self._nodes(prev_tree, path, False) or [])}
            files = dirs = 0
            subdirs = []
            for n in nodes:
                p = path + b"/" + n.name
                o = prev.get(n.name)
                if o is not None and o.type != n.type:  # the type changed: what it held is known data
                    if o.type == FILE:
                        self.known.add(o.content)
                    elif o.type == DIR and o.subtree:
                        self.removed_trees.append(o.subtree)
                if n.type == FILE:
                    files += 1
                    self.c.files += 1
                    self._file(p, n, o)
                elif n.type == DIR:
                    dirs += 1
                    subdirs.append(("dir", p, n.subtree, o.subtree if o is not None and o.type == DIR else b""))
            present = {n.name for n in nodes}
            removed: list[FileRemoved] = []
            for name, o in prev.items():
                if name in present:
                    continue
                if o.type == FILE:
                    self.known.add(o.content)
                    removed.append(FileRemoved(path + b"/" + name, FILE, o.size, _fingerprint(o)))
                else:
                    if o.type == DIR and o.subtree:
                        self.removed_trees.append(o.subtree)
                    removed.append(FileRemoved(path + b"/" + name, o.type, 0, ()))
            done = DirectoryDone(path or b"/", files, dirs, len(nodes) - files - dirs, len(removed))
            stack.append(("done", removed, done))
            stack.extend(reversed(subdirs))
        self._known_below_removed()

    def _file(self, p: bytes, n: Node, o: Node | None) -> None:
        if (
            o is not None
            and o.type == FILE
            and (o.size, o.mtime_ns, o.ctime_ns, o.inode, o.content)
            == (n.size, n.mtime_ns, n.ctime_ns, n.inode, n.content)
        ):
            self.known.add(o.content)
            self.obs.file_unchanged(FileUnchanged(p, n.size, n.mtime_ns))
            if self.rules is not None and self.opts.all_files:
                self.unchanged.append((p, n))
            return
        if o is not None and o.type == FILE:
            self.known.add(o.content)
        self.reads.append((p, n, o))

    def _known_below_removed(self) -> None:
        """Files of removed (or moved) directories of the parent are known blobs: a file moved
        elsewhere is deduplicated, as the backup saw it."""
        stack = list(self.removed_trees)
        seen: set[bytes] = set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in self._nodes(t, b"", False) or []:
                if n.type == FILE:
                    self.known.add(n.content)
                elif n.type == DIR and n.subtree:
                    stack.append(n.subtree)

    # ---- data ----------------------------------------------------------------------------------
    def _lead(self, node: Node) -> list[bytes] | None:
        """The first blobs of a file, up to ENTROPY_BYTES of its content; None when one is not indexed."""
        out: list[bytes] = []
        total = 0
        for bid in blob_ids(node):
            loc = self.repo.index.lookup(bid)
            if loc is None:
                return None
            out.append(bid)
            total += loc.raw_length
            if total >= ENTROPY_BYTES:
                break
        return out

    def _yara_pass(self) -> dict[int, tuple[bytes, float]]:
        """Match every file read (and the unchanged ones with all_files) against the rules; returns
        the head facts of the files read, by their index in self.reads."""
        import yara_x

        rules = self.rules
        assert rules is not None
        cache = PackCache(self.repo)
        self.c.phase = "YARA"
        facts: dict[int, tuple[bytes, float]] = {}
        todo = [(i, p, n) for i, (p, n, _) in enumerate(self.reads)]
        todo += [(-1, p, n) for p, n in self.unchanged]
        self.c.files, self.c.files_total = 0, len(todo)

        def one(item) -> None:
            i, p, n = item
            try:
                if n.size > YARA_MAX_BYTES:
                    with self._lock:
                        self.yara_skipped += 1
                    return
                buf = bytearray()
                for bid in blob_ids(n):
                    blob = load_one(self.repo, bid, cache)
                    buf += blob
                    self._bytes(len(blob))
                data = bytes(buf)
                if i >= 0:
                    facts[i] = data[:ENTROPY_BYTES]  # judged with the chunk lengths, as the backup does
                hits = rules.match(data)
                with self._lock:
                    self.yara_files += 1
                    for r in hits:
                        self.matches.append((r, display_path(p)))
            except (CorruptObject, ObjectNotFound) as e:
                self._error(p, f"data unreadable: {e}")
            except (yara_x.TimeoutError, yara_x.ScanError) as e:  # the file's error, not the run's
                self._error(p, f"YARA: {type(e).__name__}: {e}")
            finally:
                self.c.files += 1

        with ThreadPoolExecutor(max_workers=max(1, self.opts.workers), thread_name_prefix="cermin-yara") as ex:
            for _ in ex.map(one, todo):
                pass
        self.matches.sort(key=lambda m: (m[1], m[0]))
        return facts

    def run(self) -> dict:
        self.walk()
        self.known.freeze()
        facts = self._yara_pass() if self.rules is not None else {}
        self.c.phase = "reading"
        self.c.files, self.c.files_total = 0, len(self.reads)
        timeline = iter(self.timeline)
        nxt = next(timeline, None)
        for start in range(0, len(self.reads), READ_BATCH):  # bounded memory: heads of one batch at a time
            batch = range(start, min(start + READ_BATCH, len(self.reads)))
            leads, prev_leads, heads, bad = self._heads(batch, facts)
            for i in batch:
                # each directory's removals and DirectoryDone after its entries' events, as a backup
                # sends them (FileUnchanged went out during the walk: the observer only counts them)
                while nxt is not None and nxt[0] <= i:
                    self._directory(nxt)
                    nxt = next(timeline, None)
                self._read(i, facts, leads, prev_leads, heads, bad)
        while nxt is not None:
            self._directory(nxt)
            nxt = next(timeline, None)
        return self._data()

    def _heads(self, batch, facts):
        """The heads a batch of files read needs: theirs where YARA did not read them, and their previous
        versions' where those have no fingerprint (a parent made without the guard) not yet computed."""
        want: list[bytes] = []
        leads: dict[int, list[bytes] | None] = {}
        prev_leads: dict[int, list[bytes] | None] = {}
        for i in batch:
            _, n, o = self.reads[i]
            if i not in facts and n.size:
                leads[i] = ld = self._lead(n)
                want += ld or []
            if o is not None and o.type == FILE and not _fingerprint(o) and _digest(o) not in self.fp_cache:
                prev_leads[i] = ld = self._lead(o) if o.size else []
                want += ld or []
        heads, bad = read_heads(self.repo, want, self.opts.workers, self._bytes) if want else ({}, {})
        return leads, prev_leads, heads, bad

    def _directory(self, item) -> None:
        _, removed, done = item
        for ev in removed:
            self.obs.file_removed(ev)
        self.obs.directory(done)

    def _read(self, i: int, facts, leads, prev_leads, heads, bad) -> None:
        p, n, o = self.reads[i]
        self.c.files = i + 1
        if len(n.content) % ID_LEN:
            self._error(p, "content is not a list of blob ids (not scanned)")
            return
        seen = self._seen  # blobs of files already read in this snapshot: deduplicated
        lookup = self.repo.index.lookup
        chunks = []
        for bid, k in zip(blob_ids(n), self.known.mask(n.content), strict=True):
            loc = lookup(bid)
            if loc is None:
                self._error(p, "a data blob is not in the index (missing data; `cermin check` names it): not scanned")
                return
            chunks.append((loc.raw_length, 0 if (k or bid in seen) else loc.length - crypto.TAG_LEN))
            seen.add(bid)
        first = chunks[0] if chunks else None
        if i in facts:
            head, entropy = head_facts(facts[i], first)
        elif not n.size:
            head, entropy = head_facts(b"")
        else:
            got = _head(leads.get(i), heads, bad)
            if isinstance(got, str):
                self._error(p, f"data unreadable ({got}): not scanned")
                return
            head, entropy = head_facts(got, first)
        ev = self._event(p, n, o, tuple(chunks), head, entropy, prev_leads.get(i), heads, bad)
        fp = self.obs.node_fingerprint(ev)  # the same calls, in the same order, as the backup makes
        self.obs.file_read(ev)
        if fp is not None and len(self.fp_cache) < FP_CACHE_MAX:
            self.fp_cache[_digest(n)] = _pairs(fp)

    def _event(self, p, n: Node, o: Node | None, chunks, head, entropy, prev_lead, heads, bad) -> FileRead:
        if o is None:
            return FileRead(p, n.size, n.mtime_ns, chunks, head, entropy)
        return FileRead(
            p,
            n.size,
            n.mtime_ns,
            chunks,
            head,
            entropy,
            o.size,
            o.mtime_ns,
            self._stored(o),
            False,
            self._prev_fingerprint(p, o, prev_lead, heads, bad),
        )

    def _stored(self, o: Node) -> int:
        """Compressed size of the previous version (engine/backup/filesaver.py `_stored_size`)."""
        if o.type != FILE:
            return -1
        total = 0
        for bid in blob_ids(o):
            loc = self.repo.index.lookup(bid)
            if loc is None:
                return -1
            total += loc.length - crypto.TAG_LEN
        return total

    def _prev_fingerprint(self, p: bytes, o: Node, lead, heads, bad) -> tuple:
        if o.type != FILE:
            return ()
        fp = _fingerprint(o)
        if fp:
            return fp
        cached = self.fp_cache.get(_digest(o))
        if cached is not None:
            return cached
        # the parent was made without the guard: the fingerprint its backup would have stored
        chunks = []
        for bid in blob_ids(o):
            loc = self.repo.index.lookup(bid)
            if loc is None:
                return ()
            chunks.append((loc.raw_length, loc.length - crypto.TAG_LEN))
        if not o.size:
            head, entropy = head_facts(b"")
        else:
            got = _head(lead, heads, bad)
            if isinstance(got, str):
                return ()  # as for a parent made before the guard: compared by its stored size alone
            head, entropy = head_facts(got, chunks[0] if chunks else None)
        ev = FileRead(p, o.size, o.mtime_ns, tuple(chunks), head, entropy)
        pairs = _pairs(self._fp_obs.node_fingerprint(ev))
        if len(self.fp_cache) < FP_CACHE_MAX:
            self.fp_cache[_digest(o)] = pairs
        return pairs

    # ---- the result ----------------------------------------------------------------------------
    def _data(self) -> dict:
        v = self.obs.finish(SnapshotSummary())["guard"]
        if self.matches:
            _apply_yara(v, self.matches)
        data = dict(v)
        data["scan_version"] = SCAN_VERSION
        data["parent"] = self.parent.id if self.parent is not None else ""
        data["incomplete"] = bool(self.error_count)
        data["errors"] = self.error_count
        data["files_read"] = len(self.reads)
        data["bytes_read"] = self.bytes_read
        data["program_version"] = f"cermin {__version__}"
        if self.rules is not None:
            data["yara"] = {
                "rules": self.rules.digest,
                "rule_files": self.rules.files[:100],
                "all_files": self.opts.all_files,
                "files": self.yara_files,
                "skipped_large": self.yara_skipped,
                "matches": [{"rule": r, "path": p} for r, p in self.matches[:MAX_YARA_MATCHES]],
            }
        return data


def _fingerprint(node: Node) -> tuple:
    """A node's guard fingerprint as sorted pairs (engine/backup/trees.py node_fingerprint)."""
    fp = node.extra.get(KEY) if isinstance(node.extra, dict) else None
    return _pairs(fp) if isinstance(fp, dict) else ()


def _pairs(fp: dict | None) -> tuple:
    if not isinstance(fp, dict):
        return ()
    return tuple(sorted((k, v) for k, v in fp.items() if isinstance(k, str) and isinstance(v, (int, float, str))))


def _digest(node: Node) -> bytes:
    return hashlib.blake2b(node.content, digest_size=16).digest()


def _head(lead: list[bytes] | None, heads: dict[bytes, bytes], bad: dict[bytes, str]) -> bytes | str:
    """A file's first ENTROPY_BYTES bytes from its lead blobs' heads, or why they cannot be had."""
    if lead is None:
        return "a data blob is not in the index"
    parts = []
    for bid in lead:
        if bid not in heads:
            return bad.get(bid, f"blob {bid.hex()[:16]} unreadable")
        parts.append(heads[bid])
    return b"".join(parts)[:ENTROPY_BYTES]


def _apply_yara(v: dict, matches: list[tuple[str, str]]) -> None:
    """A YARA match makes the verdict infected; the rules and paths lead its reasons and paths."""
    by_rule = Counter(r for r, _ in matches)
    reasons = [
        f"YARA rule {rule} matched {plural(n, 'file')}" + (f" ({_first(matches, rule)})" if n else "")
        for rule, n in sorted(by_rule.items(), key=lambda x: (-x[1], x[0]))
    ]
    ypaths: list[str] = []
    for _, p in matches:
        if p not in ypaths:
            ypaths.append(p)
        if len(ypaths) >= policy.MAX_PATHS:
            break
    v["verdict"] = INFECTED
    v["score"] = 1.0
    v["reasons"] = reasons + list(v.get("reasons", []))
    v["paths"] = (ypaths + [p for p in v.get("paths", []) if p not in ypaths])[: policy.MAX_PATHS]
    signals = dict(v.get("signals", {}))
    signals.update(yara_matches=len(matches), yara_files=len({p for _, p in matches}))
    v["signals"] = signals


def _first(matches, rule: str) -> str:
    return next(p for r, p in matches if r == rule)


# ---- the command -----------------------------------------------------------------------------
@dataclass
class SnapshotScan:
    """The scan of one snapshot: what it found, the record written, the verdict before and after."""

    snapshot_id: str
    time: str
    hostname: str
    parent: str | None
    data: dict  # the guard_scan record's data
    record: str | None  # aux record name; None: not recorded (dry run)
    before: str  # effective verdict before the scan
    after: str  # effective verdict with it
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    duration: float = 0.0

    def to_json(self) -> dict:
        d = self.data
        out = {"message_type": "guard_scan", "snapshot_id": self.snapshot_id, "time": self.time}
        out |= {"parent": self.parent, "record": self.record, "recorded": self.record is not None}
        out |= {k: d.get(k) for k in ("verdict", "score", "reasons", "paths", "signals", "incomplete")}
        out |= {"files_read": d.get("files_read"), "bytes_read": d.get("bytes_read"), "yara": d.get("yara")}
        return out | {"before": self.before, "effective": self.after, "errors": self.error_count}

    def to_text(self, verbose: int = 0) -> list[Line]:
        d = self.data
        parent = f"compared with {self.parent[:8]}" if self.parent else "no parent: every file is new"
        lines = [
            answer(
                f"snapshot {self.snapshot_id[:8]} ({self.time[:19].replace('T', ' ')}, host {self.hostname}): "
                f"{d['verdict']} (score {d['score']:g}); {parent}"
            )
        ]
        lines.append(
            note(
                f"  read {plural(d['files_read'], 'file')} ({fmt_bytes(d['bytes_read'])} of data) "
                f"in {self.duration:.1f}s"
            )
        )
        y = d.get("yara")
        if y is not None:
            skipped = f", {y['skipped_large']} larger than {fmt_bytes(YARA_MAX_BYTES)} not matched"
            lines.append(
                note(
                    f"  YARA: {plural(y['files'], 'file')} checked against {', '.join(y['rule_files'])}"
                    f"{skipped if y['skipped_large'] else ''}"
                )
            )
        if d["verdict"] != "clean" or verbose:
            lines += [answer(f"  - {r}") for r in d["reasons"]]
        paths = d["paths"]
        if paths:
            shown = paths if verbose else paths[:10]
            more = "" if len(shown) == len(paths) else ", -v shows all"
            lines.append(answer(f"  affected paths ({len(paths)}{more}):"))
            lines += [answer(f"    {p}") for p in shown]
        dry = self.record is None
        if self.before == self.after:
            lines.append(answer(f"  effective verdict {'would stay' if dry else 'stays'} {self.after}"))
        else:
            lines.append(answer(f"  effective verdict{' would be' if dry else ''}: {self.before} -> {self.after}"))
        shown_errors = self.errors if verbose else self.errors[:20]
        lines += [error(e) for e in shown_errors]
        if self.error_count > len(shown_errors):
            lines.append(error(f"... and {self.error_count - len(shown_errors)} more unreadable entries"))
        if self.error_count:
            lines.append(
                warning(
                    f"scan of {self.snapshot_id[:8]} incomplete: {plural(self.error_count, 'entry', 'entries')} "
                    "could not be read (a clean result does not count); `cermin check --read-data` names the damage"
                )
            )
        if self.record is None:
            lines.append(note("  not recorded (dry run)"))
        else:
            lines.append(note(f"  recorded as guard_scan {self.record[:8]}"))
        return lines


@dataclass
class ScanResult:
    scans: list[SnapshotScan]
    dry_run: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if any(s.error_count for s in self.scans) else 0

    def to_json(self) -> list[dict]:
        out: list[dict] = []
        for s in self.scans:
            out += [error_json(e) for e in s.errors]
            out.append(s.to_json())
        return out

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines: list[Line] = []
        for s in self.scans:
            lines += s.to_text(verbose)
        flagged = [s for s in self.scans if s.after in ("suspicious", "infected")]
        if flagged:
            lines.append(
                warning(
                    f"guard: {plural(len(flagged), 'snapshot')} suspicious or infected after the scan; "
                    "`cermin guard report ID` explains each"
                )
            )
        return lines


def find_parent(ref: SnapshotRef, refs: list[SnapshotRef]) -> SnapshotRef | None:
    """The snapshot a scan compares `ref` with: the one its `parent` field names when that is an older
    live snapshot of the same host and paths, else the newest older one of that group."""
    t = timestamp(ref.snapshot.time)
    if t is None:
        return None
    g = group_of(ref.snapshot)
    older = []
    for r in refs:
        rt = timestamp(r.snapshot.time)
        if (
            r.id != ref.id
            and not r.future
            and rt is not None
            and group_of(r.snapshot) == g
            and (rt, r.id) < (t, ref.id)
        ):
            older.append((rt, r.id, r))
    older.sort(key=lambda x: (x[0], x[1]))
    named = ref.snapshot.parent.lower() if isinstance(ref.snapshot.parent, str) else ""
    for _, rid, r in older:
        if rid == named:
            return r
    return older[-1][2] if older else None


def run_scan(
    repo: Repository, refs: list[SnapshotRef], opts: ScanOptions, progress: Reporter | None = None
) -> ScanResult:
    """Scan `refs` (oldest first) and, unless opts.record is False, write a guard_scan record for each.
    Takes no lock: the caller holds a shared one and has loaded the index (ops.commands.guard_scan)."""
    rules = load_yara(opts.yara) if isinstance(opts.yara, str) else opts.yara
    if opts.all_files and rules is None:
        raise UsageError("--all-files matches every file against YARA rules: give --yara RULES")
    refs = sorted({r.id: r for r in refs}.values(), key=lambda r: (timestamp(r.snapshot.time) or 0.0, r.id))
    live = list_snapshots(repo)
    fixed_parent = None
    if opts.parent:
        from cermin.guard.lastclean import resolve_snapshot

        fixed_parent = resolve_snapshot(repo, opts.parent)
    ev: Evidence = load_evidence(aux_records(repo))
    fp_cache: dict[bytes, tuple] = {}
    c = _Counters(count=len(refs))
    out: list[SnapshotScan] = []
    with Ticker(progress, c.sample):
        for i, ref in enumerate(refs, 1):
            t0 = time.monotonic()
            c.index, c.snapshot, c.files, c.files_total = i, ref.id, 0, 0
            parent = fixed_parent if fixed_parent is not None else find_parent(ref, live)
            if parent is not None and parent.id == ref.id:
                parent = None
            replay = _Replay(repo, ref, parent, opts, rules, fp_cache, c)
            data = replay.run()
            before = judge(ref, ev).verdict
            stamp = now_rfc3339()
            name = write_scan(repo, ref.id, data, stamp) if opts.record else None
            scan = parse_scan(name or "(not recorded)", AuxRecord(AUX_GUARD_SCAN, stamp, ref.id, data))
            if scan is not None:
                ev.scans.setdefault(ref.id, []).append(scan)
            after = judge(ref, ev).verdict
            out.append(
                SnapshotScan(
                    ref.id,
                    ref.snapshot.time,
                    ref.snapshot.hostname,
                    parent.id if parent is not None else None,
                    data,
                    name,
                    before,
                    after,
                    replay.errors,
                    replay.error_count,
                    time.monotonic() - t0,
                )
            )
    return ScanResult(out, not opts.record)
