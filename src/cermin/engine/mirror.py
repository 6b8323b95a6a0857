"""The tenant mirror: copy snapshots of repository A, with everything they reach, into repository B.

A and B have their own master keys and passwords. Every blob is authenticated on read from A
(AEAD with A's keys, its id over the content, within its declared length) and encrypted anew for B.
Nothing is ever written to A, and nothing is ever deleted in B (B has its own retention).

Two ways B can name blobs (FORMAT.md §2):
- B made with `init --copy-chunker-params-from A` shares A's blob-id key and chunker parameters:
  blobs keep their ids, only those B's index lacks travel (through `repack`), trees are copied as
  they are;
- any other B: each file's data is read from A, cut again with B's chunker and stored under B's ids,
  and trees are rewritten bottom-up with B's ids (slower: every file of a copied snapshot is read
  from A; no deduplication between A's ids and B's).

Order, for crash safety: all blobs of a snapshot go through B's BlobSaver, `flush()` makes them
durable (packs, then index files), and only then is B's snapshot written — a copy of A's record
with every field kept and `extra["origin"] = {"repository": A's id, "snapshot": A's snapshot id}`.
A rerun after an interruption adopts B's unindexed packs (`adopt_packs`) and skips the snapshots B
already has, so it re-sends at most the packs that were not finished.

A is not trusted: a planted or damaged snapshot, tree or blob of A is skipped and reported (the
snapshot that needs it is not written to B), never copied. Every run ends with a `mirror_run` aux
record in B (FORMAT.md §10a) that `mirror status` reads from B alone.

Guard evidence (aux records of A: `guard_mark`, `guard_ack`, `guard_scan`; docs/mirror.md "Guard
verdicts through a mirror") travels too, so B's effective verdicts match A's:
- marks (time windows, no target) are copied first, before any snapshot: a mark only ever raises a
  verdict, so B never holds a copy that A's marks flag while B's do not;
- after the snapshots, records naming a snapshot (`target`) are copied when B has a copy of it, with
  `target` translated to the copy's id (B's `extra.origin`); those that raise a verdict first, those
  that can lower one (acks, scans that report no alarm) last and only with `copy_acks` — A may be in
  an attacker's hands, and an ack written there must not make B's copies count as clean;
- each copy keeps the record's type, `time` (verdict.py orders marks and acks by it, not by storage
  time, so a copy orders exactly as its original) and data, and adds `data["origin"] = {"repository":
  A's id, "aux": the record's name in A}`: a rerun copies only what B lacks;
- every record is validated as verdict.py would read it; a damaged, foreign, future-dated or
  malformed one is skipped and reported, never copied, and never stops the run;
- a mark of A that would close an open mark B holds of its own (the same `from`) is withheld.
"""

from __future__ import annotations

import io
import string
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import msgspec

from cermin.backend.base import Kind
from cermin.backend.verifying import VerifyingBackend
from cermin.engine.mirrorresult import MirrorOptions, MirrorResult
from cermin.engine.progress import Phases, Reporter
from cermin.errors import CerminError, CorruptObject, ObjectNotFound, StoredDamaged
from cermin.format import crypto, pack, records
from cermin.format.names import escape_name
from cermin.format.records import DIR, FILE, ID_LEN, AuxRecord, Snapshot, Tree
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver
from cermin.repo.snapshots import CLOCK_SKEW, SnapshotRef, aux_records, list_snapshots, resolve, timestamp
from cermin.util import now_rfc3339, plural

AUX_MIRROR_RUN = "mirror_run"
# guard evidence (guard/verdict.py, FORMAT.md §10a): marks are time windows, the others name a snapshot
EVIDENCE_MARK = "guard_mark"
EVIDENCE_ACK = "guard_ack"
EVIDENCE_TARGETED = (EVIDENCE_ACK, "guard_scan")
EVIDENCE_TYPES = (EVIDENCE_MARK, *EVIDENCE_TARGETED)
REJECTED_SAMPLE = 20  # rejected source records named in the result (all are counted)


