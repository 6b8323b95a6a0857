"""The tenant mirror's reports: how far behind B is (`mirror status`) and whether B holds what A holds
(`mirror verify`). Engine side only; `cermin.cli.cmd_mirror` opens the repositories and renders.

Neither repository is trusted blindly. Everything comes from records someone with a password (of A
or of B) or a storage credential may have written:
- a mirrored snapshot of B names its original by `extra.origin = {"repository", "snapshot"}`; an
  origin that is not a dict of two strings (the snapshot id 64 lowercase hex) counts as no origin;
- `mirror_run` aux records of B are read field by field: a wrong type drops the field or the record,
  a record dated in the future (beyond CLOCK_SKEW) or undatable is ignored (it must not pass for the
  latest success), an error message is cut to MAX_ERROR characters;
- snapshots dated in the future never count as a group's newest, lag is measured from trusted dates;
- trees are walked with `format.names.valid_nodes` semantics (the first of repeated names counts,
  invalid names and types are skipped and reported), iteratively, each pair of trees compared once.

Status needs only B (`src=None`): the last runs and, per group, B's newest mirrored snapshot and its
age. With A it adds A's newest snapshot, the lag in snapshots and in bytes still to copy: exact
(raw bytes of the blobs the missing snapshots reach that B's index lacks) when A and B share the
blob-id key, else an estimate from the missing snapshots' summaries (`bytes_estimated`).

Verify, per snapshot of B whose origin is A: with a shared id key, equal tree ids prove the whole
tree equal at once (ids are keyed hashes of the plaintext); B must still index every blob its tree
reaches, and with `read_data` every such blob is read from B and authenticated. Otherwise (other
keys, or tree ids that differ) both trees are walked in step: names, types, modes, owners, sizes,
mtimes, symlink targets, device numbers and xattrs are compared, and file contents by streaming
both files' plaintext through a hash (nothing is written to disk). A snapshot whose origin A no
longer has is reported (`origin_missing`), not failed: A's retention may have forgotten it.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cermin.engine.reach import reach
from cermin.engine.results import Line, answer, fail, note, warning, warning_json
from cermin.errors import EXIT_FATAL, CorruptObject, ObjectNotFound
from cermin.format.index import IndexEntry
from cermin.format.names import escape_name, valid_nodes
from cermin.format.records import BLOCKDEV, CHARDEV, DIR, FILE, ID_LEN, SYMLINK, Node, Snapshot
from cermin.repo.indexfiles import verify_blobs
from cermin.repo.repository import Repository
from cermin.repo.snapshots import CLOCK_SKEW, SnapshotRef, aux_records, group_of, list_snapshots, timestamp
from cermin.util import display_path, fmt_bytes, plural

AUX_MIRROR_RUN = "mirror_run"
MAX_ERROR = 1000  # characters of a run's error message kept
MAX_COUNT = 2**62  # a hostile size or count is clamped to this
MAX_DIFFERENCES = 20  # differing paths reported per snapshot (the first ones found)
_HEX64 = re.compile(r"[0-9a-f]{64}")


# ---- reading hostile fields ------------------------------------------------------------------
def _count(v) -> int | None:
    """A non-negative int (bool is not one), clamped; None for anything else."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        return None
    return min(v, MAX_COUNT)


def _text(v, limit: int = MAX_ERROR) -> str:
    """A string from a record, cut to `limit` characters, control characters escaped (it is shown on
    terminals)."""
    if not isinstance(v, str):
        return ""
    v = v[:limit]
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in v)


def origin_of(snap: Snapshot) -> tuple[str, str] | None:
    """(A's repository id, A's snapshot id) of a mirrored snapshot, or None when it has no usable
    origin."""
    o = snap.extra.get("origin") if isinstance(snap.extra, dict) else None
    if not isinstance(o, dict):
        return None
    repo_id, snap_id = o.get("repository"), o.get("snapshot")
    if not isinstance(repo_id, str) or not isinstance(snap_id, str) or not _HEX64.fullmatch(snap_id):
        return None
    if not repo_id or len(repo_id) > 256:
        return None
    return repo_id, snap_id


