"""`check`: prove that every snapshot can be restored, and name precisely what cannot.

Structure pass (always): index files readable; every indexed pack present with the size its index
entries imply; every snapshot readable; every tree reachable from a snapshot indexed, readable and
decodable; every data blob a file needs indexed. Data pass (`read_data`): read whole packs, check
their headers against the index and authenticate every blob. Then every problem is attributed to
the snapshots and paths that lose data.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cermin.backend.base import Kind
from cermin.engine.progress import Phases, Reporter
from cermin.engine.reach import walk_trees
from cermin.engine.results import Line, answer, fail
from cermin.errors import EXIT_FATAL, CorruptObject, ForeignObject, ObjectNotFound, UsageError
from cermin.format import index as fmt_index
from cermin.format import pack, records
from cermin.format.names import escape_name, tree_problems, valid_nodes
from cermin.format.records import DIR, FILE, ID_LEN, AuxRecord
from cermin.repo.indexfiles import IndexView, expected_pack_size, pack_blobs, read_index_view, read_pack_header
from cermin.repo.lock import is_stale, read_locks
from cermin.repo.masterindex import MasterIndex
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef, is_future, mark_forgotten
from cermin.util import display_path, plural


@dataclass
class Problem:
    kind: str  # see docs/json.md for the list
    message: str
    pack: str | None = None
    object: str | None = None
    blobs: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    errors: list[Problem] = field(default_factory=list)
    notices: list[Problem] = field(default_factory=list)
    affected: dict[str, list[str]] = field(default_factory=dict)  # snapshot id -> paths that lose data
    snapshots: int = 0
    trees: int = 0
    packs: int = 0
    blobs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    damaged_packs: list[str] = field(default_factory=list)
    damaged_snapshots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FATAL

    def to_json(self) -> list[dict]:
        out: list[dict] = [
            {"message_type": "error", "kind": p.kind, "message": p.message, "pack": p.pack, "object": p.object}
            | {"blobs": p.blobs}
            for p in self.errors
        ]
        out += [
            {"message_type": "notice", "kind": p.kind, "message": p.message, "object": p.object} for p in self.notices
        ]
        out += [{"message_type": "affected", "snapshot": sid, "paths": paths} for sid, paths in self.affected.items()]
        out.append(
            {
                "message_type": "summary",
                "ok": self.ok,
                "errors": len(self.errors),
                "snapshots": self.snapshots,
                "trees": self.trees,
                "packs": self.packs,
                "blobs": self.blobs,
                "packs_read": self.packs_read,
                "bytes_read": self.bytes_read,
                "damaged_packs": self.damaged_packs,
                "damaged_snapshots": self.damaged_snapshots,
            }
        )
        return out

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [answer(f"notice: {p.message}") for p in self.notices]
        for p in self.errors:
            lines.append(answer(f"error: {p.message}"))
            if p.blobs and verbose:
                lines.append(answer("  blobs: " + ", ".join(b[:16] for b in p.blobs)))
        for sid, paths in self.affected.items():
            lines.append(answer(f"snapshot {sid[:8]} loses data in {plural(len(paths), 'path')}:"))
            lines += [answer(f"  {path}") for path in paths[:50]]
            if len(paths) > 50:
                lines.append(answer(f"  ... and {len(paths) - 50} more (--json lists all)"))
        read = f", read {plural(self.packs_read, 'pack')}" if self.packs_read else ""
        counts = ", ".join(
            plural(n, w) for n, w in ((self.snapshots, "snapshot"), (self.trees, "tree"), (self.packs, "pack"))
        )
        verdict = "no errors" if self.ok else f"{len(self.errors)} ERRORS"
        lines.append(answer(f"checked {counts}, {plural(self.blobs, 'blob')}{read}: {verdict}"))
        if not self.ok:
            lines.append(fail(f"check found {plural(len(self.errors), 'problem')}; see `cermin repair --help`"))
        return lines


def parse_subset(spec: str | None) -> Callable[[list[bytes]], list[bytes]] | None:
    """'N%' (random sample) or 'n/m' (packs whose id falls into group n of m, for rotating checks)."""
    if spec is None:
        return None
    try:
        if spec.endswith("%"):
            pct = float(spec[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return lambda ids: random.sample(ids, max(1, round(len(ids) * pct / 100))) if ids else []
        n, m = (int(x) for x in spec.split("/"))
        if not 1 <= n <= m:
            raise ValueError
        return lambda ids: [i for i in ids if int.from_bytes(i[:4], "big") % m == n - 1]
    except ValueError:
        raise UsageError(f"bad --read-data-subset {spec!r}: use N% or n/m (1 <= n <= m)") from None


def _age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f} {unit}"
    return f"{seconds:.0f} s"


class _Unusable(CorruptObject):
    """A tree check does not even try to load (not indexed, or in a pack known to be lost)."""


# Paths named per damaged tree (or tree with bad names) per snapshot root. Trees may repeat: a DAG
# of n trees each naming the next twice has 2^n paths, so past this many only the number is given.
LOOKUP_BATCH = 4096  # file content ids resolved at once (format version 3: their types too)
EXAMPLE_PATHS = 10


class _PathsFrom:
    """The paths from one root tree down to the trees `edges` leads to: how many reach each tree and
    up to `limit` of them (breadth first, so the shortest). edges(tree) -> [(name, subtree)], the
    entries worth following. Each tree is expanded at most `limit` times: the work is bounded by
    limit x edges, never by the number of paths. Paths are kept as (parent, name) links and joined
    only for the trees asked about."""

    def __init__(self, root: bytes, edges: Callable[[bytes], list[tuple[bytes, bytes]]], limit: int = EXAMPLE_PATHS):
        out: dict[bytes, list[tuple[bytes, bytes]]] = {}
        stack = [root]
        while stack:
            t = stack.pop()
            if t not in out:
                out[t] = es = edges(t)
                stack.extend(c for _, c in es if c not in out)
        # how many paths: trees in topological order (trees are named by their content: no cycles)
        indeg = dict.fromkeys(out, 0)
        for es in out.values():
            for _, c in es:
                indeg[c] += 1
        self._count = dict.fromkeys(out, 0)
        self._count[root] = 1
        ready = [t for t, d in indeg.items() if d == 0]
        while ready:
            t = ready.pop()
            for _, c in out[t]:
                self._count[c] += self._count[t]
                indeg[c] -= 1
                if indeg[c] == 0:
                    ready.append(c)
        # example paths, breadth first; None is the root
        self._found: dict[bytes, list] = {root: [None]}
        queue: deque = deque([(root, None)])
        while queue:
            t, link = queue.popleft()
            for name, c in out[t]:
                found = self._found.setdefault(c, [])
                if len(found) < limit:
                    found.append((link, name))
                    queue.append((c, found[-1]))

    def trees(self) -> list[bytes]:
        return list(self._count)

    def count(self, tid: bytes) -> int:
        return self._count.get(tid, 0)

    def examples(self, tid: bytes) -> list[bytes]:
        """Up to `limit` paths to `tid` (b'' is the root)."""
        paths = []
        for link in self._found.get(tid, []):
            parts = []
            while link is not None:
                link, name = link
                parts.append(name)
            paths.append(b"".join(b"/" + n for n in reversed(parts)))
        return paths


def _more_paths(example: bytes, more: int) -> str:
    return f"... and {more} more paths to directories identical to {display_path(example or b'/')} (repeated subtrees)"


def _by_root(snaps: list[SnapshotRef]) -> dict[bytes, list[str]]:
    """Snapshot ids by root tree: snapshots of unchanged data share one walk."""
    out: dict[bytes, list[str]] = {}
    for ref in snaps:
        out.setdefault(ref.snapshot.tree, []).append(ref.id)
    return out


class Checker:
    def __init__(self, repo: Repository, read_data: bool = False, subset: str | None = None, workers: int = 4):
        self.repo = repo
        self.read_data = read_data or subset is not None
        self.select = parse_subset(subset)
        self.workers = workers
        self.report = CheckReport()
        self.bad_blobs: dict[bytes, str] = {}  # blob id -> why its data is lost
        self.bad_trees: dict[bytes, str] = {}
        self.bad_names: dict[bytes, list[tuple[bytes, str]]] = {}  # tree id -> invalid entries (name, why)
        self.view = IndexView()

    def _error(self, kind: str, message: str, **kw) -> None:
        self.report.errors.append(Problem(kind, message, **kw))

    def _notice(self, kind: str, message: str, **kw) -> None:
        self.report.notices.append(Problem(kind, message, **kw))

    def run(self, progress: Reporter | None = None) -> CheckReport:
        say = Phases(progress, "check")
        say("index", "loading index")
        self._check_index()
        say("packs", "checking packs")
        self._check_packs()
        say("trees", "checking snapshots and trees")
        snaps = self._load_snapshots()
        self._check_trees(snaps)
        if self.read_data:
            say("read data", "reading pack data")
            self._read_data()
        say("attribute", "attributing damage")
        self._attribute(snaps)
        self._report_bad_names(snaps)
        self._check_aux()
        self._check_locks()
        self._check_leftovers()
        return self.report

    # ---- index and packs -----------------------------------------------------------------------
    def _check_index(self) -> None:
        self.view = view = read_index_view(self.repo)
        for name, why in view.damaged.items():
            self._error("index_damaged", f"index {name[:12]}: {why}", object=name)
        for name in sorted(view.foreign):
            self._foreign(Kind.INDEX, name)
        self._settle_disputes(view)
        idx = MasterIndex.from_packs(view.packs)
        # The index keeps one location per blob, so what it dropped are the extra copies.
        dups = sum(len(e) // fmt_index.ENTRY.size for e in view.packs.values()) - len(idx)
        if dups:
            self._notice(
                "duplicate_blobs", f"{dups} blobs are stored in more than one pack (prune removes the extra copies)"
            )
        self.repo.index = idx
        self.report.packs = len(view.packs)
        self.report.blobs = len(idx)

    def _settle_disputes(self, view: IndexView) -> None:
        """A pack that index files in force name with different entries: its own (authenticated)
        header says which are true. The others come from a file a key holder planted (to shadow the
        real entries) or that was damaged: named, and left out of everything check does after."""
        wrong: dict[str, list[str]] = {}
        for pid, variants in view.variants.items():
            name = pid.hex()
            try:
                truth = set(read_pack_header(self.repo, name))
            except (CorruptObject, ObjectNotFound):
                continue  # the pack itself is damaged or gone: _check_packs says so
            true = [e for f, e in variants if set(fmt_index.iter_entries(e)) == truth]
            view.packs[pid] = true[0] if true else fmt_index.encode_entries(sorted(truth, key=lambda e: e.offset))
            for f, e in variants:
                if set(fmt_index.iter_entries(e)) != truth:
                    wrong.setdefault(f, []).append(name)
        for f, packs in sorted(wrong.items()):
            self._error(
                "index_disagrees",
                f"index {f[:12]} names {plural(len(packs), 'pack')} ({packs[0][:12]}...) with entries their own "
                "headers do not have (planted by a key holder, or damaged); `cermin repair index` rebuilds "
                "the index from the packs",
                object=f,
                blobs=sorted(packs),
            )

    def _check_packs(self) -> None:
        present = dict(self.repo.backend.list(Kind.DATA))
        for pid, entries in self.view.packs.items():
            name = pid.hex()
            size = present.get(name)
            if size is None:
                self._pack_lost(pid, "pack_missing", f"pack {name[:12]} is missing")
                continue
            want = expected_pack_size(entries)
            if size != want:
                self._pack_lost(pid, "pack_size", f"pack {name[:12]} has {size} bytes, its index says {want}")
        unindexed = sorted(set(present) - {p.hex() for p in self.view.packs})
        if unindexed:
            self._notice(
                "packs_unindexed",
                f"{len(unindexed)} packs are in no index (left by interrupted "
                f"backups or prune; the next backup or `repair index` adopts them, prune removes them)",
                blobs=unindexed,
            )

    def _pack_lost(self, pid: bytes, kind: str, message: str) -> None:
        blobs = [bid for bid, *_ in self.view.entries(pid)]
        for b in blobs:
            self.bad_blobs.setdefault(b, message)
        self.report.damaged_packs.append(pid.hex())
        self._error(kind, message, pack=pid.hex(), blobs=[b.hex() for b in blobs])

    # ---- snapshots and trees -------------------------------------------------------------------
    def _load_snapshots(self) -> list[SnapshotRef]:
        refs = []
        for name, _ in sorted(self.repo.backend.list(Kind.SNAPSHOT)):
            try:
                snap = self.repo.load_snapshot(name)
                refs.append(SnapshotRef(name, snap, future=is_future(snap.time)))
            except ObjectNotFound:
                continue  # forgotten while we listed
            except ForeignObject:
                self._foreign(Kind.SNAPSHOT, name)
            except CorruptObject as e:
                self.report.damaged_snapshots.append(name)
                self._error("snapshot_damaged", f"snapshot {name[:12]}: {e}", object=name)
        forgotten = [r.id for r in mark_forgotten(self.repo, refs) if r.forgotten]
        if forgotten:
            # Forgotten under Object Lock: prune already treats their data as unused, so their
            # trees may be gone from the index; they are deleted once their lock lapses.
            self._notice(
                "snapshots_forgotten",
                f"waiting for their Object Lock to lapse: {plural(len(forgotten), 'forgotten snapshot')}; not checked",
                blobs=forgotten,
            )
            refs = [r for r in refs if not r.forgotten]
        for r in refs:
            if is_future(r.snapshot.time):
                self._notice(
                    "snapshot_future",
                    f"snapshot {r.id[:12]} is dated {r.snapshot.time[:40]!r}, beyond the clock-skew allowance: "
                    "never used as a parent or as `latest`, kept out of forget policies",
                    object=r.id,
                )
        self.report.snapshots = len(refs)
        return refs

    def _foreign(self, kind: Kind, name: str) -> None:
        """Named by its content, failing authentication or decoding: planted without the key. Every
        command ignores it, so it is a notice (under Object Lock nobody could remove it anyway)."""
        self._notice(
            "foreign_object",
            f"{kind.value}/{name[:12]} is not from this repository (fails authentication though named by its "
            "content): planted by someone without the key; ignored",
            object=f"{kind.value}/{name}",
        )

    def _check_trees(self, snaps: list[SnapshotRef]) -> None:
        index = self.repo.index
        seen: set[bytes] = set()
        missing: set[bytes] = set()
        wrong: set[bytes] = set()

        def load(tid: bytes):
            if tid not in index:
                raise _Unusable("tree is not in the index")
            if tid in self.bad_blobs:  # its pack is known lost
                raise _Unusable(self.bad_blobs[tid])
            return self.repo.load_tree(tid)

        def unreadable(tid: bytes, e: Exception) -> None:
            self.bad_trees[tid] = str(e)
            if not isinstance(e, _Unusable):
                self.bad_blobs[tid] = str(e)

        # In format version 3 trees and data are named with different keys: a file's content id
        # found stored as a tree is damage (a v2 reader takes either, see Repository.type_fits).
        strict = not self.repo.type_fits(pack.TREE, pack.DATA)
        batch: list[bytes] = []

        def sort_types(ids: list[bytes]) -> None:
            for b, loc in zip(ids, index.lookup_many(ids), strict=True):
                if loc is None:
                    missing.add(b)
                elif loc.type != pack.DATA:
                    wrong.add(b)

        for tid, nodes, _ in walk_trees(
            self.repo, [r.snapshot.tree for r in snaps], on_unreadable=unreadable, seen=seen, load=load
        ):
            bad_names = tree_problems(nodes)
            if bad_names:
                self.bad_names[tid] = bad_names
            ids = [n.content[i : i + ID_LEN] for n in nodes if n.type == FILE for i in range(0, len(n.content), ID_LEN)]
            if not strict:
                missing.update(b for b in ids if b not in index)
                continue
            batch += ids  # looked up many trees at a time: one vectorised search, not one per id
            if len(batch) >= LOOKUP_BATCH:
                sort_types(batch)
                batch = []
        sort_types(batch)
        self.report.trees = len(seen)
        for found, kind, why, what in (
            (
                missing,
                "blobs_missing",
                "data blob is not in the index",
                "data blobs referenced by snapshots are in no index",
            ),
            (
                wrong,
                "blobs_wrong_type",
                "file content is not stored as data (a tree)",
                "blobs named as file content are not stored as data (trees)",
            ),
        ):
            for b in found:
                self.bad_blobs.setdefault(b, why)
            if found:
                self._error(kind, f"{len(found)} {what}", blobs=sorted(b.hex() for b in found))
        for tid, why in sorted(self.bad_trees.items()):
            self._error("tree_damaged", f"tree {tid.hex()[:16]}: {why}", object=tid.hex())

    # ---- data ----------------------------------------------------------------------------------
    def _read_data(self) -> None:
        lost = set(self.report.damaged_packs)
        ids = sorted(p for p in self.view.packs if p.hex() not in lost)
        if self.select is not None:
            ids = self.select(ids)

        def read_one(pid: bytes):
            name = pid.hex()
            indexed = list(self.view.entries(pid))
            problems = []
            data = self.repo.load_pack(name)  # read once: header and blobs
            try:
                header = read_pack_header(self.repo, name, data=data)
                in_header = set(header)  # (id, type, offset, length, raw length)
                in_index = set(indexed)
                if in_header != in_index:
                    problems.append(f"pack {name[:12]}: header and index disagree")
            except CorruptObject as e:
                problems.append(str(e))
            good, bad = pack_blobs(self.repo, name, data, indexed)
            return pid, problems, bad, sum(e.length for e in indexed)

        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            for pid, problems, bad, nbytes in ex.map(read_one, ids):
                self.report.packs_read += 1
                self.report.bytes_read += nbytes
                name = pid.hex()
                if bad:
                    for b, why in bad.items():
                        self.bad_blobs.setdefault(b, why)
                    self.report.damaged_packs.append(name)
                    self._error(
                        "pack_damaged",
                        f"pack {name[:12]}: {len(bad)} blobs fail authentication",
                        pack=name,
                        blobs=sorted(b.hex() for b in bad),
                    )
                elif problems:
                    self.report.damaged_packs.append(name)
                    self._error("pack_damaged", "; ".join(problems), pack=name)

    # ---- attribution ---------------------------------------------------------------------------
    def _attribute(self, snaps: list[SnapshotRef]) -> None:
        bad = self.bad_blobs
        if not bad and not self.bad_trees:
            return
        has_bad: dict[bytes, bool] = {}

        def file_is_bad(n) -> bool:
            c = n.content
            return any(c[i : i + ID_LEN] in bad for i in range(0, len(c), ID_LEN))

        def tree_has_bad(root: bytes) -> bool:
            """Whether anything below a tree lost data; iterative post-order, memoised per tree."""
            stack = [(root, False)]
            while stack:
                tid, expanded = stack.pop()
                if tid in has_bad:
                    continue
                if tid in self.bad_trees:
                    has_bad[tid] = True
                    continue
                nodes = self.repo.load_tree(tid).nodes
                if not expanded:
                    stack.append((tid, True))
                    stack.extend((n.subtree, False) for n in nodes if n.type == DIR and n.subtree not in has_bad)
                else:
                    has_bad[tid] = any(
                        (n.type == DIR and has_bad[n.subtree]) or (n.type == FILE and file_is_bad(n)) for n in nodes
                    )
            return has_bad[root]

        def edges(tid: bytes) -> list[tuple[bytes, bytes]]:
            if tid in self.bad_trees:
                return []
            return [(n.name, n.subtree) for n in self.repo.load_tree(tid).nodes if n.type == DIR and has_bad[n.subtree]]

        # Bounded however often trees repeat: each damaged tree or file is named by at most
        # EXAMPLE_PATHS paths per snapshot root, then counted.
        for root, sids in _by_root(snaps).items():
            if not tree_has_bad(root):
                continue
            reached = _PathsFrom(root, edges)
            paths: list[str] = []
            for tid in reached.trees():
                examples = reached.examples(tid)
                if tid in self.bad_trees:
                    paths += [display_path(p or b"/") + ("/" if p else "") + " (whole directory)" for p in examples]
                else:
                    lost = [n.name for n in self.repo.load_tree(tid).nodes if n.type == FILE and file_is_bad(n)]
                    if not lost:
                        continue
                    paths += [display_path(p + b"/" + name) for p in examples for name in lost]
                if reached.count(tid) > len(examples):
                    paths.append(_more_paths(examples[0], reached.count(tid) - len(examples)))
            if paths:
                for sid in sids:
                    self.report.affected[sid] = sorted(paths)

    def _report_bad_names(self, snaps: list[SnapshotRef]) -> None:
        """Trees with entries restore must skip (invalid name or type, repeated name): one error per
        entry, naming the snapshots and (at most EXAMPLE_PATHS per snapshot) paths that reach the
        tree, and how many more. Only walks towards such trees, each at most EXAMPLE_PATHS times."""
        if not self.bad_names:
            return
        below: dict[bytes, bool] = {}  # tree id -> a tree with bad names is at or below it

        def subdirs(tid: bytes):
            return [n for n in valid_nodes(self.repo.load_tree(tid).nodes) if n.type == DIR and n.subtree]

        def reaches(root: bytes) -> bool:
            stack = [(root, False)]
            while stack:
                tid, expanded = stack.pop()
                if tid in below:
                    continue
                if tid in self.bad_trees:
                    below[tid] = False
                elif not expanded:
                    stack.append((tid, True))
                    stack.extend((n.subtree, False) for n in subdirs(tid) if n.subtree not in below)
                else:
                    below[tid] = tid in self.bad_names or any(below[n.subtree] for n in subdirs(tid))
            return below[root]

        def edges(tid: bytes) -> list[tuple[bytes, bytes]]:
            return [(n.name, n.subtree) for n in subdirs(tid) if below[n.subtree]]

        # tree id -> (snapshot id, number of paths, example directory paths)
        where: dict[bytes, list[tuple[str, int, list[bytes]]]] = {}
        for root, sids in _by_root(snaps).items():
            if not reaches(root):
                continue
            reached = _PathsFrom(root, edges)
            for tid in reached.trees():
                if tid in self.bad_names:
                    found = (reached.count(tid), [p or b"/" for p in reached.examples(tid)])
                    where.setdefault(tid, []).extend((sid, *found) for sid in sids)
        for tid, entries in sorted(self.bad_names.items()):
            places = where.get(tid, [])
            total = sum(n for _, n, _ in places)
            first = [(sid, p) for sid, _, examples in places[:5] for p in examples][:5]
            shown = ", ".join(f"snapshot {sid[:12]} at {display_path(p)}" for sid, p in first)
            if total > len(first):
                shown += f" and {total - len(first)} more"
            for name, why in entries:
                self._error(
                    "tree_damaged",
                    f"tree {tid.hex()[:16]} ({shown or 'reached by no valid path'}): "
                    f"invalid entry {escape_name(name)}: {why}; restore skips it",
                    object=tid.hex(),
                )
            for sid, n, examples in places:
                lost = self.report.affected.setdefault(sid, [])
                for p in examples:
                    base = display_path(p).rstrip("/")
                    lost.extend(f"{base}/{escape_name(name)} (invalid entry, not restored)" for name, _ in entries)
                if n > len(examples):
                    lost.append(_more_paths(examples[0], n - len(examples)))
                lost.sort()

    def _check_aux(self) -> None:
        for name, _ in sorted(self.repo.backend.list(Kind.AUX)):
            try:
                rec = self.repo.load_record(Kind.AUX, name, lambda raw: records.decode(raw, AuxRecord))
            except ObjectNotFound:
                continue
            except ForeignObject:
                self._foreign(Kind.AUX, name)
            except CorruptObject as e:
                self._error("aux_damaged", f"record {name[:12]}: {e}", object=name)
            else:
                if is_future(rec.time):
                    self._notice(
                        "aux_future",
                        f"record {name[:12]} ({rec.type[:20]}) is dated beyond the clock-skew allowance; "
                        "a tombstone dated so is ignored",
                        object=name,
                    )

    def _check_leftovers(self) -> None:
        """Temporary files of interrupted writes (a kill -9 during a pack write): harmless, never
        read, but they take space; prune removes those not written for 30 minutes."""
        temps = self.repo.backend.leftovers()
        if not temps:
            return
        from cermin.engine.prune import LEFTOVER_AGE
        from cermin.util import fmt_bytes

        now = time.time()
        oldest = max(0.0, now - min(t.mtime for t in temps))
        young = sum(1 for t in temps if now - t.mtime <= LEFTOVER_AGE)
        later = f"; {young} younger than {LEFTOVER_AGE / 60:.0f} minutes may be writes in progress" if young else ""
        self._notice(
            "temp_files",
            f"{len(temps)} temporary files ({fmt_bytes(sum(t.size for t in temps))}) left by interrupted writes, "
            f"the oldest {_age(oldest)} old: prune removes those not written for {LEFTOVER_AGE / 60:.0f} minutes"
            f"{later}",
            blobs=sorted(t.path for t in temps),
        )

    def _check_locks(self) -> None:
        for name, lock in read_locks(self.repo):
            if lock is not None and is_future(lock.time):
                self._notice(
                    "lock_future",
                    f"lock {name[:12]} is dated {lock.time[:40]!r}, beyond the clock-skew allowance: ignored, "
                    "`cermin unlock` removes it",
                    object=name,
                )
            elif lock is None or is_stale(lock):
                self._notice("stale_lock", f"stale lock {name[:12]} (`cermin unlock` removes it)", object=name)


def run_check(
    repo: Repository, read_data: bool = False, subset: str | None = None, progress: Reporter | None = None
) -> CheckReport:
    """Check without taking a lock: the caller holds a shared one (`cermin.ops.commands.check` takes it)."""
    return Checker(repo, read_data, subset).run(progress)