def evidence_origin_chain(data, limit: int = 32) -> list[tuple[str, str]]:
    """Where a guard record copied by a mirror came from, nearest first: (repository id, aux name),
    then that one's upstream. Malformed links end the chain."""
    out: list[tuple[str, str]] = []
    o = data.get("origin") if isinstance(data, dict) else None
    while isinstance(o, dict) and len(out) < limit:
        repo, name = o.get("repository"), o.get("aux")
        if not isinstance(repo, str) or not isinstance(name, str):
            break
        out.append((repo, name))
        o = o.get("upstream")
    return out


def _snapshot_id(s) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(c in string.hexdigits for c in s)


def strip_credentials(location: str) -> str:
    """A repository location fit for a record: no user:password@, no query string or fragment."""
    prefix = ""
    rest = location
    if rest.startswith("s3:"):
        prefix, rest = "s3:", rest[3:]
    try:
        u = urlsplit(rest)
    except ValueError:
        return prefix + rest.split("@")[-1]
    if not u.scheme or not u.netloc:
        return location
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = u.port
    except ValueError:
        port = None
    netloc = host + (f":{port}" if port else "")
    return prefix + urlunsplit((u.scheme, netloc, u.path, "", ""))


def origin_of(snap: Snapshot) -> tuple[str, str] | None:
    o = snap.extra.get("origin") if isinstance(snap.extra, dict) else None
    if isinstance(o, dict) and isinstance(o.get("repository"), str) and isinstance(o.get("snapshot"), str):
        return o["repository"], o["snapshot"]
    return None


def origin_chain(snap: Snapshot, limit: int = 32) -> list[tuple[str, str]]:
    """Where a snapshot came from, nearest first: its origin, that one's upstream, ... (a mirror of
    a mirror). Malformed links end the chain."""
    out: list[tuple[str, str]] = []
    o = snap.extra.get("origin") if isinstance(snap.extra, dict) else None
    while isinstance(o, dict) and len(out) < limit:
        repo, sid = o.get("repository"), o.get("snapshot")
        if not isinstance(repo, str) or not isinstance(sid, str):
            break
        out.append((repo, sid))
        o = o.get("upstream")
    return out


class _BlobStream(io.RawIOBase):
    """A file's data read blob by blob from the source (each one verified), for re-chunking."""

    def __init__(self, src: Repository, ids: list[bytes]) -> None:
        self.src = src
        self.ids = iter(ids)
        self.buf = b""
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self.pos >= len(self.buf):
            bid = next(self.ids, None)
            if bid is None:
                return 0
            self.buf, self.pos = self.src.load_blob(bid, pack.DATA), 0
        n = min(len(b), len(self.buf) - self.pos)
        b[:n] = self.buf[self.pos : self.pos + n]
        self.pos += n
        return n


@dataclass
class _Evidence:
    """Guard records of the source to copy, and what the target already holds."""

    marks: list = field(default_factory=list)  # (aux name, record, parsed Mark)
    targeted: list = field(default_factory=list)  # (aux name, record): naming a snapshot of the source
    copied: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # origin -> targets of its copies in B
    own_open: set[float] = field(default_factory=set)  # starts of open marks B holds of its own
    raising: dict[str, list] = field(default_factory=dict)  # source snapshot id -> records raising its verdict


def _clears(rec: AuxRecord) -> bool:
    """Can this record naming a snapshot lower its verdict? An ack can; so can a scan that reports
    no alarm (a clean scan makes a snapshot without a verdict of its own clean: guard/verdict.py)."""
    return rec.type == EVIDENCE_ACK or rec.data.get("verdict") not in ("suspicious", "infected")


class SourceDamage(CerminError):
    """Something a snapshot of the source needs cannot be read from it (damaged, missing, planted)."""