def _ensure_index(repo: Repository) -> None:
    if not repo.index_files and len(repo.index) == 0:
        repo.load_index()


def _group_json(g: tuple) -> tuple[str, list[str]]:
    host, paths = g
    return host, [display_path(p) for p in paths]


# ---- mirror runs -------------------------------------------------------------------------------
@dataclass
class MirrorRun:
    """One `mirror_run` record of B, as far as it could be read."""

    record: str  # aux record name
    time: str
    ok: bool
    snapshots_copied: int | None = None
    bytes_copied: int | None = None
    error: str = ""
    source: str = ""  # where A was (a location string, for people)

    def to_json(self) -> dict:
        return {
            "time": self.time,
            "ok": self.ok,
            "snapshots_copied": self.snapshots_copied,
            "bytes_copied": self.bytes_copied,
            "error": self.error,
            "source": self.source,
        }


def mirror_runs(dst: Repository, source_id: str | None = None, now: float | None = None) -> tuple[list[MirrorRun], int]:
    """The readable `mirror_run` records of B (of A's repository id `source_id`, or of any), oldest
    first, and how many were ignored (wrong types, future or bad dates). Records without a boolean
    `ok` are ignored: they can prove neither a success nor a failure."""
    now = time.time() if now is None else now
    runs: list[tuple[float, MirrorRun]] = []
    ignored = 0
    for name, rec in aux_records(dst):
        if rec.type != AUX_MIRROR_RUN:
            continue
        if not isinstance(rec.target, str) or (source_id is not None and rec.target != source_id):
            continue
        t = timestamp(rec.time) if isinstance(rec.time, str) else None
        data = rec.data if isinstance(rec.data, dict) else {}
        ok = data.get("ok")
        if t is None or t > now + CLOCK_SKEW or not isinstance(ok, bool):
            ignored += 1
            continue
        run = MirrorRun(
            record=name,
            time=rec.time,
            ok=ok,
            snapshots_copied=_count(data.get("snapshots_copied")),
            bytes_copied=_count(data.get("bytes_copied")),
            error=_text(data.get("error")),
            source=_text(data.get("source"), 500),
        )
        runs.append((t, run))
    runs.sort(key=lambda tr: (tr[0], tr[1].record))
    return [r for _, r in runs], ignored


# ---- status --------------------------------------------------------------------------------------
@dataclass
class GroupStatus:
    """One host and path set."""

    source: str  # A's repository id
    hostname: str
    paths: list[bytes]
    src_snapshots: int | None = None  # A's snapshots of the group (None: status from B alone)
    dst_snapshots: int = 0  # B's snapshots mirrored from A's snapshots of the group
    newest_src: str | None = None  # time of A's newest (trusted) snapshot
    newest_src_id: str | None = None
    newest_dst: str | None = None  # time of B's newest (trusted) mirrored snapshot
    newest_dst_id: str | None = None  # its id in B
    lag_seconds: float | None = None
    lag_snapshots: int | None = None  # A's snapshots B lacks (None from B alone)
    missing: list[str] = field(default_factory=list)  # their ids in A, oldest first
    bytes_to_copy: int | None = None
    bytes_estimated: bool = False
    unreadable_trees: int = 0  # trees of A the byte count could not follow

    def to_json(self) -> dict:
        host, paths = _group_json((self.hostname, self.paths))
        return {
            "message_type": "mirror_status",
            "source": self.source,
            "hostname": host,
            "paths": paths,
            "src_snapshots": self.src_snapshots,
            "dst_snapshots": self.dst_snapshots,
            "newest_src": self.newest_src,
            "newest_src_id": self.newest_src_id,
            "newest_dst": self.newest_dst,
            "newest_dst_id": self.newest_dst_id,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "lag_snapshots": self.lag_snapshots,
            "missing": self.missing,
            "bytes_to_copy": self.bytes_to_copy,
            "bytes_estimated": self.bytes_estimated,
            "unreadable_trees": self.unreadable_trees,
        }


