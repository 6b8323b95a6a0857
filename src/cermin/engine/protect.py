"""Protected snapshots: records that forget and prune honour until a date, and — on an Object Lock
repository — retention of the snapshot's objects extended to that date, so the storage itself
refuses to delete them. Protections can only be added or extended, never revoked: a stolen
password cannot lift one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cermin.backend.base import Kind
from cermin.engine.reach import file_blobs, walk_trees
from cermin.engine.results import Line, answer
from cermin.errors import UsageError
from cermin.format import records
from cermin.format.records import FILE, AuxRecord
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef, aux_records, protected_until, timestamp
from cermin.util import now_rfc3339, plural


@dataclass
class ProtectResult:
    snapshot: str
    until: str
    record: str
    objects_locked: int = 0
    exit_code = 0

    def to_json(self) -> list[dict]:
        return [
            {
                "message_type": "protected",
                "snapshot": self.snapshot,
                "until": self.until,
                "record": self.record,
                "objects_locked": self.objects_locked,
            }
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        extra = f"; Object Lock extended on {plural(self.objects_locked, 'object')}" if self.objects_locked else ""
        return [answer(f"snapshot {self.snapshot[:8]} protected until {self.until}{extra}")]


def protections(repo: Repository) -> dict[str, str]:
    """snapshot id -> latest protected-until date over every protection record (damaged or planted
    records protect nothing; check reports them)."""
    return protected_until(aux_records(repo))


def apply_protections(repo: Repository, refs: list[SnapshotRef], prot: dict[str, str] | None = None) -> None:
    """Fold protection records into the snapshots' `extra.protected_until` (in memory) for forget."""
    prot = protections(repo) if prot is None else prot
    for r in refs:
        until = prot.get(r.id)
        current = r.snapshot.extra.get("protected_until")
        if until and (not isinstance(current, str) or _later(until, current)):
            r.snapshot.extra = {**r.snapshot.extra, "protected_until": until}


def _later(a: str, b: str) -> bool:
    ta, tb = timestamp(a), timestamp(b)
    return ta is not None and (tb is None or ta > tb)


MAX_PROTECT_DAYS = 36500


def protect(repo: Repository, ref: SnapshotRef, until: datetime) -> ProtectResult:
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if until <= datetime.now(UTC):
        raise UsageError("the protection date must lie in the future")
    if until > datetime.now(UTC) + timedelta(days=MAX_PROTECT_DAYS):
        # On Object Lock storage the date becomes COMPLIANCE retention nobody can shorten: a typo
        # (year 9999) would pin the data and its storage bill for ever.
        raise UsageError(f"a protection can last at most {MAX_PROTECT_DAYS} days (about 100 years)")
    until_s = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    rec = AuxRecord(type="protection", time=now_rfc3339(), target=ref.id, data={"until": until_s})
    name = repo.save_object(Kind.AUX, records.encode(rec))
    res = ProtectResult(ref.id, until_s, name)
    if repo.backend.caps.retention and repo.backend.lock is not None:
        for kind, obj in _snapshot_objects(repo, ref) + [(Kind.AUX, name)]:
            current = repo.backend.retention(kind, obj)
            if current is None or current < until:
                repo.backend.extend_retention(kind, obj, until)
                res.objects_locked += 1
    return res


def _snapshot_objects(repo: Repository, ref: SnapshotRef) -> list[tuple[Kind, str]]:
    """The snapshot file and every pack holding a blob it needs."""
    packs: set[bytes] = set()
    lookup = repo.index.lookup
    for tid, nodes, _ in walk_trees(repo, [ref.snapshot.tree]):
        loc = lookup(tid)
        if loc is not None:
            packs.add(loc.pack_id)
        for n in nodes:
            if n.type == FILE:
                for bid in file_blobs(n):
                    loc = lookup(bid)
                    if loc is not None:
                        packs.add(loc.pack_id)
    return [(Kind.SNAPSHOT, ref.id)] + [(Kind.DATA, p.hex()) for p in sorted(packs)]
