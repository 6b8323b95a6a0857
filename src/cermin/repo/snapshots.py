"""Listing, filtering and resolving snapshots (`latest`, unique hex prefixes).

What the repository says is not trusted blindly (anyone with the password or a storage credential
can add records):
- a snapshot file that cannot be read never hides the good ones: damaged files (bytes that do not
  match their name) and foreign ones (named by their content but failing authentication or
  decoding: planted without the key) are reported separately, because only the first kind can
  hold data someone still needs;
- a snapshot dated more than CLOCK_SKEW seconds after "now" is marked `future`: it is never a
  backup's parent nor `latest`, and forget keeps it out of its policy;
- a snapshot named by a "forgotten" aux record (a tombstone, written when forget could not delete a
  snapshot under Object Lock) is hidden, unless a later "revived" record cancels it, or it is
  protected, or it is the newest trusted snapshot of its host and paths (protection wins).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from cermin.backend.base import Kind
from cermin.errors import CerminError, CorruptObject, ForeignObject, ObjectNotFound, SnapshotNotFound
from cermin.format import records
from cermin.format.records import AuxRecord, Snapshot
from cermin.repo.repository import Repository
from cermin.util import parse_rfc3339

# Clocks of clients may differ by this much (S3 request signing already fails beyond 15 minutes);
# a snapshot, lock or record dated further ahead of the reader's clock is not trusted.
CLOCK_SKEW = 600.0

AUX_FORGOTTEN = "forgotten"
AUX_REVIVED = "revived"
AUX_PROTECTION = "protection"


def timestamp(s: str) -> float | None:
    try:
        return parse_rfc3339(s).timestamp()
    except (ValueError, TypeError, OverflowError):
        return None


def is_future(s: str, now: float | None = None) -> bool:
    """Dated beyond the clock-skew allowance (or undatable): not to be trusted as recent."""
    t = timestamp(s)
    return t is None or t > (time.time() if now is None else now) + CLOCK_SKEW


class SnapshotRef:
    __slots__ = ("id", "snapshot", "future", "forgotten")

    def __init__(self, id: str, snapshot: Snapshot, future: bool = False, forgotten: bool = False) -> None:
        self.id = id
        self.snapshot = snapshot
        self.future = future  # dated beyond the clock-skew allowance
        self.forgotten = forgotten  # tombstoned (only listed with include_forgotten)

    @property
    def short_id(self) -> str:
        return self.id[:8]


# ---- aux records ------------------------------------------------------------------------------
def aux_records(repo: Repository, on_bad=None) -> list[tuple[str, AuxRecord]]:
    """Every readable aux record. Damaged or planted ones protect, hide and cancel nothing (check
    names them); `on_bad(name, error)` hears about each."""
    out = []
    for name, _ in sorted(repo.backend.list(Kind.AUX)):
        try:
            out.append((name, repo.load_record(Kind.AUX, name, lambda raw: records.decode(raw, AuxRecord))))
        except ObjectNotFound:
            continue
        except CerminError as e:
            if on_bad is not None:
                on_bad(name, e)
    return out


def protected_until(recs: list[tuple[str, AuxRecord]]) -> dict[str, str]:
    """snapshot id -> latest protected-until date over every protection record."""
    out: dict[str, str] = {}
    best: dict[str, float] = {}
    for _, rec in recs:
        until = rec.data.get("until") if rec.type == AUX_PROTECTION and isinstance(rec.data, dict) else None
        t = timestamp(until) if isinstance(until, str) else None
        if t is not None and isinstance(rec.target, str) and t > best.get(rec.target, float("-inf")):
            best[rec.target] = t
            out[rec.target] = until
    return out


def tombstones(recs: list[tuple[str, AuxRecord]], now: float | None = None) -> dict[str, str]:
    """snapshot id -> aux record name of the tombstone in force. A "revived" record dated no earlier
    cancels it; a tombstone dated in the future is not trusted (it could never be cancelled)."""
    now = time.time() if now is None else now
    dead: dict[str, tuple[float, str]] = {}
    revived: dict[str, float] = {}
    for name, rec in recs:
        t = timestamp(rec.time)
        if t is None or not isinstance(rec.target, str):
            continue
        if rec.type == AUX_FORGOTTEN and t <= now + CLOCK_SKEW:
            if rec.target not in dead or t > dead[rec.target][0]:
                dead[rec.target] = (t, name)
        elif rec.type == AUX_REVIVED:
            revived[rec.target] = max(t, revived.get(rec.target, float("-inf")))
    return {sid: name for sid, (t, name) in dead.items() if revived.get(sid, float("-inf")) < t}


def is_protected(ref: SnapshotRef, prot: dict[str, str], now: float) -> bool:
    for until in (prot.get(ref.id), ref.snapshot.extra.get("protected_until")):
        t = timestamp(until) if isinstance(until, str) else None
        if t is not None and t > now:
            return True
    return False


def group_of(s: Snapshot) -> tuple:
    return (s.hostname, tuple(sorted(s.paths)))


def list_snapshots(
    repo: Repository,
    hosts: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    paths: tuple[bytes, ...] = (),
    workers: int = 8,
    on_unreadable=None,
    on_foreign=None,
    include_forgotten: bool = False,
    on_forgotten=None,
    now: float | None = None,
) -> list[SnapshotRef]:
    """All snapshots matching the filters, oldest first. Tags: each filter entry may be 'a,b' (all of).

    on_unreadable(names): damaged snapshot files (their data may still be needed: prune refuses);
    on_foreign(names): planted ones (ignored everywhere, named by check);
    on_forgotten(ids): tombstoned snapshots left out (listed, marked, with include_forgotten).
    """
    now = time.time() if now is None else now
    names = [n for n, _ in repo.backend.list(Kind.SNAPSHOT)]

    def load(name: str) -> Snapshot | None:
        try:
            return repo.load_snapshot(name)
        except ForeignObject:
            foreign.append(name)
        except (CorruptObject, ObjectNotFound):
            # A damaged or planted snapshot file must not hide the good ones; check names it.
            unreadable.append(name)
        return None

    unreadable: list[str] = []
    foreign: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as ex:
        refs = [
            SnapshotRef(n, s, future=is_future(s.time, now))
            for n, s in zip(names, ex.map(load, names), strict=True)
            if s is not None
        ]
    if unreadable and on_unreadable is not None:
        on_unreadable(sorted(unreadable))
    if foreign and on_foreign is not None:
        on_foreign(sorted(foreign))
    refs = _mark_forgotten(repo, refs, now)
    hidden = sorted(r.id for r in refs if r.forgotten)
    if hidden and on_forgotten is not None:
        on_forgotten(hidden)
    out = [r for r in refs if _matches(r.snapshot, hosts, tags, paths) and (include_forgotten or not r.forgotten)]
    out.sort(key=lambda r: (r.snapshot.time, r.id))
    return out


def _mark_forgotten(repo: Repository, refs: list[SnapshotRef], now: float) -> list[SnapshotRef]:
    if not any(True for _ in repo.backend.list(Kind.AUX)):
        return refs
    recs = aux_records(repo)
    dead = tombstones(recs, now)
    if not dead:
        return refs
    prot = protected_until(recs)
    newest: dict[tuple, SnapshotRef] = {}  # per host and paths, among trusted dates
    for r in refs:
        if not r.future:
            g = group_of(r.snapshot)
            if g not in newest or (r.snapshot.time, r.id) > (newest[g].snapshot.time, newest[g].id):
                newest[g] = r
    keep = {r.id for r in newest.values()}
    for r in refs:
        r.forgotten = r.id in dead and r.id not in keep and not is_protected(r, prot, now)
    return refs


def mark_forgotten(repo: Repository, refs: list[SnapshotRef], now: float | None = None) -> list[SnapshotRef]:
    """Set `forgotten` on refs loaded by the caller (check walks every snapshot file itself)."""
    return _mark_forgotten(repo, refs, time.time() if now is None else now)


def forgotten_ids(repo: Repository, now: float | None = None) -> set[str]:
    """Snapshot ids whose tombstone is in force (after protection and the newest-per-group rule)."""
    hidden: list[str] = []
    list_snapshots(repo, on_forgotten=hidden.extend, now=now)
    return set(hidden)


TOMBSTONE_GRACE = 7 * 86400  # seconds a tombstone must stand before lock maintenance honours it


def retained_snapshot_names(
    repo: Repository,
    now: float | None = None,
    grace: float = TOMBSTONE_GRACE,
    written_at: dict[str, float] | None = None,
) -> list[str]:
    """Snapshot files Object Lock maintenance must keep locked: all but the planted ones and the
    tombstoned ones (so they lapse and can be deleted) — a tombstone only once it has stood for
    `grace` seconds. Whoever holds the password can write tombstones for every real snapshot (and a
    fresh fake one to be "the newest"); the grace keeps the real ones locked while `lock status`
    shows the tombstones to the owner. Its start is the storage's own time of the record
    (`written_at`: aux name -> first-version time), else the record's date. Damaged files stay."""
    now_t = time.time() if now is None else now
    foreign: set[str] = set()
    forgotten: set[str] = set()
    list_snapshots(repo, on_foreign=foreign.update, on_forgotten=forgotten.update, now=now)
    if forgotten and grace > 0:
        recs = aux_records(repo)
        dead = tombstones(recs, now_t)
        dated = {name: timestamp(rec.time) for name, rec in recs}
        for sid in list(forgotten):
            rec = dead.get(sid)
            when = (written_at or {}).get(rec) if rec else None
            when = dated.get(rec) if when is None and rec else when
            if when is None or now_t - when < grace:
                forgotten.discard(sid)
    return sorted(n for n, _ in repo.backend.list(Kind.SNAPSHOT) if n not in foreign | forgotten)


