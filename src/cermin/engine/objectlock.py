"""Keep an immutable (Object Lock) repository locked: extend retention before it lapses, and bring
back objects that someone hid behind delete markers.

Only objects that still matter are extended — config, key slots, snapshots, index files in force
and the packs they name — and only those whose retention would lapse before the next maintenance
run plus the safety margin. Everything else is left to expire, after which prune may delete it.

Every retention read and write names the *first* version of a key, the one cermin wrote: someone
holding the storage credential can put newer versions or delete markers over any key, and
extending those instead would let the originals lapse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cermin.backend.base import CONFIG_NAME, Kind
from cermin.errors import CerminError, UsageError
from cermin.format import records
from cermin.format.index import iter_entries
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.snapshots import TOMBSTONE_GRACE, pending_tombstones, retained_snapshot_names
from cermin.util import plural

DEPLOYMENT_WARNING = (
    "Object Lock holds only if the backup client can reach nothing but authenticated S3: the storage's "
    "own admin ports (SeaweedFS filer, master and volume) must listen on loopback or sit behind its JWT "
    "security config, or they delete locked data without credentials (see docs/immutable.md)"
)


@dataclass
class LockReport:
    policy: dict
    checked: int = 0
    extended: int = 0
    until: str = ""
    lapsing: list[str] = field(default_factory=list)  # kind/name of objects that needed extending
    hidden: list[str] = field(default_factory=list)  # keys behind delete markers
    planted: list[str] = field(default_factory=list)  # kind/name with versions cermin did not write
    missing: list[str] = field(default_factory=list)  # needed objects with no version at all
    warnings: list[str] = field(default_factory=list)

    @property
    def attacked(self) -> bool:
        return bool(self.hidden or self.planted or self.missing or self.warnings)


def lock_backend(backend):
    """The backend if it can hold Object Lock retention, else a clear refusal."""
    if not backend.caps.retention or backend.lock is None:
        raise UsageError("this repository has no Object Lock policy (create it with `init --object-lock DAYS` on S3)")
    return backend


def new_lock_policy(backend, days: int, mode: str, maintenance_days: int) -> dict:
    """The config entry for a new immutable repository, after every check the policy must pass."""
    from cermin.backend.s3 import validate_lock_policy

    if not backend.caps.retention:
        raise UsageError("--object-lock needs an S3 repository (s3:...)")
    validate_lock_policy(days, mode, maintenance_days)
    return {"days": days, "mode": mode, "maintenance_days": maintenance_days}


def lock_policy(repo: Repository) -> dict:
    return lock_backend(repo.backend).lock.as_config()


def policy_warnings(backend) -> list[str]:
    out = []
    if backend.lock.mode == "governance":
        out.append(
            "this repository uses governance-mode Object Lock, which any identity allowed "
            "s3:BypassGovernanceRetention can lift: it does not protect against a stolen backup credential"
        )
    if backend.planted_config:
        out.append(
            f"written by someone else: {plural(backend.planted_config, 'newer version')} of `config`; cermin "
            "ignores them and uses the config it wrote (evidence of an attack with the storage credential)"
        )
    return out


@dataclass
class Needed:
    objects: list[tuple[Kind, str]]
    pending_forgets: list[str] = field(default_factory=list)  # tombstoned, still inside the grace
    hidden_by_index: list[str] = field(default_factory=list)  # needed packs no index in force names
    unreadable_trees: int = 0


def needed_objects(repo: Repository, now: datetime | None = None) -> list[tuple[Kind, str]]:
    return find_needed(repo, now).objects


def find_needed(repo: Repository, now: datetime | None = None, grace: float | None = None) -> Needed:
    """What must stay locked, computed from the snapshots, not from what index files claim.

    Whoever holds the password can write an authentic index file that `supersedes` every real one
    and names no pack: trusting the index files in force would then stop re-locking every pack. So
    the packs to keep are found by walking the retained snapshots over the union of *all* readable
    index files (superseded ones included), and every pack holding a copy of a blob they reach is
    kept; if a tree cannot be read that way, every pack any index names is kept. Needed packs that
    no index file in force names are evidence of such an attack (`hidden_by_index`)."""
    from cermin.engine.reach import reach

    backend = repo.backend
    now_t = (now or datetime.now(UTC)).timestamp()
    if grace is None:
        grace = max(TOMBSTONE_GRACE, backend.lock.days * 86400 if backend.caps.retention and backend.lock else 0)
    retained = retained_snapshot_names(repo, now_t, grace, backend.first_written(Kind.AUX))
    out = Needed(objects=[(Kind.CONFIG, CONFIG_NAME)])
    out.pending_forgets = pending_tombstones(repo, retained)
    out.objects += [(Kind.KEY, n) for n, _ in backend.list(Kind.KEY)]
    out.objects += [(Kind.SNAPSHOT, n) for n in retained]
    out.objects += [(Kind.AUX, n) for n, _ in backend.list(Kind.AUX)]

    view = read_index_view(repo)
    union: dict[bytes, list[bytes]] = {}  # pack id -> entries from every readable index file
    files_of: dict[bytes, set[str]] = {}
    for name in view.files + view.superseded:
        try:
            idx = repo.load_record(Kind.INDEX, name, records.index_decoder.decode)
        except CerminError:
            continue  # vanished or unreadable since the view was read: names nothing we can use
        for p in idx.packs:
            union.setdefault(p.id, []).append(p.blobs)
            files_of.setdefault(p.id, set()).add(name)
    shadow = Repository(repo.backend, repo.keys, repo.config, repo.secrets, repo.key_name)
    for pid, entry_lists in union.items():
        for blobs in entry_lists:
            shadow.index.add_pack_bulk(pid, blobs)
    shadow.index.build()
    roots = []
    for n in retained:
        try:
            roots.append(repo.load_snapshot(n).tree)
        except CerminError:
            continue  # damaged: kept locked itself, but it names nothing we can follow
    r = reach(shadow, roots, tolerate_unreadable=True)
    out.unreadable_trees = len(r.unreadable)
    if r.unreadable:
        packs = set(union)  # cannot tell what is needed: keep everything any index names
    else:
        wanted = r.blobs()
        packs = {
            pid
            for pid, entry_lists in union.items()
            if any(e.blob_id in wanted for blobs in entry_lists for e in iter_entries(blobs))
        }
    in_force = set(view.packs)
    out.hidden_by_index = sorted(p.hex() for p in packs - in_force)
    files = set(view.files) | {f for p in packs - in_force for f in files_of[p]}
    out.objects += [(Kind.INDEX, n) for n in sorted(files)]
    out.objects += [(Kind.DATA, p.hex()) for p in sorted(packs)]
    return out


def extend_locks(repo: Repository, now: datetime | None = None, dry_run: bool = False) -> LockReport:
    from cermin.backend.s3 import _margin

    backend = lock_backend(repo.backend)
    pol = backend.lock
    now = now or datetime.now(UTC)
    threshold = now + timedelta(days=pol.maintenance_days + _margin(pol.maintenance_days))
    until = pol.retain_until(now)
    rep = LockReport(policy=pol.as_config(), until=until.isoformat(), warnings=policy_warnings(backend))
    versions: dict[Kind, dict[str, tuple[str, int]]] = {}
    needed = find_needed(repo, now)
    if needed.pending_forgets:
        rep.warnings.append(
            f"kept locked: {plural(len(needed.pending_forgets), 'forgotten snapshot')}, until their tombstones are "
            f"{pol.days} days old (a tombstone written with a stolen password must not unlock anything at once): "
            + ", ".join(s[:8] for s in needed.pending_forgets[:10])
        )
    if needed.hidden_by_index:
        rep.warnings.append(
            f"named by no index file in force: {plural(len(needed.hidden_by_index), 'pack')} that snapshots need "
            "(an index file planted with the password may supersede the real ones): kept locked; run `cermin check`"
        )
    if needed.unreadable_trees:
        rep.warnings.append(
            f"unreadable: {plural(needed.unreadable_trees, 'tree')}; every pack any index file names is kept locked"
        )
    for kind, name in needed.objects:
        if kind not in versions:  # one listing per kind, not one request per object
            versions[kind] = backend.original_versions(kind)
        rep.checked += 1
        found = versions[kind].get(name)
        if found is None:
            rep.missing.append(f"{kind.value}/{name}")
            continue
        version, count = found
        if count > 1:
            rep.planted.append(f"{kind.value}/{name}")
        current = backend.retention(kind, name, version)
        if current is not None and current >= threshold:
            continue
        rep.lapsing.append(f"{kind.value}/{name}")
        if not dry_run:
            backend.extend_retention(kind, name, until, version)
            rep.extended += 1
    rep.hidden = backend.hidden()
    return rep


def unhide(backend) -> list[str]:
    """Remove delete markers that hide real versions. Needs no password and does not open the
    repository: a delete marker on `config` or on every key slot must not lock the owner out."""
    if not backend.caps.versions:
        raise UsageError("only S3 repositories keep hidden versions (`lock unhide` needs s3:...)")
    return backend.unhide()