class Mirror:
    def __init__(self, src: Repository, dst: Repository, opts: MirrorOptions, progress: Reporter | None) -> None:
        self.src = src
        self.dst = dst
        self.opts = opts
        self.phase = Phases(progress, "mirror")
        self.same_ids = src.shares_ids_with(dst)
        self.res = MirrorResult(
            source=strip_credentials(src.backend.location),
            source_id=src.config.id,
            target=strip_credentials(dst.backend.location),
            target_id=dst.config.id,
            same_ids=self.same_ids,
            dry_run=opts.dry_run,
            copy_acks=opts.copy_acks,
        )
        self.saver: BlobSaver | None = None
        self._copies: dict[str, list[str]] = {}  # source snapshot id -> ids of its copies in the target
        self._b_ids: set[str] = set()  # the target's snapshots (tombstoned ones too)
        self._ev = _Evidence()
        self._written: set[str] = set()  # source records copied by this run
        self._view = None
        self._rewritten: dict[bytes, bytes] = {}  # source tree id -> target tree id (this run)
        self._contents: dict[bytes, bytes] = {}  # source file content -> target content (this run)

    # ---- selection ---------------------------------------------------------------------------
    def select(self) -> list[SnapshotRef]:
        src, o = self.src, self.opts

        def planted(names):
            self.warn(f"{plural(len(names), 'planted snapshot file')} in the source ignored ({names[0][:12]}...)")

        def damaged(names):
            n = plural(len(names), "damaged snapshot file")
            self.warn(f"{n} in the source cannot be copied ({names[0][:12]}...)")

        if o.snapshot_ids:
            refs, seen = [], set()
            for sid in o.snapshot_ids:
                ref = resolve(src, sid, o.hosts, o.tags, o.paths)
                if ref.id not in seen:
                    seen.add(ref.id)
                    refs.append(ref)
            refs.sort(key=lambda r: (r.snapshot.time, r.id))
            return refs
        return list_snapshots(src, o.hosts, o.tags, o.paths, on_unreadable=damaged, on_foreign=planted)

    def present_in_target(self) -> tuple[set[tuple[str, str]], set[str]]:
        """(origins of B's snapshots, B's own snapshot ids). Tombstoned ones count as present: a
        snapshot forgotten in B is not copied again. Also notes which of B's snapshots are copies of
        A's (`self._copies`: where A's guard evidence goes)."""
        refs = list_snapshots(self.dst, include_forgotten=True)
        origins = set()
        for r in refs:
            if (o := origin_of(r.snapshot)) is not None:
                origins.add(o)
                if o[0] == self.src.config.id:
                    self._copies.setdefault(o[1].lower(), []).append(r.id)
        self._b_ids = {r.id for r in refs}
        return origins, self._b_ids

    def warn(self, msg: str) -> None:
        self.res.warnings.append(msg)

    # ---- the run -----------------------------------------------------------------------------
    def run(self) -> MirrorResult:
        res = self.res
        src, dst = self.src, self.dst
        self.phase("index", "loading the indexes")
        dst.load_index()
        if not self.opts.dry_run:
            from cermin.repo.indexfiles import adopt_packs

            adopted = adopt_packs(dst, unindexed=self._intact_unindexed())
            res.adopted_packs = len(adopted.packs)
            if adopted.refused:
                self.warn(f"target: {plural(len(adopted.refused), 'pack')} in no index not adopted; run `cermin check`")
        src.load_index()
        refs = self.select()
        res.selected = len(refs)
        origins, own = self.present_in_target()
        todo = []
        for r in refs:
            chain = [(src.config.id, r.id), *origin_chain(r.snapshot)]
            if any(o in origins or (o[0] == dst.config.id and o[1] in own) for o in chain):
                res.present += 1
            else:
                todo.append(r)
        evidence = self.read_evidence()
        if self.opts.dry_run:
            res.to_copy = [r.id for r in todo]
            if self.same_ids:
                res.bytes_copied = self._dry_run_bytes(todo)
            for r in todo:
                self._copies.setdefault(r.id, []).append("")  # would be copied: evidence naming it would be too
            self.copy_marks(evidence)
            self.copy_targeted(evidence)
            return res
        self.copy_marks(evidence)  # first: a mark only raises verdicts, so no copy is ever less flagged than in A
        self.saver = BlobSaver(dst)
        try:
            for i, ref in enumerate(todo):
                self.phase(
                    "snapshots",
                    f"snapshot {ref.short_id} ({i + 1}/{len(todo)})",
                    done=i,
                    total=len(todo),
                    unit="snapshots",
                    bytes_done=res.bytes_copied,
                )
                self.copy_snapshot(ref)
        finally:
            saver, self.saver = self.saver, None
            res.packs_written += saver.packs_written
            res.bytes_uploaded += saver.bytes_uploaded
            saver.close()
        self.phase("snapshots", "done", done=len(todo), total=len(todo), unit="snapshots", bytes_done=res.bytes_copied)
        self.copy_targeted(evidence)
        return res

    def _intact_unindexed(self) -> dict[str, int]:
        """B's unindexed packs (left by an interrupted run) whose bytes hash to their name: a pack
        stored damaged with an intact header would otherwise be adopted and its blobs count as
        present. One read of each such pack (they exist only after an interruption)."""
        from cermin.format import crypto

        out = {}
        for name, size in sorted((self.dst.unindexed_packs or {}).items()):
            try:
                data = self.dst.backend.load(Kind.DATA, name)
            except ObjectNotFound:
                continue
            if crypto.file_id(data) == name:
                out[name] = size
            else:
                self.res.damaged_in_target.append(f"data/{name}")
        return out

    def copy_snapshot(self, ref: SnapshotRef) -> None:
        snap = ref.snapshot
        if not isinstance(snap.tree, bytes) or len(snap.tree) != ID_LEN:
            self.res.skipped[ref.id] = "its root tree id is malformed"
            return
        try:
            tree = self._copy_same(snap.tree) if self.same_ids else self._rewrite(snap.tree)
        except SourceDamage as e:
            self.res.skipped[ref.id] = str(e)
            return
        self.saver.flush()  # everything the snapshot references is durable in B before B names it
        extra = dict(snap.extra) if isinstance(snap.extra, dict) else {}
        origin = {"repository": self.src.config.id, "snapshot": ref.id}
        if (up := extra.get("origin")) is not None:
            origin["upstream"] = up  # A is itself a mirror: keep where it came from
        extra["origin"] = origin
        copy = msgspec.structs.replace(snap, tree=tree, extra=extra)
        bid = self._commit(copy, ref.id)
        self.res.copied.append((ref.id, bid))
        self._copies.setdefault(ref.id, []).append(bid)  # later copies' scans may name it as their parent

    def _commit(self, copy: Snapshot, source_id: str) -> str:
        """Write the copy (as Repository.save_snapshot does) after the source's evidence that raises
        its verdict (alarm scans): the copy is never seen, nor left by an interruption, less flagged
        than its original. Its name is known once sealed, before it is stored; a record naming a
        copy that was then never stored (interrupted, or stored damaged and sealed again) names
        nothing and is harmless."""
        from cermin.repo.repository import SAVE_ATTEMPTS

        plain = records.encode(copy)
        for attempt in range(SAVE_ATTEMPTS):
            data = self.dst.seal_object(Kind.SNAPSHOT, plain)
            name = crypto.file_id(data)
            for ev_name, rec in self._ev.raising.get(source_id, []):
                self._write(ev_name, rec, name)
            try:
                self.dst.backend.save(Kind.SNAPSHOT, name, data)
            except StoredDamaged:
                if attempt + 1 == SAVE_ATTEMPTS:
                    raise
                continue
            return name
        raise AssertionError("unreachable")

    # ---- guard evidence ----------------------------------------------------------------------
    def read_evidence(self) -> _Evidence:
        """A's guard records that B lacks, validated; and what B holds (its copies, its own open marks)."""
        from cermin.guard.verdict import load_evidence

        now = time.time()
        a_id, b_id = self.src.config.id, self.dst.config.id
        ev = self._ev
        own_marks = []
        b_names = set()
        for name, rec in aux_records(self.dst):
            b_names.add(name)
            if rec.type not in EVIDENCE_TYPES:
                continue
            chain = evidence_origin_chain(rec.data)
            if chain:  # the nearest link only: an upstream link is the source's word, not B's
                ev.copied.setdefault(chain[0], set()).add(rec.target)
            if rec.type == EVIDENCE_MARK and (not chain or chain[0][0] != a_id):
                own_marks.append((name, rec))
        ev.own_open = {m.start for m in load_evidence(own_marks, now).marks if m.end is None}
        # a source snapshot copied twice into B (two runs at once) needs its records on both copies:
        # then every record is read, else those B has are not even loaded
        twice = any(len(v) > 1 for v in self._copies.values())

        def present(name: str, rec: AuxRecord | None) -> bool:
            # a copy of this record on a snapshot B holds (or a mark); one naming a copy that was
            # never stored (an interrupted run, see _commit) does not count
            if any(t == "" or t in self._b_ids for t in ev.copied.get((a_id, name), ())):
                return True
            links = evidence_origin_chain(rec.data) if rec is not None else []
            return any(k in ev.copied or (k[0] == b_id and k[1] in b_names) for k in links)

        self.phase("evidence", "reading the source's guard records")
        for name, _ in sorted(self.src.backend.list(Kind.AUX)):
            if not twice and present(name, None):
                self.res.evidence_present += 1
                continue
            try:
                rec = self.src.load_record(Kind.AUX, name, lambda raw: records.decode(raw, AuxRecord))
            except ObjectNotFound:
                continue
            except CorruptObject as e:  # damaged or foreign (planted); an I/O error stops the run
                self._reject(name, f"unreadable: {e}")
                continue
            if rec.type not in EVIDENCE_TYPES:
                continue
            why = self._invalid(name, rec, now)
            if why:
                self._reject(name, why)
            elif rec.type == EVIDENCE_MARK:
                if present(name, rec):
                    self.res.evidence_present += 1
                else:
                    ev.marks.append((name, rec, load_evidence([(name, rec)], now).marks[0]))
            elif not twice and present(name, rec):
                self.res.evidence_present += 1
            else:  # copy_targeted sees which copies of its snapshot lack it
                ev.targeted.append((name, rec))
                if not _clears(rec):
                    ev.raising.setdefault(rec.target.lower(), []).append((name, rec))
        return ev

    def _reject(self, name: str, why: str) -> None:
        self.res.evidence_rejected += 1
        if len(self.res.evidence_rejected_sample) < REJECTED_SAMPLE:
            self.res.evidence_rejected_sample[name] = why

    @staticmethod
    def _invalid(name: str, rec: AuxRecord, now: float) -> str:
        """Why a guard record of the source is not copied ("" when it is valid evidence). Marks and
        acks must parse as guard/verdict.py parses them; a record naming a snapshot needs a
        snapshot id; every one a date within the clock-skew allowance (a future-dated record may be
        copied by a later run, once it is no longer in the future)."""
        from cermin.guard.verdict import load_evidence

        t = timestamp(rec.time) if isinstance(rec.time, str) else None
        if t is None:
            return "its time does not parse"
        if t > now + CLOCK_SKEW:
            return "dated in the future"
        if not isinstance(rec.data, dict):
            return "its data is not a map"
        if rec.type == EVIDENCE_MARK:
            return "" if load_evidence([(name, rec)], now).marks else "not a valid time window"
        if not _snapshot_id(rec.target):
            return "its target is not a snapshot id"
        ev = load_evidence([(name, rec)], now)
        if rec.type == EVIDENCE_ACK and not ev.acks:
            return "not a valid acknowledgement"
        if rec.type != EVIDENCE_ACK and hasattr(ev, "scans") and not ev.scans:
            return "not a valid scan record"
        return ""

    def copy_marks(self, ev: _Evidence) -> None:
        for name, rec, mark in sorted(ev.marks, key=lambda x: (x[2].recorded, x[0])):
            if mark.end is not None and mark.start in ev.own_open:
                self.res.marks_withheld += 1  # it would close an alarm B opened itself
                continue
            self._write(name, rec, "")

    def copy_targeted(self, ev: _Evidence) -> None:
        """Records naming a snapshot, onto every copy of it in B: those that can only raise a verdict
        first, those that can lower one last (so an interruption never leaves the clearing half)."""
        for name, rec in sorted(ev.targeted, key=lambda x: (_clears(x[1]), timestamp(x[1].time), x[0])):
            targets = self._copies.get(rec.target.lower(), [])
            have = ev.copied.get((self.src.config.id, name), set())
            todo = [t for t in targets if t not in have]
            if targets and not todo:
                self.res.evidence_present += name not in self._written
                continue
            if _clears(rec) and not self.opts.copy_acks:
                self.res.evidence_withheld += 1
                continue
            if not targets:
                self.res.evidence_waiting += 1
                continue
            for t in todo:
                self._write(name, rec, t)

    def _write(self, name: str, rec: AuxRecord, target: str) -> None:
        """A copy of the source's record `name` in B: type, time and data kept, `target` (a snapshot
        of B, or "" for a mark) and `data["origin"]` set."""
        copied = self.res.evidence_copied
        if name not in self._written:
            copied[rec.type] = copied.get(rec.type, 0) + 1
        self._written.add(name)
        self._ev.copied.setdefault((self.src.config.id, name), set()).add(target)
        if self.opts.dry_run:
            return
        data = dict(rec.data)
        if _snapshot_id(data.get("parent")):  # a scan's parent: a snapshot id of the source too
            data["parent"] = next(iter(self._copies.get(data["parent"].lower(), [])), "")
        origin: dict = {"repository": self.src.config.id, "aux": name}
        if (up := data.get("origin")) is not None:
            origin["upstream"] = up  # the source is itself a mirror: keep where it came from
        data["origin"] = origin
        copy = AuxRecord(type=rec.type, time=rec.time, target=target, data=data)
        self.dst.save_object(Kind.AUX, records.encode(copy))

    # ---- same blob ids: copy what B lacks, as it is ------------------------------------------
    def _copy_same(self, root: bytes) -> bytes:
        from cermin.engine.reach import reach
        from cermin.engine.repack import Repacker, wanted_entries
        from cermin.repo.indexfiles import read_index_view

        r = reach(self.src, [root], tolerate_unreadable=True)
        if r.unreadable:
            tid, why = next(iter(sorted(r.unreadable.items())))
            raise SourceDamage(f"{plural(len(r.unreadable), 'tree')} cannot be read (tree {tid.hex()[:12]}: {why})")
        saver = self.saver
        wanted = {b for b in r.blobs() if b not in saver}
        if not wanted:
            return root
        missing = [b for b in wanted if self.src.index.lookup(b) is None]
        if missing:
            raise SourceDamage(f"{plural(len(missing), 'blob')} missing from the source ({min(missing).hex()[:12]}...)")
        if self._view is None:
            self._view = read_index_view(self.src)
        packs = {self.src.index.lookup(b).pack_id for b in wanted}
        rp = Repacker(self.src, saver)
        for name, entries in wanted_entries(self._view, self.src.index, wanted, sorted(packs)):
            rp.repack(name, entries)
        self.res.blobs_copied += rp.result.blobs_copied
        self.res.bytes_copied += rp.result.bytes_copied
        if rp.result.lost:
            bid, why = min(rp.result.lost.items())
            raise SourceDamage(f"{plural(len(rp.result.lost), 'blob')} cannot be read ({bid.hex()[:12]}: {why})")
        return root

    def _dry_run_bytes(self, refs: list[SnapshotRef]) -> int:
        from cermin.engine.reach import reach

        r = reach(self.src, [x.snapshot.tree for x in refs if len(x.snapshot.tree) == ID_LEN], tolerate_unreadable=True)
        total = 0
        for b in r.blobs():
            if b not in self.dst.index:
                loc = self.src.index.lookup(b)
                total += loc.raw_length if loc is not None else 0
        return total

    # ---- other blob ids: re-chunk files, rewrite trees bottom-up -----------------------------
    def _save(self, blob_type: int, data: bytes) -> bytes:
        bid = self.dst.id_of(blob_type, data)
        r = self.saver.save(blob_type, bid, data)
        if r.new:
            self.res.blobs_copied += 1
            self.res.bytes_copied += len(data)
        return bid

    def _load_tree(self, tid: bytes) -> Tree:
        try:
            return self.src.load_tree(tid)
        except (CorruptObject, ObjectNotFound) as e:
            raise SourceDamage(f"tree {tid.hex()[:12]} cannot be read: {e}") from None

    def _rewrite(self, root: bytes) -> bytes:
        """The target id of the source tree `root`, every tree below it rewritten first (iterative:
        any depth)."""
        done = self._rewritten
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tid, ready = stack.pop()
            if tid in done:
                continue
            nodes = self._load_tree(tid).nodes
            if not ready:
                stack.append((tid, True))
                stack.extend((n.subtree, False) for n in nodes if n.type == DIR and n.subtree not in done)
                continue
            out = []
            for n in nodes:
                if n.type == DIR:
                    if n.subtree not in done:
                        raise SourceDamage(f"directory {escape_name(n.name)}: its tree cannot be read")
                    n = msgspec.structs.replace(n, subtree=done[n.subtree])
                elif n.type == FILE and n.content:
                    n = msgspec.structs.replace(n, content=self._rechunk(n.name, n.content))
                out.append(n)
            done[tid] = self._save(pack.TREE, records.encode(Tree(nodes=out)))
        return done[root]

    def _rechunk(self, name: bytes, content: bytes) -> bytes:
        hit = self._contents.get(content)
        if hit is not None:
            return hit
        if len(content) % ID_LEN:
            raise SourceDamage(f"file {escape_name(name)}: malformed content list")
        ids = [content[i : i + ID_LEN] for i in range(0, len(content), ID_LEN)]
        out: list[bytes] = []
        try:
            for ch in self.dst.make_chunker().cut_stream(io.BufferedReader(_BlobStream(self.src, ids), 1 << 20)):
                out.append(self._save(pack.DATA, bytes(ch.data)))
        except (CorruptObject, ObjectNotFound) as e:
            raise SourceDamage(f"file {escape_name(name)}: {e}") from None
        new = b"".join(out)
        self._contents[content] = new
        return new