@dataclass
class MirrorStatus:
    source: str | None  # A's repository id (None: B alone and every origin)
    dst: str  # B's repository id
    from_source: bool  # computed with A (False: from B alone)
    now: float
    groups: list[GroupStatus] = field(default_factory=list)
    runs: list[MirrorRun] = field(default_factory=list)  # oldest first
    runs_ignored: int = 0
    shared_ids: bool | None = None  # A and B share the blob-id key (None from B alone)
    bytes_to_copy: int | None = None  # over every group, each blob once (exact mode) or summed
    bytes_estimated: bool = False
    warnings: list[str] = field(default_factory=list)
    exit_code = 0

    @property
    def last_success(self) -> MirrorRun | None:
        return next((r for r in reversed(self.runs) if r.ok), None)

    @property
    def last_error(self) -> MirrorRun | None:
        return next((r for r in reversed(self.runs) if not r.ok), None)

    @property
    def failing(self) -> bool:
        """The latest run failed."""
        return bool(self.runs) and not self.runs[-1].ok

    def runs_json(self) -> dict:
        ls, le = self.last_success, self.last_error
        return {
            "message_type": "mirror_runs",
            "source": self.source,
            "destination": self.dst,
            "from_source": self.from_source,
            "runs": len(self.runs),
            "runs_ignored": self.runs_ignored,
            "last_success": ls.to_json() if ls else None,
            "last_error": le.to_json() if le else None,
            "failing": self.failing,
            "shared_ids": self.shared_ids,
            "bytes_to_copy": self.bytes_to_copy,
            "bytes_estimated": self.bytes_estimated,
        }

    def to_json(self) -> list[dict]:
        return [*map(warning_json, self.warnings), *(g.to_json() for g in self.groups), self.runs_json()]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, self.warnings)]
        head = ["host", "paths", "newest in A", "newest in B", "lag", "behind", "to copy"]
        rows = []
        for g in self.groups:
            host, paths = _group_json((g.hostname, g.paths))
            behind = "?" if g.lag_snapshots is None else str(g.lag_snapshots)
            to_copy = "?" if g.bytes_to_copy is None else fmt_bytes(g.bytes_to_copy)
            if g.bytes_to_copy is not None and g.bytes_estimated:
                to_copy = "~" + to_copy
            rows.append(
                [
                    _text(host, 64),
                    _text(", ".join(paths), 80),
                    "-" if not self.from_source else (g.newest_src or "none")[:19],
                    (g.newest_dst or "none")[:19],
                    "?" if g.lag_seconds is None else fmt_age(g.lag_seconds),
                    behind,
                    to_copy,
                ]
            )
        if rows:
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
            for r in [head, *rows]:
                lines.append(answer("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()))
        else:
            lines.append(answer("no snapshots to mirror"))
        if not self.from_source:
            lines.append(note("status read from the mirror alone: lag in snapshots and bytes needs the source"))
        elif self.bytes_estimated:
            lines.append(note("bytes to copy are estimated from snapshot summaries (the mirror has its own id key)"))
        ls, le = self.last_success, self.last_error
        if ls is None:
            lines.append(answer("last successful mirror: never"))
        else:
            copied = f"{plural(ls.snapshots_copied or 0, 'snapshot')}, {fmt_bytes(ls.bytes_copied or 0)}"
            age = fmt_age(self.now - timestamp(ls.time))
            lines.append(answer(f"last successful mirror: {ls.time[:19]} ({age} ago; {copied})"))
        if le is not None:
            say = warning if self.failing else answer
            lines.append(say(f"last error: {le.time[:19]}: {le.error or 'no message'}"))
        if self.runs_ignored:
            lines.append(warning(f"{plural(self.runs_ignored, 'mirror run record')} ignored (bad types or dates)"))
        return lines


def fmt_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 2 * 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def _trusted(refs: Iterable[SnapshotRef]) -> list[SnapshotRef]:
    return [r for r in refs if not r.future and timestamp(r.snapshot.time) is not None]


def _newest(refs: Iterable[SnapshotRef]) -> SnapshotRef | None:
    t = _trusted(refs)
    return max(t, key=lambda r: (timestamp(r.snapshot.time), r.id)) if t else None


def mirrored(
    dst: Repository, source_id: str | None = None, now: float | None = None
) -> list[tuple[SnapshotRef, str, str]]:
    """(B's snapshot, A's repository id, A's snapshot id) of every snapshot of B with a usable origin
    (of `source_id` only, when given). Tombstoned ones of B are left out, as B's `snapshots` does."""
    out = []
    for ref in list_snapshots(dst, now=now):
        o = origin_of(ref.snapshot)
        if o is not None and (source_id is None or o[0] == source_id):
            out.append((ref, *o))
    return out


def _summary_bytes(s: Snapshot, field_name: str) -> int:
    v = _count(getattr(s.summary, field_name, None)) if s.summary is not None else None
    return v or 0


def mirror_status(
    src: Repository | None, dst: Repository, now: float | None = None, source_id: str | None = None
) -> MirrorStatus:
    """How far B (`dst`) is behind A (`src`), per host and path set, and B's last mirror runs.

    With `src=None` it is read from B alone: `source_id` (A's repository id) limits it to one
    source, else every origin found in B is shown. The caller opens both repositories (their own
    passwords); indexes are loaded here when the byte count needs them and the caller has not."""
    now = time.time() if now is None else now
    sid = src.config.id if src is not None else source_id
    st = MirrorStatus(source=sid, dst=dst.config.id, from_source=src is not None, now=now)
    st.runs, st.runs_ignored = mirror_runs(dst, sid, now)

    groups: dict[tuple, dict] = {}  # (source, host, paths) -> {"a": [...], "b": [...]}
    have: dict[tuple[str, str], SnapshotRef] = {}  # (source, A snapshot id) -> newest B copy
    for ref, rid, oid in mirrored(dst, sid, now):
        groups.setdefault((rid, *group_of(ref.snapshot)), {"a": [], "b": []})["b"].append(ref)
        prev = have.get((rid, oid))
        if prev is None or (ref.snapshot.time, ref.id) > (prev.snapshot.time, prev.id):
            have[(rid, oid)] = ref
    if src is not None:
        for ref in list_snapshots(src, now=now):
            groups.setdefault((sid, *group_of(ref.snapshot)), {"a": [], "b": []})["a"].append(ref)
        st.shared_ids = src.shares_ids_with(dst)
        st.bytes_estimated = not st.shared_ids

    all_missing: list[SnapshotRef] = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2])):
        rid, host, paths = key
        a, b = groups[key]["a"], groups[key]["b"]
        g = GroupStatus(source=rid, hostname=host, paths=list(paths), dst_snapshots=len(b))
        nb = _newest(b)
        if nb is not None:
            g.newest_dst, g.newest_dst_id = nb.snapshot.time, nb.id
        if src is None:
            # from B alone: the age of B's newest copy of the group
            g.lag_seconds = now - timestamp(nb.snapshot.time) if nb is not None else None
            st.groups.append(g)
            continue
        g.src_snapshots = len(a)
        na = _newest(a)
        if na is not None:
            g.newest_src, g.newest_src_id = na.snapshot.time, na.id
        missing = [r for r in a if (rid, r.id) not in have]
        g.missing = [r.id for r in missing]
        g.lag_snapshots = len(missing)
        copied = _newest(r for r in a if (rid, r.id) in have)
        if copied is not None:
            g.lag_seconds = max(0.0, now - timestamp(copied.snapshot.time))
        elif na is not None:
            g.lag_seconds = max(0.0, now - timestamp(na.snapshot.time))
        if st.shared_ids:
            g.bytes_to_copy, g.unreadable_trees = _bytes_to_copy(src, dst, missing)
        else:
            g.bytes_to_copy = _estimate(missing, has_any=copied is not None)
            g.bytes_estimated = True
        all_missing.extend(missing)
        st.groups.append(g)
    if src is not None:
        if st.shared_ids:
            st.bytes_to_copy, unreadable = _bytes_to_copy(src, dst, all_missing)
            if unreadable:
                st.warnings.append(
                    f"{plural(unreadable, 'tree')} of the source cannot be read: bytes to copy below them are not "
                    "counted; run `cermin check` on the source"
                )
        else:
            st.bytes_to_copy = min(MAX_COUNT, sum(g.bytes_to_copy or 0 for g in st.groups))
    return st