def pending_tombstones(repo: Repository, retained: list[str]) -> list[str]:
    """Tombstoned snapshots still kept locked because their tombstone is younger than the grace."""
    hidden: set[str] = set()
    list_snapshots(repo, on_forgotten=hidden.update)
    return sorted(hidden & set(retained))


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
        trusted = [r for r in snaps if not r.future]  # a snapshot dated in 2999 is not the latest
        return (trusted or snaps)[-1]
    ref = ref.lower()
    if not ref or any(c not in "0123456789abcdef" for c in ref):
        raise SnapshotNotFound(f"invalid snapshot id {ref!r} (expected a hex prefix or 'latest')")
    matches = [n for n, _ in repo.backend.list(Kind.SNAPSHOT) if n.startswith(ref)]
    if not matches:
        raise SnapshotNotFound(f"no snapshot with id {ref}")
    if len(matches) > 1:
        raise CerminError(f"snapshot prefix {ref} is ambiguous ({len(matches)} matches)")
    snap = repo.load_snapshot(matches[0])
    return SnapshotRef(matches[0], snap, future=is_future(snap.time))


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
    if ref.future:
        d["future"] = True  # dated beyond the clock-skew allowance: not trusted as recent
    if ref.forgotten:
        d["forgotten"] = True
    if s.summary is not None:
        import msgspec

        d["summary"] = msgspec.to_builtins(s.summary)
    if s.extra:
        d["extra"] = s.extra
    return d
