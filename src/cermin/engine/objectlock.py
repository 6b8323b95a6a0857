"""Keep an immutable (Object Lock) repository locked: extend retention before it lapses, and bring
back objects that someone hid behind delete markers.

Only objects that still matter are extended — config, key slots, snapshots, index files in force
and the packs they name — and only those whose retention would lapse before the next maintenance
run plus the safety margin. Everything else is left to expire, after which prune may delete it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cermin.backend.base import CONFIG_NAME, Kind
from cermin.errors import UsageError
from cermin.repo.indexfiles import read_index_view
from cermin.repo.repository import Repository


@dataclass
class LockReport:
    policy: dict
    checked: int = 0
    extended: int = 0
    until: str = ""
    lapsing: list[str] = field(default_factory=list)  # kind/name of objects that needed extending
    hidden: list[str] = field(default_factory=list)


def lock_policy(repo: Repository) -> dict:
    pol = repo.config.extra.get("object_lock")
    if not pol or not hasattr(repo.backend, "extend_retention"):
        raise UsageError("this repository has no Object Lock policy (create it with `init --object-lock DAYS` on S3)")
    return pol


def needed_objects(repo: Repository) -> list[tuple[Kind, str]]:
    view = read_index_view(repo)
    objs: list[tuple[Kind, str]] = [(Kind.CONFIG, CONFIG_NAME)]
    objs += [(Kind.KEY, n) for n, _ in repo.backend.list(Kind.KEY)]
    objs += [(Kind.SNAPSHOT, n) for n, _ in repo.backend.list(Kind.SNAPSHOT)]
    objs += [(Kind.AUX, n) for n, _ in repo.backend.list(Kind.AUX)]
    objs += [(Kind.INDEX, n) for n in view.files]
    objs += [(Kind.DATA, p.hex()) for p in view.packs]
    return objs


def extend_locks(repo: Repository, now: datetime | None = None, dry_run: bool = False) -> LockReport:
    from cermin.backend.s3 import MIN_MARGIN_DAYS

    pol = lock_policy(repo)
    now = now or datetime.now(UTC)
    maintenance = int(pol.get("maintenance_days", 7))
    threshold = now + timedelta(days=maintenance + max(MIN_MARGIN_DAYS, maintenance // 2))
    until = repo.backend.lock.retain_until(now)
    rep = LockReport(policy=pol, until=until.isoformat())
    for kind, name in needed_objects(repo):
        rep.checked += 1
        current = repo.backend.retention(kind, name)
        if current is not None and current >= threshold:
            continue
        rep.lapsing.append(f"{kind.value}/{name}")
        if not dry_run:
            repo.backend.extend_retention(kind, name, until)
            rep.extended += 1
    rep.hidden = repo.backend.hidden()
    return rep