def _bytes_to_copy(src: Repository, dst: Repository, missing: list[SnapshotRef]) -> tuple[int, int]:
    """(raw bytes of the blobs `missing` reach that B's index lacks, unreadable trees of A)."""
    if not missing:
        return 0, 0
    _ensure_index(src)
    _ensure_index(dst)
    r = reach(src, [m.snapshot.tree for m in missing], tolerate_unreadable=True)
    total = 0
    for bid in r.blobs():
        if bid in dst.index:
            continue
        n = src.index.raw_length(bid)
        total += n or 0  # a blob A lacks cannot be copied either (check on A names it)
    return min(total, MAX_COUNT), len(r.unreadable)


def _estimate(missing: list[SnapshotRef], has_any: bool) -> int:
    """Bytes to copy into a B with its own id key, from the missing snapshots' summaries: the data
    each added to A; when B has nothing of the group, the largest one whole instead of its additions."""
    if not missing:
        return 0
    added = [_summary_bytes(r.snapshot, "data_added_raw") for r in missing]
    total = sum(added)
    if not has_any:
        sizes = [_summary_bytes(r.snapshot, "total_bytes") for r in missing]
        i = max(range(len(missing)), key=lambda k: sizes[k])
        total += max(0, sizes[i] - added[i])
    return min(total, MAX_COUNT)


