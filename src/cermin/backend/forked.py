"""Reads for forked worker processes from a store that cannot be used after `fork`.

An object-store client holds threads and connection pools (obstore's tokio runtime, urllib3): a
forked child that calls it hangs, because those threads do not exist in the child. So a child reads
through `ChildBackend`, which asks its parent over a Unix socket; in the parent one `serve` thread
per child calls the real backend (retries, version choice and all) and sends the bytes back.
Nothing crosses but object names, ranges and bytes the child authenticates itself.

Frames: a request is u32 length + msgpack [op, kind, name, offset, length]; a reply is u8 status +
u32 length + the bytes (status 0) or "ErrorClass\\0message" (status 1).

A child's reads of one pack mostly follow each other (restore order is backup order), in pieces of
a window, and two children read neighbouring parts: the parent reads packs in aligned blocks
shared by the children (`SharedReads`), because an object store charges per request
(SeaweedFS spent ~4.6 ms of CPU on each range GET, whether of 512 KiB or 4 MiB).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import OrderedDict
from concurrent.futures import Future

import msgspec

from cermin import errors
from cermin.backend.base import Kind
from cermin.errors import CerminError

_REQUEST = struct.Struct("<I")
_REPLY = struct.Struct("<BI")
_MAX_REQUEST = 4096  # an op, a kind, a 64-character name and two integers
_OPS = ("load", "load_original")
MAX_ASKED = 32  # reads a child has asked for and not yet read the answer of
BLOCK = 4 * 1024 * 1024  # a pack read a second time is read in aligned blocks of this size
BLOCKS = 6  # blocks kept for all children of a pool
SEEN_PACKS = 4096


def pair() -> tuple[socket.socket, socket.socket]:
    """(parent end, child end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return buf


def reader(backend):
    """Reads that can be asked for ahead (`ask`) and taken later (`take`): a child's backend
    pipelines them through its parent; any other backend reads when they are taken."""
    return backend if isinstance(backend, ChildBackend) else _AtOnce(backend)


class _AtOnce:
    """A local store: the read is made when taken (reading ahead would only hold more memory)."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def ask(self, kind: Kind, name: str, offset: int, length: int | None, original: bool = False) -> tuple:
        return original, kind, name, offset, length

    def take(self, ticket: tuple) -> bytes:
        original, *args = ticket
        return (self._backend.load_original if original else self._backend.load)(*args)


class ChildBackend:
    """The child's backend: the reads a restore worker makes, answered by the parent's `serve` in
    the order they were asked. `ask` sends a request and returns at once; `take` waits for that
    request's answer (answers to earlier requests that arrive first are kept until taken)."""

    def __init__(self, sock: socket.socket, real) -> None:
        self._sock = sock
        # Held, never dropped in the child: freeing an object-store client there runs its runtime's
        # teardown against locks other threads of the parent held at the fork (a hang seen in the agent).
        self._parents = real
        self.location = real.location
        self.caps = real.caps
        self.lock = None  # the Object Lock policy governs writes, which a child never makes
        self._asked = 0  # tickets handed out
        self._answered = 0  # answers read from the socket
        self._kept: dict[int, bytes | CerminError] = {}  # read, not yet taken
        self._what: dict[int, str] = {}

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.take(self.ask(kind, name, offset, length))

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.take(self._request("load_original", kind, name, offset, length))

    def ask(self, kind: Kind, name: str, offset: int, length: int | None, original: bool = False) -> int:
        """`original`: read the object's first version (a versioned store; see Backend.load_original)."""
        return self._request("load_original" if original else "load", kind, name, offset, length)

    def _request(self, op: str, kind: Kind, name: str, offset: int, length: int | None) -> int:
        req = msgspec.msgpack.encode([op, kind.value, name, offset, length])
        what = f"{kind.value}/{name[:12]}"
        while self._asked - self._answered >= MAX_ASKED:  # the parent answers in order and blocks on a
            self._read_next()  # full socket: read answers before asking more, or both would wait forever
        try:
            self._sock.sendall(_REQUEST.pack(len(req)) + req)
        except OSError as e:
            raise CerminError(f"reading {what} through the parent process failed: {e}") from None
        ticket = self._asked
        self._asked += 1
        self._what[ticket] = what
        return ticket

    def take(self, ticket: int) -> bytes:
        while ticket not in self._kept:
            self._read_next()
        self._what.pop(ticket)
        got = self._kept.pop(ticket)
        if isinstance(got, CerminError):
            raise got
        return got

    def _read_next(self) -> None:
        self._kept[self._answered] = self._answer(self._what[self._answered])
        self._answered += 1

    def _answer(self, what: str) -> bytes | CerminError:
        try:
            head = _recv_exact(self._sock, _REPLY.size)
            status, n = _REPLY.unpack(head) if head is not None else (2, 0)
            body = _recv_exact(self._sock, n) if status != 2 else None
        except OSError as e:
            raise CerminError(f"reading {what} through the parent process failed: {e}") from None
        if body is None:
            raise CerminError(f"reading {what}: the parent process went away")
        if status == 0:
            return bytes(body)
        cls_name, _, message = bytes(body).decode("utf-8", "replace").partition("\0")
        cls = getattr(errors, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, CerminError)):
            cls = CerminError
        return cls(message)


