"""Listing, filtering and resolving snapshots (`latest`, unique hex prefixes)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from cermin.backend.base import Kind
from cermin.errors import CerminError, CorruptObject, ObjectNotFound, SnapshotNotFound
from cermin.format.records import Snapshot
from cermin.repo.repository import Repository


class SnapshotRef:
    __slots__ = ("id", "snapshot")

    def __init__(self, id: str, snapshot: Snapshot) -> None:
        self.id = id
        self.snapshot = snapshot

    @property
    def short_id(self) -> str:
        return self.id[:8]


def list_snapshots(
    repo: Repository,
    hosts: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    paths: tuple[bytes, ...] = (),
    workers: int = 8,
    on_unreadable=None,
) -> list[SnapshotRef]:
    """All snapshots matching the filters, oldest first. Tags: each filter entry may be 'a,b' (all of)."""
    names = [n for n, _ in repo.backend.list(Kind.SNAPSHOT)]

    def load(name: str) -> Snapshot | None:
        try:
            return repo.load_snapshot(name)
        except (CorruptObject, ObjectNotFound):
            # A damaged or planted snapshot file must not hide the good ones; check names it.
            unreadable.append(name)
            return None

    unreadable: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as ex:
        refs = [SnapshotRef(n, s) for n, s in zip(names, ex.map(load, names), strict=True) if s is not None]
    if unreadable and on_unreadable is not None:
        on_unreadable(sorted(unreadable))
    out = [r for r in refs if _matches(r.snapshot, hosts, tags, paths)]
    out.sort(key=lambda r: (r.snapshot.time, r.id))
    return out


def _matches(s: Snapshot, hosts, tags, paths) -> bool:
    if hosts and s.hostname not in hosts:
        return False
    if tags and not any(set(t.split(",")) <= set(s.tags) for t in tags):
        return False
    if paths and not set(paths) <= set(s.paths):
        return False
    return True


def resolve(repo: Repository, ref: str, hosts=(), tags=(), paths=()) -> SnapshotRef:
    if ref == "latest":
        snaps = list_snapshots(repo, hosts, tags, paths)
        if not snaps:
            raise SnapshotNotFound("no snapshot matches 'latest'")
        return snaps[-1]
    ref = ref.lower()
    if not ref or any(c not in "0123456789abcdef" for c in ref):
        raise SnapshotNotFound(f"invalid snapshot id {ref!r} (expected a hex prefix or 'latest')")
    matches = [n for n, _ in repo.backend.list(Kind.SNAPSHOT) if n.startswith(ref)]
    if not matches:
        raise SnapshotNotFound(f"no snapshot with id {ref}")
    if len(matches) > 1:
        raise CerminError(f"snapshot prefix {ref} is ambiguous ({len(matches)} matches)")
    return SnapshotRef(matches[0], repo.load_snapshot(matches[0]))


def snapshot_json(ref: SnapshotRef) -> dict:
    """Stable JSON view of a snapshot (documented in docs/json.md)."""
    s = ref.snapshot
    d = {
        "id": ref.id,
        "short_id": ref.short_id,
        "time": s.time,
        "tree": s.tree.hex(),
        "paths": [p.decode("utf-8", "backslashreplace") for p in s.paths],
        "hostname": s.hostname,
        "username": s.username,
        "uid": s.uid,
        "gid": s.gid,
        "tags": s.tags,
        "parent": s.parent or None,
        "incomplete": s.incomplete,
        "program_version": s.program_version,
    }
    if s.summary is not None:
        import msgspec

        d["summary"] = msgspec.to_builtins(s.summary)
    if s.extra:
        d["extra"] = s.extra
    return d