# ---- verify --------------------------------------------------------------------------------------
OK, DIFFERS, ORIGIN_MISSING = "ok", "differs", "origin_missing"
SNAPSHOT_FIELDS = ("time", "hostname", "username", "paths", "tags")


@dataclass
class Difference:
    path: bytes  # inside the snapshot, "/"-joined ("" is the root)
    what: str

    def to_json(self) -> dict:
        return {"path": display_path(self.path) or "/", "what": self.what}


@dataclass
class SnapshotVerdict:
    snapshot: str  # B's snapshot id
    origin: str  # A's snapshot id
    status: str = OK  # ok, differs, origin_missing
    method: str = ""  # "tree_id" (equal ids, shared key) or "walk"
    differences: list[Difference] = field(default_factory=list)  # the first MAX_DIFFERENCES
    truncated: bool = False  # more differences than listed
    files_compared: int = 0  # files whose contents were read on both sides
    bytes_compared: int = 0
    blobs_checked: int = 0  # blobs of B's tree looked up in B's index (and read, with read_data)
    blobs_missing: int = 0  # not in B's index
    blobs_damaged: int = 0  # read_data: failed authentication or their id
    skipped_entries: int = 0  # entries valid_nodes hides (same on both sides, else a difference)

    def differ(self, path: bytes, what: str) -> None:
        self.status = DIFFERS
        if len(self.differences) < MAX_DIFFERENCES:
            self.differences.append(Difference(path, what))
        else:
            self.truncated = True

    @property
    def full(self) -> bool:
        return len(self.differences) >= MAX_DIFFERENCES

    def to_json(self) -> dict:
        return {
            "message_type": "mirror_verify",
            "snapshot": self.snapshot,
            "origin": self.origin,
            "status": self.status,
            "method": self.method,
            "differences": [d.to_json() for d in self.differences],
            "truncated": self.truncated,
            "files_compared": self.files_compared,
            "bytes_compared": self.bytes_compared,
            "blobs_checked": self.blobs_checked,
            "blobs_missing": self.blobs_missing,
            "blobs_damaged": self.blobs_damaged,
            "skipped_entries": self.skipped_entries,
        }


