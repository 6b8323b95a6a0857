"""Index files as a whole: per-pack views for check/prune/repair, and full index rewrites.

A full rewrite is crash-safe by ordering: the new index files (naming the packs that stay, and
`supersedes` the old files) are written first, the old files are deleted after. A crash in between
leaves both, which only duplicates entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cermin.backend.base import Kind
from cermin.errors import CerminError, CorruptObject, ForeignObject, ObjectLocked, ObjectNotFound
from cermin.format import index as fmt_index
from cermin.format import pack, records
from cermin.format.index import IndexEntry
from cermin.format.records import IndexPack
from cermin.repo.repository import Repository

PACKS_PER_INDEX_FILE = 2000
# Entry bytes per index file, far below pack.MAX_OBJECT_SIZE (what a reader decompresses at most).
ENTRY_BYTES_PER_INDEX_FILE = 64 * 1024 * 1024


@dataclass
class IndexView:
    """Every pack named by any readable index file, with its entries, plus damage found on the way."""

    packs: dict[bytes, bytes] = field(default_factory=dict)  # pack id -> concatenated entries
    files: list[str] = field(default_factory=list)  # readable index files in force
    superseded: list[str] = field(default_factory=list)  # present, but replaced by a file in force
    damaged: dict[str, str] = field(default_factory=dict)  # index file -> error (bytes do not match the name)
    # Index files whose bytes match their name but fail authentication or decoding: planted by
    # someone without the key (a storage credential, a backup token). They index nothing cermin
    # wrote, so nothing waits on them: check names them, prune and repair leave them alone.
    foreign: dict[str, str] = field(default_factory=dict)
    pack_files: dict[bytes, list[str]] = field(default_factory=dict)  # pack id -> index files naming it
    # pack id -> (index file, entries) of every file in force naming it, for the packs two files name
    # with different entries (one of them planted or damaged; `packs` holds the first by name)
    variants: dict[bytes, list[tuple[str, bytes]]] = field(default_factory=dict)

    def entries(self, pack_id: bytes) -> Iterator[IndexEntry]:
        """The IndexEntry records of one pack (none for a pack in no index)."""
        return fmt_index.iter_entries(self.packs.get(pack_id, b""))


def read_index_view(repo: Repository) -> IndexView:
    view = IndexView()
    loaded = []
    for name, _ in sorted(repo.backend.list(Kind.INDEX)):
        try:
            loaded.append((name, repo.load_record(Kind.INDEX, name, records.index_decoder.decode)))
        except ObjectNotFound:
            continue
        except ForeignObject as e:
            view.foreign[name] = str(e)
        except CorruptObject as e:
            view.damaged[name] = str(e)  # proven damage only: an I/O error propagates
    superseded = {s.hex() for _, idx in loaded for s in idx.supersedes}
    for name, idx in loaded:
        if name in superseded:
            view.superseded.append(name)
            continue
        view.files.append(name)
        for p in idx.packs:
            first = view.packs.setdefault(p.id, p.blobs)
            if first != p.blobs or p.id in view.variants:
                if p.id not in view.variants:
                    view.variants[p.id] = [(view.pack_files[p.id][0], first)]
                view.variants[p.id].append((name, p.blobs))
            view.pack_files.setdefault(p.id, []).append(name)
    return view


def expected_pack_size(entries: bytes) -> int:
    """Size a pack must have, from its index entries (every blob of a pack is indexed together)."""
    return pack.pack_size(fmt_index.ENTRY.iter_unpack(entries))  # raw records: same field order as IndexEntry


def write_index(repo: Repository, packs: dict[bytes, bytes], supersedes: list[str]) -> list[str]:
    """Write index files naming exactly `packs`. Only the last one lists `supersedes`: until it is
    written, the old files stay in force, so a crash part-way leaves duplicates, never gaps."""
    names = []
    chunks: list[list[IndexPack]] = [[]]
    size = 0
    for pid, blobs in sorted(packs.items()):
        if chunks[-1] and (len(chunks[-1]) >= PACKS_PER_INDEX_FILE or size + len(blobs) > ENTRY_BYTES_PER_INDEX_FILE):
            chunks.append([])
            size = 0
        chunks[-1].append(IndexPack(pid, blobs))
        size += len(blobs)
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        idx = records.IndexFile(packs=chunk, supersedes=[bytes.fromhex(s) for s in supersedes] if last else [])
        names.append(repo.save_object(Kind.INDEX, records.encode(idx)))
    return names


def replace_index(repo: Repository, packs: dict[bytes, bytes], old_files: list[str]) -> list[str]:
    """New index files first, then remove the old ones (crash-safe order). An old file the storage
    refuses to delete (Object Lock) stays; it is superseded, so readers ignore it."""
    new = write_index(repo, packs, old_files)
    if repo.backend.caps.batch_remove:  # a server with a two-person rule: one request
        old = [(Kind.INDEX, n) for n in old_files if n not in new]
        if old:
            repo.backend.remove_many(old)  # superseded meanwhile: readers ignore them until a second admin approves
        return new
    for name in old_files:
        if name in new:
            continue
        try:
            repo.backend.remove(Kind.INDEX, name)
        except (ObjectNotFound, ObjectLocked):
            pass
    return new


# One ranged read from the end of a pack usually holds its whole header (45 bytes per blob): a
# header fetch is then two requests on an object store (prefix, tail), three only for huge headers.
# A pack no larger than this is read whole, in one request.
HEADER_TAIL_READ = 64 * 1024


def read_pack_header(
    repo: Repository, pack_name: str, size: int | None = None, data: bytes | None = None
) -> list[IndexEntry]:
    """The entries of a pack from its own header, authenticated and validated (format/pack.py).

    `data`: the whole pack, when the caller already holds it (as from `repo.load_pack`, which
    already prefers the version cermin wrote): parsed without I/O. Otherwise only the pack's ends
    are read (its whole bytes when small); on a versioned store, a damaged header is retried on the
    version cermin wrote, in case someone planted another."""
    what = f"pack {pack_name[:12]}"
    if data is not None:
        return pack.parse_header(repo.keys, data, what)
    try:
        return _fetch_pack_header(repo, pack_name, size, what)
    except CorruptObject:
        if not repo.backend.caps.versions:
            raise
        data = repo.backend.load_original(Kind.DATA, pack_name)  # the version cermin wrote, if someone planted another
        return pack.parse_header(repo.keys, data, what)


def _fetch_pack_header(repo: Repository, pack_name: str, size: int | None, what: str) -> list[IndexEntry]:
    load = repo.backend.load
    if size is None:
        size = repo.backend.size(Kind.DATA, pack_name)
    if size < pack.MIN_PACK_SIZE:
        raise CorruptObject(f"{what} is truncated ({size} bytes)")
    if size <= HEADER_TAIL_READ:
        data = load(Kind.DATA, pack_name)
        if len(data) != size:
            raise CorruptObject(f"{what} is shorter than its listed size")
        return pack.parse_header(repo.keys, data, what)
    prefix = load(Kind.DATA, pack_name, 0, pack.PREFIX_LEN)
    tail = load(Kind.DATA, pack_name, size - HEADER_TAIL_READ, HEADER_TAIL_READ)
    if len(prefix) != pack.PREFIX_LEN or len(tail) != HEADER_TAIL_READ:
        raise CorruptObject(f"{what} is shorter than its listed size")
    start, hlen = pack.header_span(size, tail[-pack.TRAILER.size :], what)
    if hlen + pack.TRAILER.size <= len(tail):
        header_ct = memoryview(tail)[len(tail) - pack.TRAILER.size - hlen : -pack.TRAILER.size]
    else:  # bounded by header_span: at most the pack's size
        header_ct = load(Kind.DATA, pack_name, start, hlen)
        if len(header_ct) != hlen:
            raise CorruptObject(f"{what} is shorter than its listed size")
    cipher = pack.pack_cipher(repo.keys, prefix, what)
    return pack.decode_header(cipher, header_ct, start, what)


@dataclass
class Adopted:
    """What `adopt_packs` took over."""

    packs: list[str] = field(default_factory=list)
    blobs: int = 0
    bytes: int = 0  # pack bytes that need not be uploaded again
    refused: dict[str, str] = field(default_factory=dict)  # pack -> why it was left alone
    index_files: list[str] = field(default_factory=list)


def adopt_packs(
    repo: Repository, unindexed: dict[str, int] | None = None, write: bool = True, workers: int = 4
) -> Adopted:
    """Index the packs that storage holds but no index file names: an interrupted backup's packs,
    durable and named by their content, whose index file was never written. A backup calls this
    first, so it deduplicates against them instead of uploading the same blobs again.

    As `repair index` adopts packs, but only these, and only from their own header: authenticated
    with the repository key and validated (read_pack_header: one tail read per pack, never the
    data), and only when the pack has exactly the size its entries imply. Anything else (planted,
    truncated, damaged) is left alone in `refused`: check names it, prune removes it. With `write`
    the adopted packs are named by a new index file BEFORE they enter the in-memory index, so a
    snapshot never depends on a pack no index names. `unindexed`: name -> size, as load_index saw
    it (repo.unindexed_packs); listed here when not given.

    A concurrent backup's finished packs may be adopted too, before that backup indexes them: the
    pack is then named by two index files, which readers merge (harmless). Prune cannot run meanwhile
    (it needs the exclusive lock), so it never deletes a pack while a backup adopts it. Cost: one
    header read per unindexed pack; a refused pack is read again by each backup until prune removes it."""
    if unindexed is None:
        unindexed = repo.unindexed_packs
    if unindexed is None:
        known = {p.hex() for p in repo.index.packs}
        unindexed = {n: size for n, size in repo.backend.list(Kind.DATA) if n not in known}
    res = Adopted()
    todo = []
    for name, size in sorted(unindexed.items()):
        if len(name) != 64 or name.strip("0123456789abcdef"):
            res.refused[name] = "not a pack name"
        else:
            todo.append((name, size))

    def header(item: tuple[str, int]):
        name, size = item
        try:
            return name, size, fmt_index.pack_entries(read_pack_header(repo, name, size)), None
        except CerminError as e:  # damaged or planted, or unreadable now: not adopted this time
            return name, size, None, str(e)

    found: dict[bytes, bytes] = {}
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for name, size, blobs, err in ex.map(header, todo):
            if blobs is None:
                res.refused[name] = err or "unreadable"
            elif expected_pack_size(blobs) != size:
                res.refused[name] = f"pack {name[:12]} has {size} bytes, its header implies {expected_pack_size(blobs)}"
            else:
                found[bytes.fromhex(name)] = blobs
                res.packs.append(name)
                res.blobs += len(blobs) // fmt_index.ENTRY.size
                res.bytes += size
    if found and write:
        res.index_files = write_index(repo, found, [])
    for pid, blobs in found.items():
        repo.index.add_pack(pid, blobs)
    if repo.unindexed_packs is not None:
        repo.unindexed_packs = {n: unindexed[n] for n in res.refused}
    return res


def read_pack_blobs(repo: Repository, pack_name: str, entries) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """Decrypt and verify the given blobs of one pack, reading the whole pack once.

    entries: IndexEntry records. Returns (good: id -> plaintext, bad: id -> reason).
    """
    return pack_blobs(repo, pack_name, repo.load_pack(pack_name), entries)


def pack_blobs(repo: Repository, pack_name: str, data: bytes, entries) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """read_pack_blobs over a pack already in memory."""
    good: dict[bytes, bytes] = {}
    bad: dict[bytes, str] = {}
    for e, payload, out in verify_blobs(repo, pack_name, data, entries):
        if payload is None:
            bad[e[0]] = out
        else:
            good[e[0]] = out
    return good, bad


def verify_blobs(
    repo: Repository, pack_name: str, data: bytes, entries
) -> Iterator[tuple[IndexEntry, bytes | None, bytes | str]]:
    """The one check of a pack's blobs in memory (check, repair, repack): for each entry,
    (entry, stored payload, plaintext) when it authenticates, decompresses to its declared length
    and matches its id, else (entry, None, why)."""
    what = f"pack {pack_name[:12]}"
    try:
        cipher = pack.pack_cipher(repo.keys, data, what)
    except CorruptObject as e:
        for entry in entries:
            yield entry, None, str(e)
        return
    id_of = repo.id_of
    for entry in entries:
        bid, t, off, ln, raw = entry
        ct = data[off : off + ln]
        if len(ct) != ln:
            yield entry, None, f"{what} is truncated"
            continue
        bwhat = f"blob {bid.hex()[:16]}"
        try:
            payload = pack.open_blob(cipher, off, t, bid, ct, bwhat)
            plain = pack.decompress(payload, bwhat, raw)
        except CorruptObject as e:
            yield entry, None, str(e)
            continue
        if id_of(t, plain) != bid:
            yield entry, None, f"{bwhat}: content does not match its id"
            continue
        if len(plain) != raw:  # a reader sizes files by the index's raw lengths
            yield entry, None, f"{bwhat}: {len(plain)} bytes, its index says {raw}"
            continue
        yield entry, payload, plain
