"""Per-file last clean: `cermin restore --per-file-last-clean SNAP` (docs/guard.md, "Per-file last clean").

Restores, for every path of SNAP, its newest version that no verdict or file-level flag marks, and
says what came from where. `restore --last-clean` throws away every change made after the last clean
snapshot; this keeps the changes the guard has nothing against.

What is searched: SNAP and the older snapshots of its host/paths group, newest first, back to the
*base* — the last clean snapshot before the newest flagged one no newer than SNAP (SNAP itself when
none is flagged; "clean" as in guard/verdict.py `last_clean_of`: clean, or made before the guard) —,
`lookback` more, and further until a trusted snapshot. The oldest snapshot searched is trusted as a
whole: what it holds is not questioned (it is the floor of the search, as the last clean snapshot is
for `--last-clean`).

A version of a file (its content) is judged once, by the snapshot that introduced it — the oldest
searched snapshot holding that content at that path, whose backup read it — against the version
before it. It is *marked* when
- that snapshot is flagged (its effective verdict is suspicious or infected, or it has no verdict
  although the guard judged earlier ones) and either names the path in its verdict, or cannot say
  which paths it means — a mark's time window covers it, its verdict names no paths, or its list
  is full (the backup keeps 100), or it has no verdict at all: then every version it introduced is
  suspect; a new file with a ransom-note name or a ransomware extension is marked too;
- or its fingerprint (Node.extra["g"], guard/observer.py) shows a property of encryption against
  the previous version's: it lost its format's magic and looks like ciphertext, it stopped
  compressing, its head turned from structured to ciphertext-flat. This file-level flag counts in
  any snapshot — a few files encrypted in a snapshot the guard still called clean are caught here —
  except one an operator acknowledged (`guard ack`): nothing it holds is questioned. In a flagged
  snapshot a smaller rise of the ratio counts too (intermittent encryption).
A marked version is passed over for the one before it. A file with no unmarked version in the search
is not restored ("skipped": new in a flagged snapshot and marked, like a ransom note or a renamed
encrypted file). A path that SNAP lacks but an older searched snapshot has, removed in a flagged
snapshot (a renaming encryptor deletes the originals), is brought back at its newest unmarked version
("returned"; not with `removed=False`); what a trusted snapshot removed stays removed.

How: the plan is made directory by directory while the restore walks. A directory that is the same
tree in every searched snapshot is restored as SNAP has it, unread by the plan; any other becomes a
merged tree under a random id that `load_tree` answers (the other ids go to the repository), so the
restore machinery — name validation, no symlink followed, hard links, --verify — is the one of
`restore`. Only one directory's versions are in memory at a time, plus the list of what did not come
from SNAP unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

import msgspec

from cermin.engine.restore import RestoreOptions, RestoreSummary, run_restore
from cermin.engine.results import Line, answer, error, error_json, fail, note
from cermin.engine.treewalk import bad_entry_message, find_node
from cermin.errors import EXIT_FATAL, CerminError, UsageError
from cermin.format.names import valid_nodes
from cermin.format.records import DIR, FILE, Node, Tree
from cermin.guard import policy
from cermin.guard import signals as sig
from cermin.guard.verdict import (
    CLEAN,
    MAX_PATH,
    UNKNOWN,
    Verdict,
    clip,
    effective_verdicts,
    own_verdict,
    pre_guard,
)
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef, group_of, list_snapshots
from cermin.util import display_path, plural

KEPT, OLDER, RETURNED, SKIPPED = "kept", "older", "returned", "skipped"
DEFAULT_LOOKBACK = 3  # snapshots searched beyond the base, for file-level flags in them


@dataclass
class Step:
    """One searched snapshot, judged once."""

    ref: SnapshotRef
    verdict: Verdict
    trusted: bool  # clean (also by an acknowledgement), or made before the guard: its removals stand
    vouched: bool  # clean by an acknowledgement: nothing it holds is questioned
    whole: str  # why every version it introduced is suspect ("" when its verdict names paths)
    named: frozenset[str]  # the display paths its verdict names

    @property
    def short(self) -> str:
        return self.ref.id[:8]


def judge_step(ref: SnapshotRef, v: Verdict, pre_guard_ids: set[str]) -> Step:
    if v.inherited_from:  # what this snapshot changed is judged on its own; the older alarm is searched anyway
        v = dataclasses.replace(v, verdict=v.judged, inherited_from="")
    trusted = v.verdict == CLEAN or ref.id in pre_guard_ids
    # the path lists behind the verdict: the backup's own and each `guard scan`'s, each cut at MAX_PATHS
    lists = [own_verdict(ref.snapshot)[3], *(s.paths for s in getattr(v, "scans", ()))]
    whole = ""
    if not trusted:
        last_ack = v.acks[-1].recorded if v.acks else None
        live = [m for m in v.marks if last_ack is None or m.recorded > last_ack]
        if live:
            whole = f"in the window of a mark ({live[0].reason or 'no reason given'}): all it changed is suspect"
        elif v.verdict == UNKNOWN:
            whole = "no guard verdict although earlier snapshots have one: all it changed is suspect"
        elif not v.paths:
            whole = f"{v.verdict}, its verdict names no paths: all it changed is suspect"
        elif max(map(len, lists)) >= policy.MAX_PATHS:
            whole = f"{v.verdict}, its verdict names {len(v.paths)} paths (maybe not all): all it changed is suspect"
    return Step(ref, v, trusted, v.verdict == CLEAN and bool(v.acks), whole, frozenset(v.paths))


def search_window(repo: Repository, ref: SnapshotRef, lookback: int) -> tuple[list[Step], bool, SnapshotRef | None]:
    """(searched snapshots newest first — SNAP first —, whether older ones exist beyond them, the base).

    The base is the last clean snapshot before the newest flagged one no newer than SNAP (SNAP itself
    when none is flagged): after an attack, backups that find nothing new to complain about are clean
    while they still hold the encrypted files, so a clean SNAP does not end the search."""
    group, key = group_of(ref.snapshot), (ref.snapshot.time, ref.id)
    older = [
        r
        for r in list_snapshots(repo)
        if r.id != ref.id and not r.future and group_of(r.snapshot) == group and (r.snapshot.time, r.id) < key
    ]
    chain = [ref, *sorted(older, key=lambda r: (r.snapshot.time, r.id), reverse=True)]
    verdicts = effective_verdicts(repo, chain)
    pre = {r.id for r in pre_guard(chain, verdicts)}
    steps = [judge_step(r, verdicts[r.id], pre) for r in chain]
    flagged = next((i for i, s in enumerate(steps) if not s.trusted), 0)
    base = next((i for i in range(flagged, len(steps)) if steps[i].trusted), None)
    end = len(chain) - 1
    if base is not None:
        end = min(base + lookback, end)
        while end < len(chain) - 1 and not steps[end].trusted:
            end += 1
    return steps[: end + 1], end < len(chain) - 1, chain[base] if base is not None else None


# ---- file-level flags ---------------------------------------------------------------------------
def fingerprint(node: Node) -> tuple[float, float, str] | None:
    """(stored/raw ratio, head entropy, format kind) of a file version, validated; None without one."""
    g = node.extra.get("g") if isinstance(node.extra, dict) else None
    if not isinstance(g, dict):
        return None
    r, e, k = g.get("r", -1.0), g.get("e", -1.0), g.get("k", "")
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (r, e))
    return (float(r), float(e), k[:20]) if ok and isinstance(k, str) else None


def file_flag(prev: Node, cur: Node, flagged: bool = False) -> str | None:
    """Why `cur` looks like an encryption of `prev` by their fingerprints, or None. `flagged`: the
    snapshot that introduced `cur` is flagged, so a smaller rise of the ratio counts (intermittent
    encryption leaves half the blocks compressible)."""
    a, b = fingerprint(prev), fingerprint(cur)
    if a is None or b is None or b[2]:
        return None  # no fingerprint, or `cur` still announces a format
    (ra, ea, ka), (rb, eb, _) = a, b
    flat = cur.size >= policy.MIN_ENTROPY_BYTES and eb >= policy.HIGH_ENTROPY
    dense = cur.size >= policy.MIN_CIPHER_BYTES and rb >= policy.INCOMPRESSIBLE
    compressed = prev.size >= policy.MIN_CIPHER_BYTES and 0 <= ra <= policy.COMPRESSIBLE
    if ka and (flat or dense):
        return f"lost its {clip(ka, 20)} format and looks like ciphertext"
    if compressed and dense:
        return f"stopped compressing (stored/raw {ra:.2f} -> {rb:.2f})"
    if flagged and compressed and cur.size >= policy.MIN_COMPARE_BYTES and rb - ra >= policy.RATIO_RISE:
        return f"compresses much worse (stored/raw {ra:.2f} -> {rb:.2f})"
    if prev.size >= policy.MIN_ENTROPY_BYTES and 0 <= ea <= policy.LOW_ENTROPY and flat:
        return f"its head turned from structured to ciphertext-like (entropy {ea:.1f} -> {eb:.1f})"
    return None


# ---- the plan -----------------------------------------------------------------------------------
@dataclass
class Choice:
    """An entry that does not come from SNAP unchanged, or that SNAP changed in a flagged snapshot."""

    path: bytes
    action: str  # kept | older | returned | skipped
    source: str | None  # id of the snapshot its node comes from (None: skipped)
    type: str
    reasons: list[str]

    def to_json(self) -> dict:
        d = {"message_type": "per_file", "path": display_path(self.path), "action": self.action}
        d |= {"snapshot": self.source, "type": self.type, "reasons": self.reasons}
        if os.fsencode(d["path"]) != self.path:
            d["path_bytes"] = self.path.hex()
        return d


_BEYOND = object()  # the version before is older than the search: trusted


def _same(a: Node | None, b: Node) -> bool:
    return a is not None and a.type == FILE and a.content == b.content and a.size == b.size


class Planner:
    """Merges each directory's versions in the searched snapshots into the tree to restore, lazily:
    `load_tree` of a merged directory's id computes it (see the module doc)."""

    def __init__(self, repo: Repository, steps: list[Step], beyond: bool, removed: bool = True) -> None:
        self.repo = repo
        self.steps = steps
        self.beyond = beyond
        self.removed = removed
        # a directory with the same tree in every searched snapshot needs no plan: what it holds is
        # held by the floor of the search, which is trusted (or, at the repository's first snapshot,
        # judged new there: only a flagged first snapshot questions it)
        self.floor_trusted = beyond or steps[-1].trusted
        self.pending: dict[bytes, tuple[bytes, list[bytes | None]]] = {}  # merged id -> (path, tree per step)
        self.choices: dict[bytes, Choice] = {}
        self.invalid: list[str] = []  # invalid entries of the trees restored from (restore counts them as errors)

    def root(self) -> bytes:
        """The root tree id to restore: SNAP's own when nothing differs in the search."""
        hist: list[bytes | None] = [s.ref.snapshot.tree for s in self.steps]
        if len(set(hist)) == 1 and self.floor_trusted:
            return hist[0]
        return self._register(b"", hist)

    def _register(self, path: bytes, hist: list[bytes | None]) -> bytes:
        tid = os.urandom(32)  # unguessable: a hostile tree cannot name a merged directory
        self.pending[tid] = (path, hist)
        return tid

    def load_tree(self, tree_id: bytes) -> Tree:
        job = self.pending.get(tree_id)
        if job is None:
            return self.repo.load_tree(tree_id)
        return self._merge(*job)

    # ---- one directory ---------------------------------------------------------------------------
    def _merge(self, path: bytes, hist: list[bytes | None]) -> Tree:
        current = next(i for i, t in enumerate(hist) if t is not None)
        versions: dict[bytes, dict[bytes, Node]] = {}
        for i, tid in enumerate(hist):
            if tid is None or tid in versions:
                continue
            report = None
            if i == current:  # the version restored from: its invalid entries are the restore's errors

                def report(n: Node, why: str) -> None:
                    self.invalid.append(bad_entry_message(path, n, why))

            try:
                nodes = self.repo.load_tree(tid).nodes
            except CerminError as e:  # restore reports it for this directory and goes on
                raise CerminError(f"cannot compare with its version in {self.steps[i].short}: {e}") from None
            versions[tid] = {n.name: n for n in valid_nodes(nodes, report)}
        rows = [versions[t] if t is not None else None for t in hist]
        names = sorted(set().union(*versions.values()))
        out = []
        for name in names:
            node = self._entry(path + b"/" + name, [r.get(name) if r is not None else None for r in rows])
            if node is not None:
                out.append(node)
        return Tree(nodes=out)

    def _entry(self, path: bytes, tl: list[Node | None]) -> Node | None:
        """What to restore at `path`, given its node in each searched snapshot (None: absent there)."""
        start, why = 0, []
        if tl[0] is None:
            start = next(i for i, n in enumerate(tl) if n is not None)
            gone = self.steps[start - 1]  # the snapshot without it, just newer than the newest that has it
            if gone.trusted:
                return None  # removed in a trusted snapshot: stays removed
            why = [f"{gone.short}: removed in this {gone.verdict.verdict} snapshot"]
            if not self.removed:
                self._choose(path, SKIPPED, None, tl[start].type, [*why, "not brought back (--no-removed)"])
                return None
        node = tl[start]
        if node.type == DIR:
            hist = [n.subtree if n is not None and n.type == DIR else None for n in tl]
            if start == 0 and len(set(hist)) == 1 and self.floor_trusted:
                return node  # nothing below it changed in the searched snapshots
            return msgspec.structs.replace(node, subtree=self._register(path, hist))
        if node.type != FILE:
            if start:
                self._choose(path, RETURNED, self.steps[start].ref.id, node.type, why)
            return node
        return self._file(path, tl, start, why)

    def _file(self, path: bytes, tl: list[Node | None], start: int, why: list[str]) -> Node | None:
        n = len(tl)
        i = start
        rejected: list[str] = []
        while True:
            v = tl[i]
            j = i
            while j + 1 < n and _same(tl[j + 1], v):
                j += 1
            intro = self.steps[j]  # the oldest searched snapshot holding this version: it read it
            prev = tl[j + 1] if j + 1 < n else (_BEYOND if self.beyond else None)
            mark = self._mark(path, v, intro, prev)
            if mark is None:
                break
            rejected.append(f"{intro.short}: {mark}")
            if prev is None or prev is _BEYOND or prev.type != FILE:
                before = "no older version" if prev is None else f"before it, a {prev.type}"
                self._choose(path, SKIPPED, None, FILE, [*why, *rejected, f"no clean version ({before})"])
                return None
            i = j + 1
        if i:
            self._choose(path, RETURNED if start else OLDER, self.steps[i].ref.id, FILE, [*why, *rejected])
        elif not intro.trusted:
            what = "new" if prev is None or (prev is not _BEYOND and prev.type != FILE) else "changed"
            reason = f"{intro.short}: {what} in this {intro.verdict.verdict} snapshot, nothing marks it"
            self._choose(path, KEPT, self.steps[0].ref.id, FILE, [reason])
        return tl[i]

    def _mark(self, path: bytes, v: Node, intro: Step, prev) -> str | None:
        """Why this version of `path` is marked (None: it is not)."""
        if prev is _BEYOND or intro.vouched:
            return None
        before = prev if prev is not None and prev.type == FILE else None
        if not intro.trusted:
            if intro.whole:
                return intro.whole
            if clip(display_path(path), MAX_PATH) in intro.named:
                return f"named by its {intro.verdict.verdict} verdict"
            name = sig.basename(path)
            if before is None and (sig.ransom_note_name(name) or sig.extension(name) in sig.RANSOM_EXTENSIONS):
                return f"new in this {intro.verdict.verdict} snapshot with a ransom-note name or extension"
        return file_flag(before, v, flagged=not intro.trusted) if before is not None else None

    def _choose(self, path: bytes, action: str, source: str | None, typ: str, reasons: list[str]) -> None:
        self.choices[path] = Choice(path, action, source, typ, reasons)

    # ---- without restoring ---------------------------------------------------------------------
    def walk(self, root: bytes, subpath: bytes) -> list[str]:
        """Plan every merged directory at and below `subpath` (a dry run); returns errors."""
        errors: list[str] = []
        node = find_node(self, root, subpath)
        stack = [node.subtree] if node.type == DIR else []
        while stack:
            tid = stack.pop()
            if tid not in self.pending:
                continue
            try:
                tree = self.load_tree(tid)
            except CerminError as e:
                errors.append(f"{display_path(self.pending[tid][0] or b'/')}: {e}")
                continue
            stack.extend(n.subtree for n in tree.nodes if n.type == DIR)
        return errors

    def listed(self, subpath: bytes) -> list[Choice]:
        """The choices at and below `subpath`, by path (merging a parent of `subpath` lists its
        siblings too: they are left out)."""
        sub = subpath.rstrip(b"/")
        return [c for p, c in sorted(self.choices.items()) if not sub or p == sub or p.startswith(sub + b"/")]