@dataclass
class MirrorVerifyReport:
    source: str
    dst: str
    read_data: bool
    shared_ids: bool
    snapshots: list[SnapshotVerdict] = field(default_factory=list)
    other_origin: int = 0  # snapshots of B mirrored from another repository (not verified)
    no_origin: int = 0  # snapshots of B that are not mirrored ones
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(v.status != DIFFERS for v in self.snapshots)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_FATAL

    def counts(self) -> dict[str, int]:
        c = {OK: 0, DIFFERS: 0, ORIGIN_MISSING: 0}
        for v in self.snapshots:
            c[v.status] += 1
        return c

    def to_json(self) -> list[dict]:
        c = self.counts()
        summary = {
            "message_type": "summary",
            "source": self.source,
            "destination": self.dst,
            "read_data": self.read_data,
            "shared_ids": self.shared_ids,
            "snapshots": len(self.snapshots),
            "ok": c[OK],
            "differ": c[DIFFERS],
            "origin_missing": c[ORIGIN_MISSING],
            "other_origin": self.other_origin,
            "no_origin": self.no_origin,
        }
        return [*map(warning_json, self.warnings), *(v.to_json() for v in self.snapshots), summary]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, self.warnings)]
        for v in self.snapshots:
            if v.status == OK:
                if verbose:
                    how = "same tree id" if v.method == "tree_id" else f"{plural(v.files_compared, 'file')} compared"
                    lines.append(note(f"{v.snapshot[:8]} = {v.origin[:8]}: ok ({how})"))
            elif v.status == ORIGIN_MISSING:
                lines.append(
                    note(f"{v.snapshot[:8]}: its origin {v.origin[:8]} is no longer in the source (forgotten?)")
                )
            else:
                lines.append(answer(f"{v.snapshot[:8]} differs from {v.origin[:8]}:"))
                for d in v.differences:
                    lines.append(answer(f"  {escape_name(d.path or b'/')}: {d.what}"))
                if v.truncated:
                    lines.append(answer("  ... (more differences)"))
        c = self.counts()
        how = ", every blob read" if self.read_data else ""
        lines.append(
            answer(
                f"verified {plural(len(self.snapshots), 'mirrored snapshot')}{how}: {c[OK]} ok, {c[DIFFERS]} differ, "
                f"{c[ORIGIN_MISSING]} no longer in the source"
            )
        )
        if c[DIFFERS]:
            lines.append(fail(f"{plural(c[DIFFERS], 'mirrored snapshot')} differ from the source"))
        return lines


