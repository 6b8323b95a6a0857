"""Reads of forked restore workers served by their parent (backend/forked.py): answers in the order
asked, taken in any order; the store's errors arrive as the same class; a bad request is refused and
a dead peer is an error, never a hang."""

from __future__ import annotations

import os
import struct

import pytest

from cermin.backend import forked
from cermin.backend.base import Kind
from cermin.backend.memory import MemoryBackend
from cermin.errors import CerminError, ObjectNotFound

NAMES = [bytes([i]).hex() * 32 for i in range(4)]


def _served():
    store = MemoryBackend()
    for i, name in enumerate(NAMES):
        store.save(Kind.DATA, name, bytes([i]) * 1000 + os.urandom(3 << 20))  # larger than a socket buffer
    parent, child = forked.pair()
    server = forked.serve(store, parent)
    return store, forked.ChildBackend(child, store), child, server


def test_reads_asked_ahead_are_taken_in_any_order():
    store, backend, child, server = _served()
    tickets = [backend.ask(Kind.DATA, name, 10, 2 << 20) for name in NAMES]
    assert backend.load(Kind.DATA, NAMES[1], 0, 5) == b"\x01" * 5  # a plain read between them
    for i in (3, 0, 2, 1):
        assert backend.take(tickets[i]) == store.load(Kind.DATA, NAMES[i], 10, 2 << 20)
    missing = backend.ask(Kind.DATA, "ff" * 32, 0, None)
    whole = backend.ask(Kind.DATA, NAMES[0], 0, None)
    assert backend.take(whole) == store.load(Kind.DATA, NAMES[0])
    with pytest.raises(ObjectNotFound, match="does not exist"):  # the store's error, its class kept
        backend.take(missing)
    assert backend.load_original(Kind.DATA, NAMES[2], 0, 3) == b"\x02" * 3
    child.close()
    server.join(timeout=10)
    assert not server.is_alive(), "the server ends with its worker"


def test_a_bad_request_is_refused_and_a_dead_parent_is_an_error():
    _, backend, child, server = _served()
    child.sendall(struct.pack("<I", 5) + b"\xc1\xc1\xc1\xc1\xc1")  # not msgpack
    with pytest.raises(CerminError, match="malformed read request"):
        backend.take(_raw_ticket(backend))
    with pytest.raises(CerminError, match="malformed read request"):
        backend.take(backend._request("unlink", Kind.DATA, NAMES[0], 0, 1))
    with pytest.raises(CerminError, match="malformed read request"):
        backend.take(backend._request("load", Kind.DATA, NAMES[0], -5, 1))
    child.sendall(struct.pack("<I", 1 << 30))  # a request no child sends: the parent hangs up
    server.join(timeout=10)
    assert not server.is_alive()
    with pytest.raises(CerminError, match="went away|failed"):
        backend.load(Kind.DATA, NAMES[0], 0, 1)


def _raw_ticket(backend) -> int:
    """The ticket of a request written to the socket by hand (the one sent just before)."""
    t = backend._asked
    backend._asked += 1
    backend._what[t] = "raw"
    return t


def test_a_local_store_is_read_when_taken():
    store = MemoryBackend()
    store.save(Kind.DATA, NAMES[0], b"abc")
    reader = forked.reader(store)
    ticket = reader.ask(Kind.DATA, NAMES[0], 1, 1)
    store.objects[(Kind.DATA, NAMES[0])] = b"xyz"  # nothing was read ahead
    assert reader.take(ticket) == b"y"