# ---- the operation ------------------------------------------------------------------------------
@dataclass
class PerFileRestore:
    """What `restore --per-file-last-clean` did (or, dry, would do), and the restore's own summary."""

    snapshot_id: str
    verdict: str  # SNAP's effective verdict
    last_clean: str | None  # the last clean snapshot of SNAP's group no newer than it
    searched: list[tuple[str, str, str]]  # (id, time, effective verdict), newest first
    choices: list[Choice]
    restore: RestoreSummary | None  # None: dry run
    errors: list[str] = field(default_factory=list)  # dry run: directories that could not be planned

    @property
    def exit_code(self) -> int:
        if self.restore is not None:
            return self.restore.exit_code
        return EXIT_FATAL if self.errors else 0

    def count(self, action: str) -> int:
        return sum(1 for c in self.choices if c.action == action)

    def sources(self) -> dict[str, int]:
        """snapshot id -> entries taken from it instead of SNAP's (older and returned ones)."""
        out: dict[str, int] = {}
        for c in self.choices:
            if c.action in (OLDER, RETURNED) and c.source:
                out[c.source] = out.get(c.source, 0) + 1
        return out

    def to_json(self) -> list[dict]:
        summary = {
            "message_type": "per_file_summary",
            "snapshot_id": self.snapshot_id,
            "verdict": self.verdict,
            "last_clean": self.last_clean,
            "searched": [{"id": i, "time": t, "verdict": v} for i, t, v in self.searched],
            "dry_run": self.restore is None,
            **{a: self.count(a) for a in (KEPT, OLDER, RETURNED, SKIPPED)},
            "sources": self.sources(),
        }
        tail = self.restore.to_json() if self.restore is not None else list(map(error_json, self.errors))
        return [*(c.to_json() for c in self.choices), summary, *tail]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = self.restore.to_text(verbose) if self.restore is not None else list(map(error, self.errors))
        when = {i: t[:19].replace("T", " ") for i, t, _ in self.searched}
        base = f"last clean {self.last_clean[:8]}" if self.last_clean else "no clean snapshot before it"
        floor = self.searched[-1][0]
        lines.append(
            answer(
                f"per-file last clean of snapshot {self.snapshot_id[:8]} ({self.verdict}, {base}): searched "
                f"{plural(len(self.searched), 'snapshot')} back to {floor[:8]} ({when[floor]})"
            )
        )
        older, returned, kept, skipped = (self.count(a) for a in (OLDER, RETURNED, KEPT, SKIPPED))
        if not (older or returned or skipped):
            lines.append(answer(f"  nothing marked: every entry as in {self.snapshot_id[:8]}"))
        if older:
            lines.append(answer(f"  {plural(older, 'file')} from an older version (a newer one is marked)"))
        if returned:
            n = plural(returned, "entry", "entries")
            lines.append(answer(f"  {n} brought back (removed in a flagged snapshot)"))
        for sid, n in sorted(self.sources().items(), key=lambda kv: when[kv[0]], reverse=True):
            lines.append(answer(f"    {n} from {sid[:8]} ({when[sid]})"))
        if kept:
            lines.append(
                answer(f"  {plural(kept, 'file')} kept at the newest version: changed in a flagged snapshot, unmarked")
            )
        if skipped:
            lines.append(answer(f"  {plural(skipped, 'entry', 'entries')} not restored: no clean version"))
        lines.append(answer(f"  every other entry as in {self.snapshot_id[:8]}"))
        shown = self.choices if verbose else [c for c in self.choices if c.action == SKIPPED][:20]
        for c in shown:
            src = f" <- {c.source[:8]}" if c.source else ""
            lines.append(answer(f"    {c.action:8} {display_path(c.path)}{src}: {'; '.join(c.reasons)}"))
        if not verbose and (len(shown) < skipped or older or returned or kept):
            lines.append(note("  -v lists every entry above with its source and why"))
        if self.restore is None:
            lines.append(answer("dry run: nothing was restored"))
            if self.errors:
                lines.append(fail(f"{plural(len(self.errors), 'directory', 'directories')} could not be planned"))
        return lines


