"""One repack: copy chosen blobs of some packs into new packs through the normal pack writer.

Used by prune (the live blobs of partly used packs), by `repair packs` (the readable blobs of
damaged packs) and, next, by the tenant mirror (the blobs a set of snapshots reaches, into another
repository). Modelled on restic `internal/repository/repack.go`:

- the *source* repository reads each pack once, whole, and verifies every wanted blob (AEAD with
  the source's pack key, then its id over the decompressed content, within its declared length);
- the *destination* is a `BlobSaver` of any repository sharing the source's blob-id key (the same
  repository for prune and repair; a mirror created from the same master secrets): it encrypts
  again with fresh pack keys and writes packs (and, if the saver is set so, index files);
- the stored payload is carried over as it is (compressed or raw), so nothing is compressed again.

Nothing is deleted here: callers decide, once the new packs are durable (`saver.flush()`), what
to index and what to remove. A blob that cannot be read is reported in `lost`, never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field

from cermin.errors import CerminError, ObjectNotFound, UsageError
from cermin.format.index import IndexEntry
from cermin.repo.indexfiles import IndexView, verify_blobs
from cermin.repo.masterindex import MasterIndex
from cermin.repo.repository import Repository
from cermin.repo.saver import BlobSaver


class RepackIncomplete(CerminError):
    """A pack had blobs that could not be read while every wanted blob was required."""

    def __init__(self, pack_name: str, lost: dict[bytes, str]) -> None:
        super().__init__(f"pack {pack_name[:12]}: {len(lost)} wanted blobs cannot be read")
        self.pack = pack_name
        self.lost = lost


@dataclass(slots=True)
class VerifiedBlob:
    type: int
    data: bytes  # plaintext, verified against the blob id
    payload: bytes  # codec byte || stored bytes, as decrypted: saved again without recompression


@dataclass
class PackBlobs:
    """What one source pack yielded: verified blobs, and why the others are lost."""

    name: str
    data: bytes | None  # the whole pack as read (None when it is missing)
    good: dict[bytes, VerifiedBlob] = field(default_factory=dict)
    lost: dict[bytes, str] = field(default_factory=dict)


@dataclass
class RepackResult:
    packs_read: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0  # plaintext bytes of the copied blobs
    lost: dict[bytes, str] = field(default_factory=dict)  # blob id -> why it could not be copied


def wanted_entries(
    view: IndexView, index: MasterIndex, wanted: Container[bytes], pack_ids: Iterable[bytes] | None = None
) -> Iterator[tuple[str, list[IndexEntry]]]:
    """(pack name, entries) of the `wanted` blobs stored in each pack (every indexed pack, or the
    given ones), lazily, one pack at a time. A blob stored in several packs is taken only from the
    one the index finds it in, so it is copied once."""
    lookup = index.lookup
    for pid in view.packs if pack_ids is None else pack_ids:
        entries = [e for e in view.entries(pid) if e.blob_id in wanted and lookup(e.blob_id).pack_id == pid]
        if entries:
            yield pid.hex(), entries


def read_verified(src: Repository, name: str, entries: Iterable[IndexEntry], data: bytes | None = None) -> PackBlobs:
    """Read one pack whole (unless `data` holds it) and verify the given blobs. A missing pack loses
    every blob; any other I/O error propagates (only proven damage counts as lost)."""
    entries = list(entries)
    what = f"pack {name[:12]}"
    if data is None:
        try:
            data = src.load_pack(name)
        except ObjectNotFound:
            return PackBlobs(name, None, lost={e.blob_id: f"{what} is missing" for e in entries})
    out = PackBlobs(name, data)
    for e, payload, plain in verify_blobs(src, name, data, entries):
        if payload is None:
            out.lost[e.blob_id] = plain
        else:
            out.good[e.blob_id] = VerifiedBlob(e.type, plain, payload)
    return out


def rewrite_saver(dst: Repository) -> BlobSaver:
    """The saver prune and repair copy into: stores blobs although the index knows them (their packs
    are about to go) and writes no index files (the caller writes one full index from `new_packs`)."""
    return BlobSaver(dst, builders=1, ignore_index=True, write_index=False)


class Repacker:
    """Copies verified blobs of source packs into a destination saver. Not thread-safe; one pack at a
    time (each pack is held in memory whole while its blobs are copied)."""

    def __init__(self, src: Repository, saver: BlobSaver) -> None:
        if saver.repo is not src and not saver.repo.shares_ids_with(src):
            raise UsageError(
                "the destination repository names blobs with another id key: blobs cannot be copied as they are"
            )
        self.src = src
        self.saver = saver
        self.result = RepackResult()

    def read(self, name: str, entries: Iterable[IndexEntry], data: bytes | None = None) -> PackBlobs:
        blobs = read_verified(self.src, name, entries, data)
        self.result.packs_read += 1
        return blobs

    def copy(self, blobs: PackBlobs) -> int:
        """Save every verified blob of a pack into the destination; record the lost ones."""
        save = self.saver.save
        for bid, b in blobs.good.items():
            save(b.type, bid, b.data, b.payload)
            self.result.bytes_copied += len(b.data)
        self.result.blobs_copied += len(blobs.good)
        self.result.lost.update(blobs.lost)
        return len(blobs.good)

    def repack(self, name: str, entries: Iterable[IndexEntry], require_all: bool = False) -> PackBlobs:
        """read + copy. `require_all`: raise RepackIncomplete before copying anything of a pack with a
        lost blob."""
        blobs = self.read(name, entries)
        if require_all and blobs.lost:
            raise RepackIncomplete(name, blobs.lost)
        self.copy(blobs)
        blobs.data = None  # let the pack go
        return blobs


def repack(
    src: Repository,
    saver: BlobSaver,
    packs: Iterable[tuple[str, Iterable[IndexEntry]]],
    require_all: bool = False,
    progress: Callable[[int, str], None] | None = None,
) -> RepackResult:
    """Copy the given blobs (`packs`: pack name -> the entries wanted from it) of `src` into `saver`
    (a saver of `src` itself, or of another repository with the same id key), then flush the saver:
    when this returns, every copied blob is in a durable pack (`saver.new_packs` names them when the
    saver writes no index). The caller closes the saver."""
    r = Repacker(src, saver)
    for i, (name, entries) in enumerate(packs):
        if progress is not None:
            progress(i, name)
        r.repack(name, entries, require_all)
    saver.flush()
    return r.result
