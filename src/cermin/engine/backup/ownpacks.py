"""A backup worker's own packs: the new chunks the parent grants it, encrypted and written by the worker.

Why: with the parent packing, every new chunk's compressed bytes crossed a socket and were encrypted,
hashed and written by the one process that also walks the tree; the parent bounded first backups.

Deduplication stays exact and the parent stays its one authority: a worker sends only the ids and
sizes of the chunks it would store (`claims`), holds their bytes, and stores those the parent grants
(`Grant`, a bitmap over one message's claims, in the order the messages were sent). A chunk two
workers meet is granted to the first to ask. A pack is written before the parent hears of it
(`Sealed`), and the parent indexes it then, so nothing is indexed before it is durable; the snapshot
waits for every worker's `Flushed`.

Only on a store that takes a pack written in place (`Backend.spool`: a local directory): on any other
the parent packs as before (a forked process must not share an object store client's connections).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import msgspec

from cermin.backend.base import Kind
from cermin.format import index as fmt_index
from cermin.format import pack
from cermin.repo.saver import write_pack
from cermin.util import main_thread_signals

HOLD_BYTES = 16 << 20  # a worker waits for grants rather than hold more compressed bytes than this
SEALING = 2  # full packs a worker's writer thread may have queued (their last piece each in memory)


class Grant(msgspec.Struct, tag="g", array_like=True):
    bits: bytes  # bit i of byte i // 8 (least significant first): claim i of the message is granted


class Flush(msgspec.Struct, tag="f", array_like=True):
    """Write out the pack being filled and say so (`Flushed`); no claim is outstanding."""


class Sealed(msgspec.Struct, tag="s", array_like=True):
    pack_id: bytes
    blobs: bytes  # its index entries (format/index.py ENTRY records)
    size: int


class Flushed(msgspec.Struct, tag="w", array_like=True):
    # The granted chunks of a last pack that never reached its first write (under 1 MiB), handed back
    # for the parent's own pack: a small backup leaves one partial pack, not one per worker.
    chunks: list[tuple[bytes, int, bytes]] = []


def grant_bits(granted: list[bool]) -> bytes:
    bits = bytearray((len(granted) + 7) // 8)
    for i, g in enumerate(granted):
        if g:
            bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits)


class OwnPacks:
    """One worker's claims waiting for their grant, and the pack it is filling."""

    def __init__(self, repo, owner: str) -> None:
        self.repo = repo
        self.owner = owner  # names its spool files: the parent removes them if this worker is stopped
        self.target = repo.secrets.pack_size
        self.held: deque[list[tuple[bytes, int, bytes]]] = deque()
        self.held_bytes = 0
        self.builder: pack.PackBuilder | None = None
        self._small: list[tuple[bytes, int, bytes]] = []  # the builder's blobs while it is all in memory
        # Full packs are written out (the rest, the header, fsync, link) on a thread of their own, so
        # that a disk's fsync does not stop this worker's reading.
        self._writer: ThreadPoolExecutor | None = None
        self._sealing: deque[Future] = deque()

    def claims(self, chunks: list, out: list) -> list:
        """`chunks` as sent: a payload becomes its length and its chunk a claim, appended to `out`."""
        wire = []
        for c in chunks:
            bid, raw, payload = c
            if payload is None:
                wire.append(c)
            else:
                wire.append((bid, raw, len(payload)))
                out.append(c)
                self.held_bytes += len(payload)
        return wire

    def hold(self, claims: list) -> None:
        """The claims of one message, now sent."""
        if claims:
            self.held.append(claims)

    def grant(self, bits: bytes) -> list[Sealed]:
        """Store what the parent granted of the oldest claims; the packs written out since last asked."""
        claims = self.held.popleft()
        if len(bits) != (len(claims) + 7) // 8:
            raise RuntimeError(f"a grant of {len(bits)} bytes for {len(claims)} claims")
        for i, (bid, raw, payload) in enumerate(claims):
            self.held_bytes -= len(payload)
            if bits[i >> 3] >> (i & 7) & 1:
                b = self.builder
                if b is None:
                    b = self.builder = pack.PackBuilder(self.repo.keys, spool=self._spool)
                b.add(pack.DATA, bid, payload, raw)
                if b.spool is None:
                    self._small.append((bid, raw, payload))
                elif self._small:
                    self._small = []
                if b.size >= self.target:
                    self._seal()
        return self._written()

    def _spool(self):
        return self.repo.backend.spool(Kind.DATA, self.owner)

    def flush(self) -> tuple[list[Sealed], Flushed]:
        """Every pack written out, but one still all in memory: its chunks go back to the parent."""
        if self.held:
            raise RuntimeError(f"asked to flush with {len(self.held)} claims not answered")
        done = Flushed()
        b = self.builder
        if b is not None and b.spool is None:
            done.chunks, self._small, self.builder = self._small, [], None
        elif b is not None:
            self._seal()
        return self._written(everything=True), done

    def _written(self, everything: bool = False) -> list[Sealed]:
        """Packs written out (all of them with `everything`; the oldest, past SEALING queued); the
        writer's error is raised here."""
        out = []
        while self._sealing and (everything or self._sealing[0].done() or len(self._sealing) > SEALING):
            out.append(self._sealing.popleft().result())
        return out

    def _seal(self) -> None:
        b, self.builder, self._small = self.builder, None, []
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, "cermin-pack", initializer=main_thread_signals)
        self._sealing.append(self._writer.submit(self._write_out, b))

    def _write_out(self, b: pack.PackBuilder) -> Sealed:
        try:
            entries, name, size = write_pack(b, self._save)
        except BaseException:
            b.discard()
            raise
        return Sealed(bytes.fromhex(name), fmt_index.encode_entries(entries), size)

    def _save(self, entries, data: bytes, name: str):
        self.repo.backend.save(Kind.DATA, name, data)
        return entries, data, name

    def discard(self) -> None:
        """The backup ends without a flush: the pack being filled is not wanted. One being written out
        is finished first (linked, and adopted by the next backup; or failed, its temporary file
        removed): a process that exits mid-write leaves its temporary file."""
        if self.builder is not None:
            self.builder.discard()
            self.builder = None
        if self._writer is not None:
            self._writer.shutdown(wait=True, cancel_futures=True)