def per_file_restore(
    repo: Repository,
    ref: SnapshotRef,
    opts: RestoreOptions,
    progress=None,
    lookback: int = DEFAULT_LOOKBACK,
    removed: bool = True,
    dry_run: bool = False,
) -> PerFileRestore:
    """Restore SNAP (`ref`) per file (module doc). Takes no lock and needs the index loaded: the
    caller holds a shared lock (`cermin.ops.commands.restore_per_file`)."""
    if opts.includes or opts.excludes:
        raise UsageError("a per-file restore takes no --include/--exclude: choose a part with SNAPSHOT:PATH")
    if lookback < 0:
        raise UsageError("--lookback must not be negative")
    steps, beyond, base = search_window(repo, ref, lookback)
    plan = Planner(repo, steps, beyond, removed)
    root = plan.root()
    summary, errors = None, []
    if dry_run:
        errors = plan.walk(root, b"/" + b"/".join(c for c in opts.subpath.split(b"/") if c)) + plan.invalid
    else:
        snap = msgspec.structs.replace(ref.snapshot, tree=root)
        summary = run_restore(repo, snap, opts, progress, trees=plan)
        summary.snapshot_id, summary.verify = ref.id, opts.verify
        summary.errors.extend(plan.invalid)
        summary.invalid_entries += len(plan.invalid)
    searched = [(s.ref.id, s.ref.snapshot.time, s.verdict.verdict) for s in steps]
    return PerFileRestore(
        ref.id,
        steps[0].verdict.verdict,
        base.id if base else None,
        searched,
        plan.listed(opts.subpath),
        summary,
        errors,
    )
