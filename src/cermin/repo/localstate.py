"""Small per-repository state a client keeps on its own disk (never in the repository): which key
slot opened it last, which snapshots this client wrote. Nothing secret; a lost cache only costs
time. Under $CERMIN_CACHE_DIR, else $XDG_CACHE_HOME/cermin, else ~/.cache/cermin."""

from __future__ import annotations

import hashlib
import json
import os
import re

_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_OWN_SNAPSHOTS = 50  # per host and path set: enough to find a parent after forgets


def cache_root() -> str:
    base = os.environ.get("CERMIN_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "cermin")
    return base


def _path(kind: str, repo_id: str) -> str | None:
    if not _HEX64.fullmatch(repo_id or ""):
        return None  # the id comes from the repository: never let it shape a path
    return os.path.join(cache_root(), kind, repo_id + ".json")


def _read(kind: str, repo_id: str) -> dict:
    path = _path(kind, repo_id)
    try:
        with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
            data = json.load(f)
    except (OSError, TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(kind: str, repo_id: str, data: dict) -> None:
    path = _path(kind, repo_id)
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache only


def group_key(hostname: str, paths: list[bytes]) -> str:
    h = hashlib.sha256(hostname.encode("utf-8", "surrogateescape"))
    for p in sorted(paths):
        h.update(b"\0" + p)
    return h.hexdigest()


def own_snapshots(repo_id: str, group: str) -> list[str]:
    """Snapshots this client wrote for a host and path set, newest last."""
    ids = _read("snapshots", repo_id).get(group, [])
    return [i for i in ids if isinstance(i, str) and _HEX64.fullmatch(i)] if isinstance(ids, list) else []


def remember_snapshot(repo_id: str, group: str, snapshot_id: str) -> None:
    data = _read("snapshots", repo_id)
    ids = [i for i in own_snapshots(repo_id, group) if i != snapshot_id] + [snapshot_id]
    data[group] = ids[-MAX_OWN_SNAPSHOTS:]
    _write("snapshots", repo_id, data)
