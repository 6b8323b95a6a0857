"""The last clean restore point: `restore --last-clean` and the `last-clean` snapshot name.

Without filters the snapshots must form one host/paths group (otherwise "the last clean one" is
ambiguous: give --host / --path); with filters, the newest clean snapshot among those matching.
"Clean" follows forget's rule (guard/verdict.py `last_clean_of`): the newest snapshot whose
effective verdict is clean, or, if none is, the newest one made before the guard judged any.
"""

from __future__ import annotations

from cermin.errors import SnapshotNotFound, UsageError
from cermin.guard.verdict import effective_verdicts, last_clean_of
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef, group_of, list_snapshots

LAST_CLEAN = "last-clean"


def last_clean(
    repo: Repository, hosts: tuple[str, ...] = (), tags: tuple[str, ...] = (), paths: tuple[bytes, ...] = ()
) -> SnapshotRef:
    refs = list_snapshots(repo, hosts, tags, paths)
    if not refs:
        raise SnapshotNotFound("no snapshot matches the filters")
    if not (hosts or tags or paths):
        groups = {group_of(r.snapshot) for r in refs if not r.future}
        if len(groups) > 1:
            raise UsageError(
                f"the repository holds {len(groups)} host/path groups: say which with --host and --path "
                "(the last clean snapshot is chosen per group)"
            )
    best = last_clean_of(refs, effective_verdicts(repo, refs))
    if best is None:
        raise SnapshotNotFound(
            "no clean snapshot matches: every one is suspicious or infected (`cermin guard report` explains why)"
        )
    return best


def resolve_snapshot(repo: Repository, ref: str, hosts=(), tags=(), paths=()) -> SnapshotRef:
    """`resolve` that also takes "last-clean"."""
    from cermin.repo.snapshots import resolve

    if ref == LAST_CLEAN:
        return last_clean(repo, tuple(hosts), tuple(tags), tuple(paths))
    return resolve(repo, ref, hosts, tags, paths)
