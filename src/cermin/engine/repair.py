"""Repairs: rebuild the index from packs, salvage readable blobs from damaged packs, and rewrite
snapshots without the files whose data is gone. Every repair writes new objects before it removes
old ones, so a crash part-way leaves a repository at least as good as before.

Typical order after `check` reports damage: `repair packs` -> `repair index` -> `repair snapshots`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cermin.backend.base import Kind
from cermin.engine.progress import Phases, Reporter
from cermin.engine.repack import Repacker, rewrite_saver
from cermin.engine.results import Line, answer, note, warning, warning_json
from cermin.errors import CorruptObject, ForeignObject, ObjectNotFound, UsageError
from cermin.format import index as fmt_index
from cermin.format import pack, records
from cermin.format.records import DIR, FILE, ID_LEN, Node, Snapshot, Tree
from cermin.repo.indexfiles import expected_pack_size, read_index_view, read_pack_header, replace_index
from cermin.repo.masterindex import MasterIndex
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.util import display_path, now_rfc3339, plural


def _rebuild_memory_index(repo: Repository, packs: dict[bytes, bytes]) -> None:
    repo.index = MasterIndex.from_packs(packs)


_PLANTED = (
    "failing authentication though named by their content: {n} ({shown}), planted without "
    "the repository key; ignored and left in place (`cermin check` lists them)"
)


def _planted(names: list[str]) -> list[str]:
    if not names:
        return []
    shown = ", ".join(n[:20] for n in names[:5]) + (", ..." if len(names) > 5 else "")
    return [_PLANTED.format(n=plural(len(names), "object"), shown=shown)]


# ---- repair index ---------------------------------------------------------------------------
@dataclass
class RepairIndexResult:
    packs_indexed: int = 0
    packs_adopted: list[str] = field(default_factory=list)  # were in no index
    packs_dropped: list[str] = field(default_factory=list)  # unreadable, left out of the index
    index_files_written: list[str] = field(default_factory=list)
    index_files_removed: int = 0
    foreign: list[str] = field(default_factory=list)  # planted index files: ignored, left in place
    exit_code = 0

    def to_json(self) -> list[dict]:
        summary = {
            "message_type": "summary",
            "packs_indexed": self.packs_indexed,
            "packs_adopted": self.packs_adopted,
            "packs_dropped": self.packs_dropped,
            "index_files_written": len(self.index_files_written),
            "index_files_removed": self.index_files_removed,
        }
        return [*map(warning_json, _planted([f"index/{n}" for n in self.foreign])), summary]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, _planted([f"index/{n}" for n in self.foreign]))]
        lines.append(
            answer(
                f"indexed {plural(self.packs_indexed, 'pack')} ({len(self.packs_adopted)} adopted, "
                f"{len(self.packs_dropped)} unreadable left out); "
                f"replaced {plural(self.index_files_removed, 'index file')}"
            )
        )
        return lines


def repair_index(repo: Repository, workers: int = 4) -> RepairIndexResult:
    """Index every pack whose own header is readable; replace all index files."""
    view = read_index_view(repo)
    present = dict(repo.backend.list(Kind.DATA))
    res = RepairIndexResult()

    def header(name: str):
        try:
            return name, read_pack_header(repo, name, present[name]), None
        except CorruptObject as e:  # only proven damage; an I/O error aborts the repair
            return name, None, str(e)

    packs: dict[bytes, bytes] = {}
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for name, entries, _err in ex.map(header, sorted(present)):
            pid = bytes.fromhex(name)
            if entries is not None:
                packs[pid] = fmt_index.pack_entries(entries)
                if pid not in view.packs:
                    res.packs_adopted.append(name)
            elif pid in view.packs and expected_pack_size(view.packs[pid]) == present[name]:
                packs[pid] = view.packs[pid]  # header damaged, but the old index still describes it
            else:
                res.packs_dropped.append(name)
    old = view.files + view.superseded + list(view.damaged)
    res.index_files_written = replace_index(repo, packs, old)
    res.index_files_removed = len([o for o in old if o not in res.index_files_written])
    res.packs_indexed = len(packs)
    res.foreign = sorted(view.foreign)  # they index nothing cermin wrote; check names them
    _rebuild_memory_index(repo, packs)
    return res


# ---- repair packs ---------------------------------------------------------------------------
@dataclass
class RepairPacksResult:
    packs_checked: int = 0
    packs_salvaged: list[str] = field(default_factory=list)  # damaged packs replaced
    blobs_salvaged: int = 0
    blobs_lost: list[str] = field(default_factory=list)
    packs_written: int = 0
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [
            {
                "message_type": "summary",
                "packs_checked": self.packs_checked,
                "packs_salvaged": self.packs_salvaged,
                "blobs_salvaged": self.blobs_salvaged,
                "blobs_lost": self.blobs_lost,
                "packs_written": self.packs_written,
            }
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [
            answer(
                f"checked {plural(self.packs_checked, 'pack')}: replaced "
                f"{plural(len(self.packs_salvaged), 'damaged pack')}, salvaged {plural(self.blobs_salvaged, 'blob')}, "
                f"lost {len(self.blobs_lost)}"
            )
        ]
        if self.blobs_lost:
            lines.append(note("run `cermin repair snapshots` to rewrite the snapshots that used the lost blobs"))
        return lines


def repair_packs(
    repo: Repository, pack_ids: list[str] | None = None, workers: int = 2, progress: Reporter | None = None
) -> RepairPacksResult:
    """Read packs (all, or the given ones); copy every readable blob of a damaged pack into new packs,
    index them, then delete the damaged pack. Missing packs are dropped from the index."""
    view = read_index_view(repo)
    present = dict(repo.backend.list(Kind.DATA))
    targets = []
    for p in pack_ids or []:
        try:
            pid = bytes.fromhex(p)
        except ValueError:
            raise UsageError(f"bad pack id {p!r}") from None
        if len(pid) != 32 or pid not in view.packs:
            raise UsageError(f"pack {p[:12]} is in no index: run `cermin repair index` first (it adopts such packs)")
        targets.append(pid)
    targets = targets or sorted(view.packs)
    say = Phases(progress, "repair packs")
    res = RepairPacksResult()
    damaged: list[bytes] = []
    saver = rewrite_saver(repo)
    repacker = Repacker(repo, saver)
    try:
        for pid in targets:
            name = pid.hex()
            res.packs_checked += 1
            say("read", done=res.packs_checked, total=len(targets), unit="packs")
            entries = list(view.entries(pid))
            if name not in present:
                damaged.append(pid)
                res.blobs_lost += [e.blob_id.hex() for e in entries]
                continue
            blobs = repacker.read(name, entries)
            header_ok = True
            try:
                read_pack_header(repo, name, present[name], data=blobs.data)  # already read whole
            except CorruptObject:
                header_ok = False
            if not blobs.lost and header_ok and present[name] == expected_pack_size(view.packs.get(pid, b"")):
                continue
            say("salvage", f"salvaging pack {name[:12]}: {len(blobs.good)} readable, {len(blobs.lost)} damaged blobs")
            damaged.append(pid)
            res.packs_salvaged.append(name)
            res.blobs_salvaged += repacker.copy(blobs)
            res.blobs_lost += [e.blob_id.hex() for e in entries if e.blob_id not in blobs.good]
        saver.flush()
    finally:
        saver.close()
    res.packs_written = saver.packs_written
    if not damaged:
        return res
    packs = {pid: e for pid, e in view.packs.items() if pid not in damaged}
    packs.update(saver.new_packs)
    replace_index(repo, packs, view.files + view.superseded + list(view.damaged))  # new data indexed first
    for pid in damaged:
        try:
            repo.backend.remove(Kind.DATA, pid.hex())
        except ObjectNotFound:
            pass
    _rebuild_memory_index(repo, packs)
    return res


# ---- repair snapshots -----------------------------------------------------------------------
@dataclass
class RepairedSnapshot:
    original: str
    new: str | None  # None: nothing was recoverable, the snapshot was removed
    removed_paths: list[str]


@dataclass
class RepairSnapshotsResult:
    repaired: list[RepairedSnapshot] = field(default_factory=list)
    unreadable_removed: list[str] = field(default_factory=list)
    originals_removed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # planted snapshot files: ignored, left in place
    forget: bool = False  # the originals were asked to be removed
    exit_code = 0

    def to_json(self) -> list[dict]:
        out = [*map(warning_json, _planted([f"snapshots/{n}" for n in self.foreign]))]
        out += [
            {"message_type": "repaired", "original": s.original, "new": s.new, "removed_paths": s.removed_paths}
            for s in self.repaired
        ]
        out.append(
            {
                "message_type": "summary",
                "repaired": len(self.repaired),
                "unreadable_removed": self.unreadable_removed,
                "originals_removed": self.originals_removed,
            }
        )
        return out

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, _planted([f"snapshots/{n}" for n in self.foreign]))]
        for s in self.repaired:
            new = f"-> {s.new[:8]}" if s.new else "nothing recoverable, removed"
            lines.append(answer(f"snapshot {s.original[:8]} {new}: {plural(len(s.removed_paths), 'path')} left out"))
            lines += [answer(f"  {p}") for p in s.removed_paths[:20]]
        lines += [answer(f"removed unreadable snapshot file {n[:12]}") for n in self.unreadable_removed]
        kept = "" if self.forget else "; originals kept (--forget removes them)"
        lines.append(note(f"{plural(len(self.repaired), 'snapshot')} repaired{kept}"))
        return lines


class _TreeFixer:
    """Rewrites trees without files whose blobs are missing; damaged subtrees become empty dirs."""

    def __init__(self, repo: Repository, saver: BlobSaver) -> None:
        self.repo = repo
        self.saver = saver
        self.memo: dict[bytes, tuple[bytes | None, list[bytes]]] = {}

    def _store(self, nodes: list[Node]) -> bytes:
        data = records.encode(Tree(nodes=nodes))
        tid = self.repo.tree_id(data)
        self.saver.save(pack.TREE, tid, data)
        return tid

    def _lost(self, content: bytes) -> bool:
        """Whether a file's data is gone: an id in no index or, in format version 3 (trees and data
        named with different keys), one indexed as a tree, which restore refuses as `check` does."""
        ids = [content[i : i + ID_LEN] for i in range(0, len(content), ID_LEN)]
        index = self.repo.index
        if self.repo.type_fits(pack.TREE, pack.DATA):
            return any(b not in index for b in ids)
        return any(loc is None or loc.type != pack.DATA for loc in index.lookup_many(ids))

    def fix(self, tid: bytes) -> tuple[bytes | None, list[bytes]]:
        """(new tree id or None when unreadable, relative paths removed). Iterative post-order."""
        stack = [(tid, False)]
        while stack:
            t, expanded = stack.pop()
            if t in self.memo:
                continue
            try:
                nodes = self.repo.load_tree(t).nodes if t in self.repo.index else None
            except CorruptObject:
                nodes = None
            if nodes is None:
                self.memo[t] = (None, [b"(whole directory)"])
                continue
            if not expanded:
                stack.append((t, True))
                stack.extend((n.subtree, False) for n in nodes if n.type == DIR and n.subtree not in self.memo)
                continue
            out, removed, changed = [], [], False
            for n in nodes:
                if n.type == FILE and self._lost(n.content):
                    removed.append(n.name)
                    changed = True
                    continue
                if n.type == DIR:
                    sub, sub_removed = self.memo[n.subtree]
                    removed += [n.name + b"/" + r for r in sub_removed]
                    if sub is None:
                        sub = self._store([])
                    if sub != n.subtree:
                        n = records.decode(records.encode(n), Node)  # copy: trees are shared
                        n.subtree = sub
                        changed = True
                out.append(n)
            self.memo[t] = (self._store(out) if changed else t, removed)
        return self.memo[tid]


def repair_snapshots(repo: Repository, forget_originals: bool = False) -> RepairSnapshotsResult:
    """Write a repaired copy of every snapshot that lost data (marked in `extra`); remove unreadable
    snapshot files and snapshots with nothing left; remove the originals only when asked."""
    view = read_index_view(repo)
    unindexed = set(dict(repo.backend.list(Kind.DATA))) - {p.hex() for p in view.packs}
    if view.damaged or unindexed:
        # Deciding what is lost needs a complete index: an unindexed pack may hold the "missing" data.
        raise UsageError(
            "the index is incomplete (damaged index files or packs in no index): run `cermin repair index` first"
        )
    res = RepairSnapshotsResult(forget=forget_originals)
    saver = BlobSaver(repo, builders=1)
    fixer = _TreeFixer(repo, saver)
    todo: list[tuple[str, Snapshot, bytes, list[bytes]]] = []
    try:
        for name, _ in sorted(repo.backend.list(Kind.SNAPSHOT)):
            try:
                snap = repo.load_snapshot(name)
            except ForeignObject:  # planted without the key: nothing of ours to repair or remove
                res.foreign.append(name)
                continue
            except CorruptObject:  # damaged for good; a transient error aborts instead
                res.unreadable_removed.append(name)
                continue
            new_tree, removed = fixer.fix(snap.tree)
            if new_tree == snap.tree:
                continue
            todo.append((name, snap, new_tree, removed))
        saver.flush()
    finally:
        saver.close()
    for name, snap, new_tree, removed in todo:  # trees are durable: now the snapshots
        paths = [display_path(r) for r in removed]
        new_id = None
        if new_tree is not None:
            extra = dict(snap.extra)
            extra.update(repaired=True, repaired_from=name, repaired_at=now_rfc3339(), removed_paths=paths[:1000])
            fixed = records.decode(records.encode(snap), Snapshot)
            fixed.tree, fixed.extra = new_tree, extra
            new_id = repo.save_snapshot(fixed)
        res.repaired.append(RepairedSnapshot(name, new_id, paths))
        if forget_originals or new_id is None:
            repo.backend.remove(Kind.SNAPSHOT, name)
            res.originals_removed.append(name)
    for name in res.unreadable_removed:
        try:
            repo.backend.remove(Kind.SNAPSHOT, name)
        except ObjectNotFound:
            pass
    return res