class _Verifier:
    """Compares B's copies with A's originals; caches what several snapshots share."""

    def __init__(self, src: Repository, dst: Repository, read_data: bool) -> None:
        self.src, self.dst, self.read_data = src, dst, read_data
        self.shared = src.shares_ids_with(dst)
        self.blob_ok: dict[bytes, bool] = {}  # read_data: B's blob id -> authenticated

    # -- snapshot level
    def verify(self, b_ref: SnapshotRef, a_snap: Snapshot, origin: str) -> SnapshotVerdict:
        v = SnapshotVerdict(b_ref.id, origin)
        b_snap = b_ref.snapshot
        for f in SNAPSHOT_FIELDS:
            if getattr(a_snap, f) != getattr(b_snap, f):
                v.differ(b"", f"snapshot {f} differs")
        if self.shared and a_snap.tree == b_snap.tree:
            v.method = "tree_id"
        else:
            v.method = "walk"
            self.walk(v, a_snap.tree, b_snap.tree)
        if self.shared:
            self.check_blobs(v, b_snap.tree)
        return v

    def check_blobs(self, v: SnapshotVerdict, tree: bytes) -> None:
        """B indexes every blob its tree reaches (and, with read_data, each one reads back)."""
        r = reach(self.dst, [tree], tolerate_unreadable=True)
        for tid, why in sorted(r.unreadable.items())[:MAX_DIFFERENCES]:
            v.differ(b"", f"tree {tid.hex()[:16]} cannot be read in the mirror: {why}")
        blobs = r.blobs() - set(r.unreadable)
        v.blobs_checked = len(blobs)
        absent = sorted(b for b in blobs if b not in self.dst.index)
        v.blobs_missing = len(absent)
        if absent:
            v.differ(b"", f"{plural(len(absent), 'blob')} missing in the mirror ({absent[0].hex()[:16]}...)")
        if self.read_data:
            self.read_blobs(blobs - set(absent))
            bad = sorted(b for b in blobs if b in self.blob_ok and not self.blob_ok[b])
            v.blobs_damaged = len(bad)
            if bad:
                v.differ(b"", f"{plural(len(bad), 'blob')} of the mirror fail verification ({bad[0].hex()[:16]}...)")

    def read_blobs(self, blobs: set[bytes]) -> None:
        """Read every blob not read yet, a pack at a time, and authenticate it."""
        by_pack: dict[bytes, list[IndexEntry]] = {}
        for bid in blobs:
            if bid in self.blob_ok:
                continue
            loc = self.dst.index.lookup(bid)
            if loc is not None:
                by_pack.setdefault(loc.pack_id, []).append(
                    IndexEntry(bid, loc.type, loc.offset, loc.length, loc.raw_length)
                )
        for pid, entries in sorted(by_pack.items()):
            try:
                data = self.dst.load_pack(pid.hex())
            except ObjectNotFound:
                self.blob_ok.update((e.blob_id, False) for e in entries)
                continue
            for e, payload, _ in verify_blobs(self.dst, pid.hex(), data, entries):
                self.blob_ok[e.blob_id] = payload is not None

    # -- tree walk
    def _load(self, repo: Repository, tid: bytes) -> tuple[list[Node] | None, str]:
        try:
            return repo.load_tree(tid).nodes, ""
        except (CorruptObject, ObjectNotFound) as e:
            return None, str(e)

    def walk(self, v: SnapshotVerdict, a_root: bytes, b_root: bytes) -> None:
        seen: set[tuple[bytes, bytes]] = set()
        stack: list[tuple[bytes, bytes, bytes]] = [(b"", a_root, b_root)]
        while stack and not v.full:
            path, a_tid, b_tid = stack.pop()
            if (a_tid, b_tid) in seen:
                continue  # the same pair compared already (hostile DAGs cannot blow up)
            seen.add((a_tid, b_tid))
            if self.shared and a_tid == b_tid:
                continue  # same id: same tree (B's blobs are checked apart)
            a_nodes, why = self._load(self.src, a_tid)
            if a_nodes is None:
                v.differ(path, f"tree cannot be read in the source: {why}")
                continue
            b_nodes, why = self._load(self.dst, b_tid)
            if b_nodes is None:
                v.differ(path, f"tree cannot be read in the mirror: {why}")
                continue
            a_map, a_bad = _usable(a_nodes)
            b_map, b_bad = _usable(b_nodes)
            v.skipped_entries += len(b_bad)
            if len(a_bad) != len(b_bad):
                v.differ(path, f"{len(a_bad)} invalid entries in the source, {len(b_bad)} in the mirror")
            subdirs = []
            for name in sorted(a_map.keys() | b_map.keys()):
                p = path + b"/" + name
                a, b = a_map.get(name), b_map.get(name)
                if b is None:
                    v.differ(p, "missing in the mirror")
                elif a is None:
                    v.differ(p, "not in the source")
                else:
                    what = node_difference(a, b)
                    if what:
                        v.differ(p, what)
                    elif a.type == DIR:
                        subdirs.append((p, a.subtree, b.subtree))
                    elif a.type == FILE:
                        what = self.compare_content(v, a, b)
                        if what:
                            v.differ(p, what)
                if v.full:
                    break
            stack.extend(reversed(subdirs))

    def compare_content(self, v: SnapshotVerdict, a: Node, b: Node) -> str:
        if self.shared and a.content == b.content:
            return ""  # same blob ids in the same order: same bytes (B's copies are checked apart)
        a_hash, a_len, why = self._digest(self.src, a, "source")
        if why:
            return why
        b_hash, b_len, why = self._digest(self.dst, b, "mirror")
        if why:
            return why
        v.files_compared += 1
        v.bytes_compared += a_len
        if a_len != b_len:
            return f"content differs (size {a_len} in the source, {b_len} in the mirror)"
        if a_hash != b_hash:
            return "content differs"
        return ""

    def _digest(self, repo: Repository, node: Node, where: str) -> tuple[bytes, int, str]:
        """Running hash of a file's plaintext, its length, or why it cannot be read."""
        h = hashlib.blake2b(digest_size=32)
        n = 0
        c = node.content
        if len(c) % ID_LEN:
            return b"", 0, f"content list is malformed in the {where}"
        for i in range(0, len(c), ID_LEN):
            bid = c[i : i + ID_LEN]
            try:
                data = repo.load_blob(bid)
            except (CorruptObject, ObjectNotFound) as e:
                return b"", 0, f"content cannot be read in the {where}: {e}"
            if self.read_data and repo is self.dst:
                self.blob_ok[bid] = True
            h.update(data)
            n += len(data)
        return h.digest(), n, ""