def write_run_record(src: Repository, dst: Repository, ok: bool, copied: int, nbytes: int, error: str) -> str | None:
    """The `mirror_run` aux record (FORMAT.md §10a); None when it cannot be written (B unreachable)."""
    rec = AuxRecord(
        type=AUX_MIRROR_RUN,
        time=now_rfc3339(),
        target=src.config.id,
        data={
            "ok": ok,
            "snapshots_copied": copied,
            "bytes_copied": nbytes,
            "error": " ".join(error.split())[:500],
            "source": strip_credentials(src.backend.location),
        },
    )
    try:
        return dst.save_object(Kind.AUX, records.encode(rec))
    except Exception:  # noqa: BLE001 - the run's own error is what matters
        return None


def mirror(src: Repository, dst: Repository, opts: MirrorOptions, progress: Reporter | None = None) -> MirrorResult:
    """Copy the selected snapshots of `src` that `dst` lacks (callers hold the locks). Every run that
    writes ends with a `mirror_run` record in `dst`, also when it fails (then the error propagates)."""
    m = Mirror(src, dst, opts, progress)
    plain = dst.backend
    if not opts.dry_run:
        # Everything written to B is read back: a store that acknowledges a write and keeps other
        # bytes (truncated, a flipped bit) must not leave B naming damaged data (backend/verifying.py).
        dst.backend = VerifyingBackend(plain)
    try:
        try:
            res = m.run()
        except BaseException as e:
            if not opts.dry_run:
                msg = str(e) or type(e).__name__
                write_run_record(src, dst, False, len(m.res.copied), m.res.bytes_copied, msg)
            raise
        finally:
            if isinstance(dst.backend, VerifyingBackend):
                m.res.damaged_in_target += [f"{k.value}/{n}" for k, n in dst.backend.damaged]
                dst.backend.damaged.clear()
        if not opts.dry_run:
            err = "; ".join(f"{sid[:8]}: {why}" for sid, why in sorted(res.skipped.items()))
            write_run_record(src, dst, not res.skipped, len(res.copied), res.bytes_copied, err)
    finally:
        dst.backend = plain
    return res
