"""Small per-repository state a client keeps on its own disk (never in the repository): which key
slot opened it last, which snapshots this client wrote. Nothing secret; a lost cache only costs
time. Under $CERMIN_CACHE_DIR, else $XDG_CACHE_HOME/cermin, else ~/.cache/cermin. Updates are locked
(threads of one agent, and processes sharing the cache) and written through a temp file of their own."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading

_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_OWN_SNAPSHOTS = 50  # per host and path set: enough to find a parent after forgets
_LOCK = threading.Lock()  # one updater at a time in this process (flock below: across processes)


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
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        # a name of its own per call: writers in other threads or processes never share a temp file
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # a cache only
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def _locked(kind: str, repo_id: str):
    """Read-modify-write of one cache file, one at a time: a thread lock for this process, flock on a
    lock file beside it for other processes (agents sharing a cache). Without a lock file (an
    unwritable cache) the update goes on unlocked: it is a cache."""
    path = _path(kind, repo_id)
    with _LOCK:
        fd = -1
        if path is not None:
            try:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fd = os.open(path[: -len(".json")] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                fd = -1
        try:
            if fd >= 0:
                import fcntl

                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd >= 0:
                os.close(fd)  # releases the flock


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
    with _locked("snapshots", repo_id):
        data = _read("snapshots", repo_id)
        ids = data.get(group, [])
        ids = [i for i in ids if isinstance(i, str) and _HEX64.fullmatch(i)] if isinstance(ids, list) else []
        data[group] = [*(i for i in ids if i != snapshot_id), snapshot_id][-MAX_OWN_SNAPSHOTS:]
        _write("snapshots", repo_id, data)