def _usable(nodes: list[Node]) -> tuple[dict[bytes, Node], list[tuple[bytes, str]]]:
    """name -> entry of what valid_nodes lets through, and the skipped (name, reason)."""
    bad: list[tuple[bytes, str]] = []
    good = {n.name: n for n in valid_nodes(nodes, lambda n, why: bad.append((n.name, why)))}
    return good, bad


def node_difference(a: Node, b: Node) -> str:
    """Which restored metadata of two entries of the same name differs ("" when none does)."""
    if a.type != b.type:
        return f"type {a.type} in the source, {b.type} in the mirror"
    diffs = []
    if a.mode != b.mode:
        diffs.append(f"mode {a.mode:o} != {b.mode:o}")
    if (a.uid, a.gid, a.user, a.group) != (b.uid, b.gid, b.user, b.group):
        diffs.append("owner")
    if a.mtime_ns != b.mtime_ns:
        diffs.append("mtime")
    if a.type == FILE and a.size != b.size:
        diffs.append(f"size {a.size} != {b.size}")
    if a.type == SYMLINK and a.target != b.target:
        diffs.append("symlink target")
    if a.type in (CHARDEV, BLOCKDEV) and a.rdev != b.rdev:
        diffs.append("device number")
    if a.xattrs != b.xattrs:
        diffs.append("xattrs")
    return ", ".join(diffs) + " differ" if diffs else ""


def mirror_verify(src: Repository, dst: Repository, read_data: bool = False) -> MirrorVerifyReport:
    """Prove, for each snapshot of B (`dst`) mirrored from A (`src`), that it restores the same tree
    as its original; see the module docstring. Indexes are loaded here unless the caller has."""
    _ensure_index(src)
    _ensure_index(dst)
    ver = _Verifier(src, dst, read_data)
    rep = MirrorVerifyReport(src.config.id, dst.config.id, read_data, ver.shared)
    a_refs = {r.id: r for r in list_snapshots(src, include_forgotten=True)}
    for ref in list_snapshots(dst):
        o = origin_of(ref.snapshot)
        if o is None:
            rep.no_origin += 1
            continue
        if o[0] != src.config.id:
            rep.other_origin += 1
            continue
        a = a_refs.get(o[1])
        if a is None:
            rep.snapshots.append(SnapshotVerdict(ref.id, o[1], status=ORIGIN_MISSING))
            continue
        rep.snapshots.append(ver.verify(ref, a.snapshot, o[1]))  # I/O errors propagate: they prove nothing
    return rep