def serve(backend, sock: socket.socket) -> threading.Thread:
    """Answer one child's reads on a thread of this process until the child closes its end."""
    t = threading.Thread(target=_serve, args=(backend, sock), name="cermin-child-reads", daemon=True)
    t.start()
    return t


class SharedReads:
    """The reads of all children of one pool. The first read of a pack is made as asked (a restore
    of a few files reads no more than it needs); later reads of it are served from aligned BLOCK-sized
    reads kept here, at most BLOCKS of them, shared by the children (they restore neighbouring
    directories, whose blobs share packs). A block two children want at once is read once."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[str, int], Future] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()  # packs read before

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes | memoryview:
        if kind is not Kind.DATA or not length:
            return self.backend.load(kind, name, offset, length)
        with self._lock:
            again = name in self._seen
            self._seen[name] = None
            self._seen.move_to_end(name)
            if len(self._seen) > SEEN_PACKS:
                self._seen.popitem(last=False)
        if not again:
            return self.backend.load(kind, name, offset, length)
        end = offset + length
        first = offset // BLOCK
        parts: list = []
        for n in range(first, (end - 1) // BLOCK + 1):
            block = self._block(kind, name, n)
            parts.append(memoryview(block))
            if len(block) < BLOCK:
                break  # the object ends in this block
        parts[0] = parts[0][offset - first * BLOCK :]
        got = sum(len(p) for p in parts)
        if got > length:
            parts[-1] = parts[-1][: len(parts[-1]) - (got - length)]
        elif got < length:  # a child asks only for what the index says a pack holds: a block cut short
            self._forget(name, first + len(parts) - 1)  # (a glitch, or a planted version) is read again
        return parts[0] if len(parts) == 1 else b"".join(parts)  # a single block's part is not copied

    def _block(self, kind: Kind, name: str, n: int) -> bytes:
        key = (name, n)
        with self._lock:
            f = self._blocks.get(key)
            mine = f is None
            if mine:
                f = self._blocks[key] = Future()
                while len(self._blocks) > BLOCKS:
                    self._blocks.popitem(last=False)
            else:
                self._blocks.move_to_end(key)
        try:
            if not mine:
                return f.result()
            try:
                block = self.backend.load(kind, name, n * BLOCK, BLOCK)  # short at the object's end
                if len(block) > BLOCK:
                    raise CerminError(f"data/{name[:12]}: the store answered a ranged read with more bytes")
            except BaseException as e:
                self._forget(name, n, f)  # not kept: the next read tries again
                # the other child waiting on it gets an error of its own, not this thread's interrupt
                f.set_exception(e if isinstance(e, Exception) else CerminError(f"reading data/{name[:12]} stopped"))
                raise
            f.set_result(block)
            return block
        finally:
            f = None  # noqa: F841 - a failed read's traceback would otherwise keep this frame's blocks alive

    def _forget(self, name: str, n: int, f: Future | None = None) -> None:
        with self._lock:
            if f is None or self._blocks.get((name, n)) is f:
                self._blocks.pop((name, n), None)

    def load_original(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.backend.load_original(kind, name, offset, length)


def _serve(backend, sock: socket.socket) -> None:
    try:
        while True:
            head = _recv_exact(sock, _REQUEST.size)
            if head is None:
                return
            (n,) = _REQUEST.unpack(head)
            if n > _MAX_REQUEST:
                return  # not our child's request: drop the connection, the child reports it
            req = _recv_exact(sock, n)
            if req is None:
                return
            try:
                data = _answer(backend, req)
            except CerminError as e:
                msg = f"{type(e).__name__}\0{e}".encode()
                sock.sendall(_REPLY.pack(1, len(msg)) + msg)
                continue
            except Exception as e:  # noqa: BLE001 - a bug here must still reach the child as one line
                msg = f"CerminError\0reading for a restore worker failed: {type(e).__name__}: {e}".encode()
                sock.sendall(_REPLY.pack(1, len(msg)) + msg)
                continue
            sock.sendall(_REPLY.pack(0, len(data)))
            sock.sendall(data)
    except OSError:
        return  # the child is gone (killed, or the restore is stopping): nothing to answer
    finally:
        sock.close()


def _answer(backend, req: bytes) -> bytes:
    try:
        op, kind, name, offset, length = msgspec.msgpack.decode(req)
    except (msgspec.DecodeError, ValueError, TypeError):
        raise CerminError("malformed read request from a restore worker") from None
    if (
        op not in _OPS
        or not isinstance(name, str)
        or not isinstance(offset, int)
        or offset < 0
        or not (length is None or (isinstance(length, int) and length >= 0))
    ):
        raise CerminError("malformed read request from a restore worker")
    try:
        k = Kind(kind)
    except ValueError:
        raise CerminError("malformed read request from a restore worker") from None
    return getattr(backend, op)(k, name, offset, length)
