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
from cermin.errors import UsageError
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository
from cermin.repo.snapshots import retained_snapshot_names

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
        return bool(self.hidden or self.planted or self.missing)


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
            f"{backend.planted_config} newer version(s) of `config` were written by someone else; cermin "
            "ignores them and uses the config it wrote (evidence of an attack with the storage credential)"
        )
    return out


def needed_objects(repo: Repository) -> list[tuple[Kind, str]]:
    view = read_index_view(repo)
    objs: list[tuple[Kind, str]] = [(Kind.CONFIG, CONFIG_NAME)]
    objs += [(Kind.KEY, n) for n, _ in repo.backend.list(Kind.KEY)]
    objs += [(Kind.SNAPSHOT, n) for n in retained_snapshot_names(repo)]  # not tombstoned or planted
    objs += [(Kind.AUX, n) for n, _ in repo.backend.list(Kind.AUX)]
    objs += [(Kind.INDEX, n) for n in view.files]
    objs += [(Kind.DATA, p.hex()) for p in view.packs]
    return objs


def extend_locks(repo: Repository, now: datetime | None = None, dry_run: bool = False) -> LockReport:
    from cermin.backend.s3 import _margin

    backend = lock_backend(repo.backend)
    pol = backend.lock
    now = now or datetime.now(UTC)
    threshold = now + timedelta(days=pol.maintenance_days + _margin(pol.maintenance_days))
    until = pol.retain_until(now)
    rep = LockReport(policy=pol.as_config(), until=until.isoformat(), warnings=policy_warnings(backend))
    versions: dict[Kind, dict[str, tuple[str, int]]] = {}
    for kind, name in needed_objects(repo):
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
