"""Read-only views as results that render themselves: snapshots, ls, diff, find, cat.

Listings stream: `to_json()` / `to_text()` are generators that walk the trees as they are printed,
and an invalid entry the walker skips becomes an error line where it was met; `exit_code` (1 when
one was skipped) is final once the listing was rendered. They take no lock (reads only; see
docs/design.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from cermin.engine.results import Line, answer, error, error_json, fail, note, warning, warning_json
from cermin.errors import EXIT_FATAL, ObjectNotFound, UsageError
from cermin.repo.repository import Repository
from cermin.util import display_path, fmt_bytes, plural


def abs_paths(paths) -> tuple[bytes, ...]:
    """Snapshot path filters as absolute, normalised bytes."""
    return tuple(os.path.normpath(os.path.abspath(os.fsencode(p))) for p in paths)


# ---- snapshots -------------------------------------------------------------------------------
class SnapshotList:
    exit_code = 0

    def __init__(
        self, refs, hidden: list[str], show_forgotten: bool, warnings: list[str], verdicts: dict | None = None
    ) -> None:
        self.refs, self.hidden, self.show_forgotten, self.warnings = refs, hidden, show_forgotten, warnings
        self.verdicts = verdicts or {}  # snapshot id -> guard Verdict (effective)

    def to_json(self) -> list[dict]:
        from cermin.repo.snapshots import snapshot_json

        snaps = []
        for r in self.refs:
            d = snapshot_json(r)
            o = _origin(r.snapshot)
            d["origin"] = {"repository": o[0], "snapshot": o[1]} if o else None
            v = self.verdicts.get(r.id)
            d["guard"] = v.to_json() if v is not None else None
            snaps.append(d)
        return [
            *map(warning_json, self.warnings),
            {"message_type": "snapshots", "snapshots": snaps, "forgotten": len(self.hidden)},
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [*map(warning, self.warnings)]
        lines.append(answer(f"{'ID':<10}{'Time':<21}{'Host':<16}{'Tags':<16}{'Guard':<11}{'Size':>12}  Paths"))
        for r in self.refs:
            s = r.snapshot
            size = fmt_bytes(s.summary.total_bytes) if s.summary else "?"
            flag = " (incomplete)" if s.incomplete else ""
            flag += " (dated in the future: not trusted)" if r.future else ""
            flag += " (forgotten)" if r.forgotten else ""
            if (o := _origin(s)) is not None:  # a mirrored snapshot: where it came from
                flag += f" <- {o[1][:8]}" + (f" (from repository {_shown(o[0])})" if verbose else "")
            paths_txt = ", ".join(p.decode("utf-8", "backslashreplace") for p in s.paths)
            v = self.verdicts.get(r.id)
            shown = "?" if v is None else "-" if v.verdict == "unknown" else v.verdict
            shown += "*" if v is not None and v.acks else "^" if v is not None and v.inherited_from else ""
            lines.append(
                answer(
                    f"{r.short_id:<10}{s.time[:19].replace('T', ' '):<21}{s.hostname[:15]:<16}"
                    f"{','.join(s.tags)[:15]:<16}{shown:<11}{size:>12}  {paths_txt}{flag}"
                )
            )
        lines.append(note(plural(len(self.refs), "snapshot")))
        flagged = [r for r in self.refs if (v := self.verdicts.get(r.id)) is not None and v.alarm]
        if flagged:
            lines.append(
                warning(
                    f"guard: {plural(len(flagged), 'snapshot')} suspicious or infected; `cermin guard report ID` "
                    "explains each, `restore last-clean` picks the newest clean one"
                )
            )
            if any(self.verdicts[r.id].inherited_from for r in flagged):
                lines.append(note("^: taken after an unacknowledged alarm (it may still hold what that alarm found)"))
        if self.hidden:
            shown = "listed above" if self.show_forgotten else "not listed; --forgotten shows them"
            n = plural(len(self.hidden), "snapshot")
            lines.append(note(f"{n} marked forgotten, kept until their Object Lock lapses ({shown})"))
        return lines


def _origin(snap) -> tuple[str, str] | None:
    """(source repository id, source snapshot id) of a mirrored snapshot, validated as `mirror
    status` does (engine/mirrorstatus.py), or None."""
    from cermin.engine.mirrorstatus import origin_of

    return origin_of(snap)


def _shown(text: str) -> str:
    from cermin.engine.mirrorstatus import _text

    return _text(text, 64)


def snapshots(repo: Repository, hosts=(), tags=(), paths=(), latest: int = 0, forgotten: bool = False) -> SnapshotList:
    """Snapshots matching the filters, oldest first (the newest `latest` only, when given)."""
    from cermin.repo.snapshots import list_snapshots

    warnings: list[str] = []

    def unreadable(names):
        shown = ", ".join(n[:8] for n in names)
        warnings.append(f"unreadable, left out: {plural(len(names), 'snapshot file')} ({shown}); run `cermin check`")

    def foreign(names):
        shown = ", ".join(n[:8] for n in names)
        warnings.append(
            f"failing authentication though named by their content: {plural(len(names), 'snapshot file')} "
            f"({shown}), planted without the repository key; ignored"
        )

    hidden: list[str] = []
    refs = list_snapshots(
        repo,
        tuple(hosts),
        tuple(tags),
        abs_paths(paths),
        on_unreadable=unreadable,
        on_foreign=foreign,
        include_forgotten=forgotten,
        on_forgotten=hidden.extend,
    )
    from cermin.guard.verdict import effective_verdicts

    shown = refs[-latest:] if latest else refs
    return SnapshotList(shown, hidden, forgotten, warnings, effective_verdicts(repo, refs))


# ---- listings that stream ----------------------------------------------------------------------
class _Listing:
    """A streamed listing: subclasses yield ('json', dict) / ('text', Line) items from `_items`."""

    def __init__(self) -> None:
        self.bad: list[str] = []
        self._seen = 0

    def on_bad(self, dir_path, node, why) -> None:
        from cermin.engine.treewalk import bad_entry_message

        self.bad.append(bad_entry_message(dir_path, node, why))

    def _new_bad(self) -> list[str]:
        new, self._seen = self.bad[self._seen :], len(self.bad)
        return new

    @property
    def exit_code(self) -> int:
        return EXIT_FATAL if self.bad else 0

    def to_json(self) -> Iterator[dict]:
        self._seen = 0
        for item in self._items(True, 0):
            yield from map(error_json, self._new_bad())
            yield item
        yield from map(error_json, self._new_bad())

    def to_text(self, verbose: int = 0) -> Iterator[Line]:
        self._seen = 0
        for item in self._items(False, verbose):
            yield from map(error, self._new_bad())
            yield item
        yield from map(error, self._new_bad())
        if self.bad:
            yield fail(f"{len(self.bad)} invalid entries skipped; run `cermin check`")

    def _items(self, as_json: bool, verbose: int) -> Iterator:
        raise NotImplementedError


class Ls(_Listing):
    def __init__(self, repo: Repository, ref, path: str, recursive: bool, long: bool) -> None:
        super().__init__()
        self.repo, self.ref, self.path, self.recursive, self.long = repo, ref, os.fsencode(path), recursive, long

    def _items(self, as_json: bool, verbose: int) -> Iterator:
        from cermin.engine.treewalk import find_node, node_json, walk
        from cermin.format.records import DIR

        node = find_node(self.repo, self.ref.snapshot.tree, self.path)
        base = b"/" + b"/".join(c for c in self.path.split(b"/") if c)
        base = b"" if base == b"/" else base
        if node.type == DIR:
            entries = walk(self.repo, node.subtree, base, recursive=self.recursive, on_bad=self.on_bad)
        else:
            entries = iter([(base, node)])
        for p, n in entries:
            if as_json:
                yield {"message_type": "node", "snapshot": self.ref.id, **node_json(p, n)}
            elif self.long:
                d = node_json(p, n)
                yield answer(
                    f"{d['permissions']} {n.user or n.uid:>8} {n.group or n.gid:>8} {n.size:>12} "
                    f"{d['mtime'][:19].replace('T', ' ')} {display_path(p)}"
                )
            else:
                yield answer(display_path(p))


def ls(repo: Repository, snapshot: str, path: str = "/", recursive: bool = False, long: bool = False) -> Ls:
    from cermin.guard.lastclean import resolve_snapshot

    return Ls(repo, resolve_snapshot(repo, snapshot), path, recursive, long)


class Diff(_Listing):
    def __init__(self, repo: Repository, a, b, metadata: bool) -> None:
        super().__init__()
        self.repo, self.a, self.b, self.metadata = repo, a, b, metadata

    def _items(self, as_json: bool, verbose: int) -> Iterator:
        from cermin.engine.treewalk import diff_trees

        counts = {"+": 0, "-": 0, "M": 0, "T": 0, "U": 0}
        changes = diff_trees(self.repo, self.a.snapshot.tree, self.b.snapshot.tree, on_bad=self.on_bad)
        for change, path, old, new in changes:
            counts[change] += 1
            if change == "U" and not self.metadata:
                continue
            suffix = "/" if (new or old).type == "dir" else ""
            if as_json:
                yield {"message_type": "change", "path": display_path(path) + suffix, "modifier": change}
            else:
                yield answer(f"{change:<5}{display_path(path)}{suffix}")
        if as_json:
            yield {
                "message_type": "statistics",
                "source_snapshot": self.a.id,
                "target_snapshot": self.b.id,
                "added": counts["+"],
                "removed": counts["-"],
                "modified": counts["M"],
                "type_changed": counts["T"],
                "metadata_changed": counts["U"],
            }
        else:
            yield note(
                f"\nadded {counts['+']}, removed {counts['-']}, modified {counts['M']}, "
                f"type changed {counts['T']}, metadata changed {counts['U']}"
            )


def diff(repo: Repository, snapshot1: str, snapshot2: str, metadata: bool = False) -> Diff:
    from cermin.guard.lastclean import resolve_snapshot as resolve

    return Diff(repo, resolve(repo, snapshot1), resolve(repo, snapshot2), metadata)


class Find(_Listing):
    def __init__(self, repo: Repository, refs, patterns: list[str]) -> None:
        super().__init__()
        self.repo, self.refs, self.patterns = repo, refs, patterns

    def _items(self, as_json: bool, verbose: int) -> Iterator:
        from cermin.engine.treewalk import find_in_tree, node_json

        total = 0
        for ref in self.refs:
            for p, n in find_in_tree(self.repo, ref.snapshot.tree, self.patterns, self.on_bad):
                total += 1
                if as_json:
                    yield {"message_type": "match", "snapshot": ref.id, **node_json(p, n)}
                else:
                    yield answer(f"{ref.short_id}  {n.size:>12}  {display_path(p)}")
        if not as_json:
            yield note(f"{plural(total, 'match', 'matches')} in {plural(len(self.refs), 'snapshot')}")


def find(repo: Repository, patterns: list[str], snapshot_ids=(), hosts=(), tags=(), paths=()) -> Find:
    """Files whose name (or path, for a pattern with a '/') matches a glob, in the given snapshots
    (default: those matching the filters)."""
    from cermin.repo.snapshots import list_snapshots, resolve

    if snapshot_ids:
        refs = [resolve(repo, s) for s in snapshot_ids]
    else:
        refs = list_snapshots(repo, tuple(hosts), tuple(tags), abs_paths(paths))
    return Find(repo, refs, list(patterns))


# ---- cat -------------------------------------------------------------------------------------
class Cat:
    """One repository object as a JSON document (indented in text mode, one line with --json)."""

    exit_code = 0

    def __init__(self, obj) -> None:
        self.obj = obj

    def to_json(self) -> list:
        return [json.dumps(self.obj)]  # the document itself, in its own layout (no message_type)

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [answer(json.dumps(self.obj, indent=2))]


def _bad_id(what: str, object_id: str) -> ObjectNotFound:
    """A malformed id names no object: exit 1, like an unknown snapshot id in every other command."""
    return ObjectNotFound(f"no {what} with id {object_id!r} (expected 64 hex digits)")


def _is_hex_id(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s.lower())


def _tree_id(repo: Repository, ref: str) -> bytes:
    from cermin.repo import snapshots

    if len(ref) == 64:
        if not _is_hex_id(ref):
            raise _bad_id("tree", ref)
        return bytes.fromhex(ref)
    return snapshots.resolve(repo, ref).snapshot.tree  # a snapshot id gives its root tree


def cat(repo: Repository, what: str, object_id: str | None = None) -> Cat:
    """config, snapshot ID, tree ID (or snapshot), index ID, key ID, blob ID. Trees and blobs need the index."""
    from cermin.backend.base import Kind
    from cermin.format import records
    from cermin.repo import snapshots

    if what == "config":
        c, s = repo.config, repo.secrets
        chunker = {"min": s.chunker_min, "avg": s.chunker_avg, "max": s.chunker_max}
        obj = {"version": c.version, "id": c.id, "created": c.created, "chunker": chunker}
        return Cat(obj | {"pack_size": s.pack_size, "compression_level": s.compression_level})
    if not object_id:
        raise UsageError(f"cat {what} needs an ID")
    if what in ("index", "blob") and not _is_hex_id(object_id):
        raise _bad_id(what, object_id)
    if what == "snapshot":
        return Cat(snapshots.snapshot_json(snapshots.resolve(repo, object_id)))
    if what == "tree":
        from cermin.engine.treewalk import node_json

        tid = _tree_id(repo, object_id)
        return Cat({"id": tid.hex(), "nodes": [node_json(b"/" + n.name, n) for n in repo.load_tree(tid).nodes]})
    if what == "index":
        from cermin.format import index as fmt_index

        idx = records.index_decoder.decode(repo.load_object(Kind.INDEX, object_id))
        packs = []
        for p in idx.packs:
            entries = fmt_index.iter_entries(p.blobs)
            blobs = [
                {"id": b.hex(), "type": t, "offset": o, "length": ln, "raw_length": r} for b, t, o, ln, r in entries
            ]
            packs.append({"id": p.id.hex(), "blobs": blobs})
        return Cat({"packs": packs})
    if what == "key":
        from cermin.repo.keyops import resolve_key

        return Cat(json.loads(repo.backend.load(Kind.KEY, resolve_key(repo, object_id))))
    data = repo.load_blob(bytes.fromhex(object_id))
    return Cat({"id": object_id, "length": len(data), "text": display_path(data[:4096])})
