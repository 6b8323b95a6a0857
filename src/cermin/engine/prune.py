"""`prune`: compute a plan (what is kept, repacked, deleted, bytes freed), then execute it.

Execution order, each step durable before the next, so a crash anywhere leaves a repository that
checks clean and restores every kept snapshot:
  1. repack: live blobs of partly used packs are copied into new packs (old packs untouched);
  2. phase one: one new full index naming only the packs that stay (old index files superseded,
     then removed) — packs to delete are now merely unindexed, which check reports as a notice;
  3. phase two: delete the repacked, unused and unindexed packs.
Prune holds the exclusive lock, so no backup can be deduplicating against a pack it deletes; it
re-checks the lock is still fresh before deleting anything.

Temporary files of interrupted writes (a local directory's `.tmp-*` after a kill -9) are removed
too, but only those not written for LEFTOVER_AGE (the stale-lock age, 30 minutes). The exclusive
lock alone does not make a younger one safe to remove: some writes take no lock (`--no-lock`, `key
add`, the lock file of a client trying to take a lock right now) and a writer whose lock went stale
may still be running. An older one can only belong to a writer stuck that long, whose lock is stale
too; and removing a temporary file never damages an object: an object becomes visible only by a
link to its final name, which fails (the write reports an error) if the temporary file is gone.

On a backend with a two-person rule (`cermin serve`: it has `remove_many`), every deletion of the
plan — old index files and packs — goes into ONE request a second admin approves; the result then
carries its id (`approval`). The server hides the queued objects meanwhile and re-checks before it
deletes (see docs/server.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cermin.backend.base import Kind
from cermin.engine.progress import Phases, Reporter
from cermin.engine.reach import reach
from cermin.engine.repack import RepackIncomplete, repack, rewrite_saver, wanted_entries
from cermin.errors import CerminError, ObjectLocked, ObjectNotFound
from cermin.repo import lock as repolock
from cermin.repo.indexfiles import IndexView, read_index_view, replace_index, write_index
from cermin.repo.masterindex import MasterIndex
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots


class PruneAborted(CerminError):
    pass


LEFTOVER_AGE = repolock.STALE  # seconds since a temporary file was last written before prune removes it


def old_leftovers(repo: Repository, now: float | None = None) -> list:
    """Temporary files of interrupted writes that prune may remove (see the module docstring)."""
    now = time.time() if now is None else now
    return [t for t in repo.backend.leftovers() if now - t.mtime > LEFTOVER_AGE]


@dataclass
class PrunePlan:
    snapshots: int = 0
    used_blobs: int = 0
    used_bytes: int = 0
    unused_blobs: int = 0
    unused_bytes: int = 0
    total_packs: int = 0
    total_bytes: int = 0
    keep_packs: list[str] = field(default_factory=list)
    repack_packs: list[str] = field(default_factory=list)
    delete_packs: list[str] = field(default_factory=list)  # indexed, nothing in them is used
    unindexed_packs: list[str] = field(default_factory=list)  # leftovers of interrupted runs
    repack_blobs: int = 0
    repack_bytes: int = 0
    bytes_freed: int = 0  # estimate: size of deleted packs minus what repacking rewrites
    index_files: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # planted index/snapshot files: ignored, not deleted
    temp_files: list[str] = field(default_factory=list)  # interrupted writes' temporary files, old enough
    temp_bytes: int = 0
    # Internal state for execute(), not part of the JSON plan.
    _view: IndexView | None = None
    _used: set[bytes] | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class PruneResult:
    plan: PrunePlan
    packs_written: int = 0
    bytes_written: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_locked: int = 0  # unused but still under Object Lock retention
    index_files_written: int = 0
    approval: str | None = None  # request id when the deletions wait for a second admin
    packs_queued: int = 0  # packs in that request
    index_files_queued: int = 0
    temp_files_removed: int = 0
    temp_bytes_removed: int = 0


def used_blobs(repo: Repository, on_foreign=None) -> set[bytes]:
    """Every tree and data blob reachable from any snapshot (planted snapshot files, which fail
    authentication, reach nothing: `on_foreign(names)` hears of them)."""

    def refuse(names: list[str]) -> None:
        raise PruneAborted(
            f"{len(names)} snapshot files cannot be read ({names[0][:12]}...): prune would delete "
            "their data; run `cermin check` and `cermin repair snapshots` first"
        )

    roots = [r.snapshot.tree for r in list_snapshots(repo, on_unreadable=refuse, on_foreign=on_foreign)]
    r = reach(repo, roots)  # an unreadable tree aborts: its data cannot be told from garbage
    used = r.trees
    used |= r.data
    return used


def plan_prune(repo: Repository, max_unused: float = 0.05, now: float | None = None) -> PrunePlan:
    """max_unused: fraction of the used data size that may stay unused in kept packs; `now`: the
    clock temporary files are aged by (time.time())."""
    view = read_index_view(repo)
    if view.damaged:
        raise PruneAborted(f"{len(view.damaged)} index files are damaged: run `cermin repair index` first")
    idx = repo.index = MasterIndex.from_packs(view.packs)
    foreign = [f"index/{n}" for n in sorted(view.foreign)]
    used = used_blobs(repo, lambda names: foreign.extend(f"snapshots/{n}" for n in names))
    missing = [b for b in used if b not in idx]
    if missing:
        raise PruneAborted(
            f"{len(missing)} blobs used by snapshots are missing: run `cermin check` and "
            f"`cermin repair` first; prune removes nothing from a damaged repository"
        )
    present = dict(repo.backend.list(Kind.DATA))
    gone = [p.hex() for p in view.packs if p.hex() not in present]
    if gone:  # a blob's first location might be in it, and its only good copy elsewhere counted dead
        raise PruneAborted(
            f"{len(gone)} indexed packs are missing ({gone[0][:12]}...): run `cermin check` and "
            "`cermin repair index` first; prune removes nothing from a damaged repository"
        )
    plan = PrunePlan(
        snapshots=len(list(repo.backend.list(Kind.SNAPSHOT))), index_files=list(view.files), foreign=foreign
    )
    counted: set[bytes] = set()
    partly: list[tuple[float, bytes, int, int]] = []
    for pid, _entries in view.packs.items():
        name = pid.hex()
        if name not in present:
            continue  # a missing pack can be neither kept nor deleted: check reports it
        live = dead = 0
        for bid, _t, _off, ln, _raw in view.entries(pid):
            if bid in used and bid not in counted and idx.lookup(bid).pack_id == pid:
                counted.add(bid)
                live += ln
                plan.used_blobs += 1
            else:
                dead += ln
                plan.unused_blobs += 1
        plan.used_bytes += live
        plan.unused_bytes += dead
        plan.total_packs += 1
        plan.total_bytes += present[name]
        if live == 0:
            plan.delete_packs.append(name)
            plan.bytes_freed += present[name]
        elif dead == 0:
            plan.keep_packs.append(name)
        else:
            partly.append((dead / (live + dead), pid, live, dead))
    plan.unindexed_packs = sorted(set(present) - {p.hex() for p in view.packs})
    plan.bytes_freed += sum(present[n] for n in plan.unindexed_packs)
    # Repack the emptiest packs until what stays unused is within the limit.
    unused_left = sum(d for _, _, _, d in partly)
    limit = max_unused * plan.used_bytes
    for _ratio, pid, live, dead in sorted(partly, reverse=True):
        if unused_left > limit:
            plan.repack_packs.append(pid.hex())
            plan.repack_bytes += live
            plan.repack_blobs += sum(
                1 for bid, *_ in view.entries(pid) if bid in used and idx.lookup(bid).pack_id == pid
            )
            plan.bytes_freed += present[pid.hex()] - live
            unused_left -= dead
        else:
            plan.keep_packs.append(pid.hex())
    leftovers = old_leftovers(repo, now)
    plan.temp_files = sorted(t.path for t in leftovers)
    plan.temp_bytes = sum(t.size for t in leftovers)
    plan.bytes_freed += plan.temp_bytes
    plan._view, plan._used = view, used
    return plan


def execute_prune(repo: Repository, plan: PrunePlan, lock=None, progress: Reporter | None = None) -> PruneResult:
    say = Phases(progress, "prune")  # the caller holds the exclusive lock (commands.prune takes it)
    view, used = plan._view, plan._used
    assert view is not None and used is not None, "execute a plan made by plan_prune"
    res = PruneResult(plan)
    saver = rewrite_saver(repo)
    live = wanted_entries(view, repo.index, used, [bytes.fromhex(n) for n in plan.repack_packs])
    n = len(plan.repack_packs)
    try:
        repack(
            repo,
            saver,
            live,
            require_all=True,
            progress=lambda i, _name: say(
                "repack", f"repacking {i + 1}/{len(plan.repack_packs)}", done=i + 1, total=n, unit="packs"
            ),
        )
    except RepackIncomplete as e:
        raise PruneAborted(
            f"pack {e.pack[:12]} has {len(e.lost)} damaged blobs that snapshots use: "
            f"nothing was deleted; run `cermin repair packs`"
        ) from None
    finally:
        saver.close()
    res.packs_written, res.bytes_written = saver.packs_written, saver.bytes_uploaded
    drop = set(plan.repack_packs) | set(plan.delete_packs)
    stays = {pid: e for pid, e in view.packs.items() if pid.hex() not in drop}
    stays.update(saver.new_packs)
    if lock is not None:
        lock.ensure_fresh()
    say("index", "writing the new index")
    old_files = view.files + view.superseded
    if repo.backend.caps.batch_remove:  # two-person rule: one request for every deletion of this plan
        new_files = write_index(repo, stays, old_files)  # phase one; the old files are now superseded
        res.index_files_written = len(new_files)
        old = [(Kind.INDEX, n) for n in old_files if n not in new_files]
        packs = [(Kind.DATA, n) for n in sorted(drop) + plan.unindexed_packs]
        if lock is not None:
            lock.ensure_fresh()
        if old or packs:
            res.approval = repo.backend.remove_many(old + packs)
            if res.approval is not None:
                res.index_files_queued, res.packs_queued = len(old), len(packs)
        repo.index = MasterIndex.from_packs(stays)
        return res
    new_files = replace_index(repo, stays, old_files)  # phase one
    res.index_files_written = len(new_files)
    if lock is not None:
        lock.ensure_fresh()
    present = dict(repo.backend.list(Kind.DATA))
    for name in sorted(drop) + plan.unindexed_packs:  # phase two
        try:
            repo.backend.remove(Kind.DATA, name)
            res.packs_deleted += 1
            res.bytes_deleted += present.get(name, 0)
        except ObjectNotFound:
            pass
        except ObjectLocked:
            res.packs_locked += 1  # unindexed now; a later prune deletes it once its lock lapses
    _remove_leftovers(repo, plan, res)
    repo.index = MasterIndex.from_packs(stays)
    return res


def _remove_leftovers(repo: Repository, plan: PrunePlan, res: PruneResult) -> None:
    """The plan's temporary files, aged when the plan was made (under the same exclusive lock)."""
    sizes = {t.path: t.size for t in repo.backend.leftovers()}  # listed again: some may be gone
    for path in plan.temp_files:
        if path in sizes:
            repo.backend.remove_leftover(path)
            res.temp_files_removed += 1
            res.temp_bytes_removed += sizes[path]