def test_many_reads_asked_ahead_never_deadlock():
    """The parent answers in order and blocks on a full socket while the child is not reading: a
    child asking for more than the sockets hold reads answers before it asks more."""
    import threading

    store = MemoryBackend()
    name = NAMES[0]
    store.save(Kind.DATA, name, os.urandom(1 << 20))
    parent, child = forked.pair()
    server = forked.serve(store, parent)
    backend = forked.ChildBackend(child, store)
    got: list[bytes] = []

    def ask_all() -> None:
        tickets = [backend.ask(Kind.DATA, name, (i * 4096) % (1 << 20), 64 * 1024) for i in range(2000)]
        got.extend(backend.take(t) for t in tickets)

    t = threading.Thread(target=ask_all, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "asking 2,000 reads ahead hung"
    assert len(got) == 2000 and got[5] == store.load(Kind.DATA, name, 5 * 4096, 64 * 1024)
    child.close()
    server.join(timeout=10)


class _Slow(MemoryBackend):
    """Fault injection: a store that takes 20 s to answer (an object store that stopped answering)."""

    def load(self, kind, name, offset=0, length=None):
        import time

        time.sleep(20)
        return b""


class _Asks:
    def __init__(self, repo) -> None:
        self.repo = repo

    def run(self, groups, fds):
        return self.repo.backend.load(Kind.DATA, NAMES[0], 0, 1)  # through the parent


def test_killing_a_pool_does_not_wait_for_reads_in_progress():
    """Ctrl-C or an error while the store hangs: the pool is gone at once, not after each read."""
    import time
    from types import SimpleNamespace

    from cermin.engine import restorework

    repo = SimpleNamespace(backend=_Slow())
    pool = restorework.ProcessPool(2, lambda i, counters: _Asks(repo), repo)
    pool.send(0, 0, [], [])
    pool.send(1, 1, [], [])
    time.sleep(1)  # both workers are waiting on the parent's 20 s reads
    t = time.monotonic()
    pool.close(kill=True)
    assert time.monotonic() - t < 5


class _Counting(MemoryBackend):
    """Counts the reads that reach the store (each one a request to an object store)."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.reads: list[tuple[str, int, int | None]] = []
        self.delay = delay
        self.fail = 0

    def load(self, kind, name, offset=0, length=None):
        import time

        self.reads.append((name, offset, length))
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise CerminError("the store failed")
        return super().load(kind, name, offset, length)


def test_a_pack_read_again_is_read_in_shared_blocks():
    """A pack's first read is made as asked; later reads of it come from aligned blocks: the reads
    of a restore's windows (small, neighbouring, of two workers) cost a few requests, not one each,
    and every answer is the same bytes as the store's, short at the object's end."""
    store = _Counting()
    data = os.urandom(3 * forked.BLOCK + 12345)
    store.save(Kind.DATA, NAMES[0], data)
    shared = forked.SharedReads(store)
    assert bytes(shared.load(Kind.DATA, NAMES[0], 100, 50)) == data[100:150]
    assert store.reads == [(NAMES[0], 100, 50)]  # the first read: as asked
    step = 100_000
    for off in range(0, len(data), step):  # a whole pack in window-sized reads
        assert bytes(shared.load(Kind.DATA, NAMES[0], off, step)) == data[off : off + step]
    assert len(store.reads) == 1 + 4, store.reads  # one per block
    span = forked.BLOCK - 10
    assert bytes(shared.load(Kind.DATA, NAMES[0], span, 20)) == data[span : span + 20]  # across blocks
    assert bytes(shared.load(Kind.DATA, NAMES[0], len(data) - 5, 50)) == data[-5:]  # short at the end
    assert bytes(shared.load(Kind.DATA, NAMES[0], len(data) + 10, 50)) == b""
    whole = shared.load(Kind.DATA, NAMES[0], 0, None)  # not a range: passed through
    assert whole == data
    store.save(Kind.DATA, NAMES[1], data)
    assert bytes(shared.load(Kind.DATA, NAMES[1], 7, 3)) == data[7:10]
    assert store.reads[-1] == (NAMES[1], 7, 3)  # each pack's first read is its own


def test_a_block_two_workers_want_is_read_once_and_a_failed_one_again():
    store = _Counting(delay=0.3)
    data = os.urandom(forked.BLOCK)
    store.save(Kind.DATA, NAMES[0], data)
    shared = forked.SharedReads(store)
    shared.load(Kind.DATA, NAMES[0], 0, 1)
    got: list[bytes] = []
    import threading

    ts = [
        threading.Thread(target=lambda o=o: got.append(bytes(shared.load(Kind.DATA, NAMES[0], o, 10))))
        for o in (1000, 2000)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=10)
    assert sorted(got) == sorted([data[1000:1010], data[2000:2010]])
    assert len(store.reads) == 2, store.reads  # the first read, then the block once for both
    store.save(Kind.DATA, NAMES[1], data)
    shared.load(Kind.DATA, NAMES[1], 0, 1)
    store.fail = 1
    with pytest.raises(CerminError, match="the store failed"):
        shared.load(Kind.DATA, NAMES[1], 5, 5)
    assert bytes(shared.load(Kind.DATA, NAMES[1], 5, 5)) == data[5:10]  # not kept: read again


def test_a_block_cut_short_is_read_again_and_an_overlong_one_refused():
    """Fault injection: one read of a block comes back empty (a proxy glitch the S3 backend takes
    for a range past the end): the read that needed it is short, the next ones are whole. A store
    that ignores the range (the whole object each time) is an error, not an endless loop."""
    store = _Counting()
    data = os.urandom(3 * forked.BLOCK)
    store.save(Kind.DATA, NAMES[0], data)
    shared = forked.SharedReads(store)
    shared.load(Kind.DATA, NAMES[0], 0, 1)
    real = MemoryBackend.load
    glitch = [True]

    def once_empty(self, kind, name, offset=0, length=None):
        if glitch and offset == forked.BLOCK:
            glitch.clear()
            return b""
        return real(self, kind, name, offset, length)

    MemoryBackend.load = once_empty
    try:
        short = shared.load(Kind.DATA, NAMES[0], 10, 2 * forked.BLOCK)
        assert len(short) < 2 * forked.BLOCK
        for _ in range(3):
            assert bytes(shared.load(Kind.DATA, NAMES[0], 10, 2 * forked.BLOCK)) == data[10 : 10 + 2 * forked.BLOCK]
    finally:
        MemoryBackend.load = real

    class _NoRange(MemoryBackend):
        def load(self, kind, name, offset=0, length=None):
            return super().load(kind, name)  # a 200 with the whole object to a ranged GET

    wild = _NoRange()
    wild.save(Kind.DATA, NAMES[1], data)
    shared = forked.SharedReads(wild)
    shared.load(Kind.DATA, NAMES[1], 0, 1)
    with pytest.raises(CerminError, match="more bytes"):
        shared.load(Kind.DATA, NAMES[1], 0, 1 << 40)  # a hostile index's length


def test_an_interrupt_in_one_read_is_an_error_for_the_other_worker():
    """A BaseException (an interrupt, a library's SystemExit) in the thread reading a block reaches
    the other worker waiting on that block as a plain CerminError, and nothing failed is kept."""
    import threading

    class _Interrupted(_Counting):
        def load(self, kind, name, offset=0, length=None):
            if offset:
                import time

                time.sleep(0.3)
                raise KeyboardInterrupt
            return super().load(kind, name, offset, length)

    store = _Interrupted()
    store.save(Kind.DATA, NAMES[0], os.urandom(2 * forked.BLOCK))
    shared = forked.SharedReads(store)
    shared.load(Kind.DATA, NAMES[0], 0, 1)
    seen: list[BaseException] = []

    def read() -> None:
        try:
            shared.load(Kind.DATA, NAMES[0], forked.BLOCK + 5, 5)
        except BaseException as e:  # noqa: BLE001 - what each thread got is the test
            seen.append(e)

    ts = [threading.Thread(target=read) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=10)
    assert sorted(type(e).__name__ for e in seen) == ["CerminError", "KeyboardInterrupt"], seen
    assert not shared._blocks
