"""Worker processes that read, chunk, hash and compress the files a backup changed (`chunks.Cutter`).

Why processes: with worker threads every syscall of the walker handed the GIL over (~15 futex calls
a file), and small-file backups were bounded by that, not by the disk or the CPU.

A worker is a forked process with two Unix socket pairs made before the fork:
- parent -> worker, SOCK_SEQPACKET: one msgpack message each: a `Batch` of files, with the fds of the
  batch's directories attached (SCM_RIGHTS) (a worker opens each file relative to its directory's fd
  without following a symlink, as the walker would, so it never resolves a path); with own packs, a
  `Grant` or `Flush` (ownpacks.py). EOF: the worker exits.
- worker -> parent, SOCK_STREAM: frames (u32 length + msgpack `Reply`): `Part` carries a large file's
  chunks as they are made (memory stays bounded), `Done` a batch's results, `Fatal` a failure that is
  not one file's (the worker exits after sending it); with own packs, `Sealed` and `Flushed`.
A worker inherits the repository (keys, chunker parameters, the index as of the fork) through the fork:
no secret crosses a pipe or a command line. Everything it sends is plain data.
"""

from __future__ import annotations

import array
import gc
import os
import secrets
import selectors
import signal
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from cermin import errors
from cermin.engine import fsmeta
from cermin.engine.backup.chunks import Cutter
from cermin.engine.backup.ownpacks import HOLD_BYTES, Flush, Flushed, Grant, OwnPacks, Sealed
from cermin.engine.fsread import open_for_read
from cermin.engine.observer import FileRead
from cermin.errors import CerminError

MAX_FDS = 253  # SCM_MAX_FD: descriptors one message can carry
FRAME = struct.Struct("<I")
READ_BUFFER = 1 << 20  # the parent's buffer per worker; a larger frame is received into its own
SEND_KEEP = 2 << 20  # a worker's frame buffer is dropped after a frame larger than this
# glibc frees an allocation of at least this much to the kernel at once, and trims its heaps above it
# (a worker: see `_release_big_buffers`)
RELEASE_BYTES = 1 << 20


# (blob id, raw length, compressed payload, or with own packs its length (a claim); None: stored already)
WireChunk = tuple[bytes, int, bytes | int | None]


class Batch(msgspec.Struct, tag="b", array_like=True):
    id: int
    # (index of its directory's fd, name, size and blocks from the walker's stat, and for the keyed
    # observer's `assess` its previous version: (size, mtime, stored size, fingerprint pairs) or None)
    files: list[tuple[int, bytes, int, int, Any]]


class FileResult(msgspec.Struct, array_like=True):
    error: str = ""  # set: the file could not be read, nothing else is
    size: int = 0  # bytes read
    after_size: int = 0  # fstat after reading: a file that changed while read is reported
    after_mtime_ns: int = 0
    xattrs: list[tuple[bytes, bytes]] = []
    chunks: list[WireChunk] = []  # after any `Part` of this file
    head: bytes = b""
    entropy: float = -1.0
    facts: bool = False  # head/entropy were computed (an observer wants the fingerprint)
    assessment: Any = None  # the keyed observer's `assess` (engine/observer.py), None when it failed
    after_ino: int = 0  # the inode read: another file renamed over the name since the walker's stat differs


class Part(msgspec.Struct, tag="p", array_like=True):
    batch: int
    index: int
    chunks: list[WireChunk]


class Done(msgspec.Struct, tag="d", array_like=True):
    batch: int
    files: list[FileResult]


class Fatal(msgspec.Struct, tag="x", array_like=True):
    message: str
    kind: str = ""  # a CerminError's class name: raised as such in the parent (its exit code)


Reply = Part | Done | Fatal | Sealed | Flushed
ToWorker = Batch | Grant | Flush


# ---- the worker's side -----------------------------------------------------------------------
def read_one(cutter: Cutter, dfd: int, name: bytes, size: int, blocks: int, emit) -> FileResult:
    """Open and chunk one file of the directory `dfd`. A file error is a result, anything else raises."""
    try:
        fd = open_for_read(name, dfd)
    except FileNotFoundError:
        return FileResult(error="vanished before it could be read")
    except OSError as e:
        return FileResult(error=f"cannot open: {e.strerror}")
    try:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return FileResult(error="cannot open: replaced by a non-regular file")
            try:
                xattrs = fsmeta.read_xattrs(fd)
            except OSError:
                xattrs = []
            chunks, n, facts = cutter.file(fd, size, blocks, emit)
            after = os.fstat(fd)
        finally:
            os.close(fd)
    except (BrokenPipeError, ConnectionResetError):
        raise  # from `emit`: the parent is gone, not the file
    except OSError as e:
        return FileResult(error=f"read error: {e.strerror or e}")
    head, entropy = facts if facts is not None else (b"", -1.0)
    return FileResult(
        "", n, after.st_size, after.st_mtime_ns, xattrs, chunks, head, entropy, facts is not None, None, after.st_ino
    )


def assessed(assess: Callable[[FileRead], Any], r: FileResult, name: bytes, prev, sizes) -> Any:
    """The keyed observer's per-file part, here where the file was read; None when it raises (the
    parent then runs it itself, and an observer that fails there is detached as any other)."""
    size, _, stored, fp = prev if prev is not None else (-1, -1, -1, ())
    ev = FileRead(
        name,
        r.size,
        0,
        tuple(sizes),
        r.head,
        r.entropy,
        size,
        -1,
        stored,
        previous_fingerprint=tuple(tuple(p) for p in fp),
    )
    try:
        a = assess(ev)
        msgspec.msgpack.encode(a)  # what cannot cross is refused here, not when the batch is sent
        return a
    except Exception:  # noqa: BLE001 - reported when the parent runs it again
        return None


def _serve(ctrl: socket.socket, out: socket.socket, repo, want_facts: bool, assess, owner: str) -> None:
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder(ToWorker)
    frame = bytearray(FRAME.size)
    own = OwnPacks(repo, owner) if owner else None
    queued: deque[tuple[Batch, list[int]]] = deque()  # batches received while a file was being read
    closed = False

    def send(msg) -> None:
        """One frame, encoded behind its length prefix in one buffer and sent with one call."""
        nonlocal frame
        enc.encode_into(msg, frame, FRAME.size)  # the buffer ends where the message does
        FRAME.pack_into(frame, 0, len(frame) - FRAME.size)
        out.sendall(frame)
        if len(frame) > SEND_KEEP:  # one large file's Done: not kept for the small frames that follow
            frame = bytearray(FRAME.size)

    def send_chunks(msg, holders: list) -> None:
        """A `Part` or `Done` (`holders`: it, or its results). With own packs each payload stays here,
        a claim, until the parent answers; past HOLD_BYTES held, wait for that answer."""
        sent = [h.chunks for h in holders]
        claims: list = []
        if own is not None:
            for h in holders:
                h.chunks = own.claims(h.chunks, claims)
        send(msg)
        for chunks in sent:  # the parent has them: later duplicates are not compressed or sent again
            cutter.sent(chunks)
        if own is not None:
            own.hold(claims)
            while receive(block=own.held_bytes > HOLD_BYTES):
                pass

    def receive(block: bool) -> bool:
        """Take one control message (a batch is queued); False when none is waiting, or at EOF."""
        nonlocal closed
        if closed:
            return False
        try:
            msg, fds, flags = _recv_fds(ctrl, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not msg:
            closed = True
            return False
        m = dec.decode(msg)
        if isinstance(m, Batch):
            queued.append((m, fds))
            if flags & socket.MSG_CTRUNC or len(fds) != 1 + max((f[0] for f in m.files), default=-1):
                raise CerminError(f"backup worker received {len(fds)} directories for a batch (descriptor limit?)")
        elif fds or own is None:
            raise CerminError("backup worker failed: internal error: an unexpected message")
        elif isinstance(m, Grant):
            for sealed in own.grant(m.bits):
                send(sealed)
        else:
            written, done = own.flush()
            for sealed in written:
                send(sealed)
            send(done)
        return True

    cutter = Cutter(repo, want_facts, repo.index.__contains__)
    try:
        while True:
            if not queued:
                if closed:
                    return
                receive(block=True)
                continue
            batch, fds = queued.popleft()
            results = []
            for i, (d, name, size, blocks, prev) in enumerate(batch.files):
                sizes: list[tuple[int, int]] = []

                def emit(chunks, b=batch.id, i=i, sizes=sizes) -> None:
                    sizes.extend((raw, len(p) if p is not None else 0) for _, raw, p in chunks)
                    part = Part(b, i, chunks)
                    send_chunks(part, [part])

                r = read_one(cutter, fds[d], name, size, blocks, emit)
                if assess is not None and not r.error:
                    sizes.extend((raw, len(p) if p is not None else 0) for _, raw, p in r.chunks)
                    r.assessment = assessed(assess, r, name, prev, sizes)
                results.append(r)
            for fd in fds:
                os.close(fd)
            send_chunks(Done(batch.id, results), results)
    except BrokenPipeError:
        return  # the parent is gone or stopping
    except _Stopped:
        raise
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the backup
        _hold_stop()  # the parent answers with SIGTERM: it must not cut the cleanup below short
        try:
            if isinstance(e, CerminError):
                send(Fatal(str(e), type(e).__name__))
            else:
                send(Fatal(f"{type(e).__name__}: {e}"))
        except OSError:
            pass
        raise
    finally:
        _hold_stop()
        if own is not None:
            own.discard()  # waits for a pack being written out: no temporary file is left
        cutter.close()
        for _, fds in queued:
            for fd in fds:
                os.close(fd)


_FDS_SPACE = socket.CMSG_LEN(MAX_FDS * 4)


def _recv_fds(sock: socket.socket, flags: int) -> tuple[bytes, list[int], int]:
    """One message and its descriptors. Not `socket.recv_fds`: CPython 3.11's drops `flags`."""
    msg, ancdata, mflags, _ = sock.recvmsg(1 << 16, _FDS_SPACE, flags)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds), mflags


class _Reader:
    """Frames from one worker's stream socket, read in large pieces into a reusable buffer; a frame
    larger than that buffer is received straight into a buffer of its own size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray(READ_BUFFER)
        self.start = 0
        self.end = 0
        self.big: bytearray | None = None  # the body of a frame larger than `buf`, as far as `got`
        self.got = 0
        self.dec = msgspec.msgpack.Decoder(Reply)

    def fill(self) -> bool:
        """One recv; False at EOF."""
        with memoryview(self.big if self.big is not None else self.buf) as mv:
            if self.big is not None:
                n = self.sock.recv_into(mv[self.got :])
                self.got += n
                return n > 0
            if self.end == len(mv):  # full: the frame begun at `start` fits once moved to the front
                live = self.end - self.start
                mv[:live] = mv[self.start : self.end]
                self.start, self.end = 0, live
            n = self.sock.recv_into(mv[self.end :])
        self.end += n
        return n > 0

    def frames(self) -> list:
        out = []
        if self.big is not None:
            if self.got < len(self.big):
                return out
            out.append(self.dec.decode(self.big))
            self.big = None
        with memoryview(self.buf) as mv:
            while self.end - self.start >= FRAME.size:
                (n,) = FRAME.unpack_from(mv, self.start)
                have = self.end - self.start - FRAME.size
                if have < n:
                    if FRAME.size + n > len(mv):
                        self.big = bytearray(n)
                        self.big[:have] = mv[self.start + FRAME.size : self.end]
                        self.got = have
                        self.start = self.end  # nothing follows it yet: the worker is still sending it
                    break
                body = mv[self.start + FRAME.size : self.start + FRAME.size + n]
                out.append(self.dec.decode(body))
                body.release()
                self.start += FRAME.size + n
        if self.start == self.end:
            self.start = self.end = 0
        return out


class _Stopped(BaseException):
    """SIGTERM: the backup failed or was interrupted; this worker's work is not wanted."""


_cleaning = False  # a worker's: it is ending, and its cleanup must run whole


def _stop(signum, frame) -> None:
    if not _cleaning:  # one that came just before the mask below is set: nothing to stop any more
        raise _Stopped


def _hold_stop() -> None:
    """From here on a SIGTERM waits (the worker is ending: its cleanup runs whole)."""
    global _cleaning
    _cleaning = True
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _child_setup(*keep: int) -> None:
    """A fresh worker: ignores Ctrl-C, stops on SIGTERM (removing the pack it was writing) and dies with
    its parent (the parent decides when to stop), and holds no descriptor but stdio and `keep`: none of
    another backup's sockets (an agent runs several at once), which would keep that backup's workers
    from ever seeing EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    _die_with_parent()
    _release_big_buffers()
    gc.disable()
    lo = 3
    for fd in sorted(keep):
        os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, max(lo, os.sysconf("SC_OPEN_MAX")))


def _release_big_buffers() -> None:
    """glibc keeps what a process frees for its next allocations, and raises its mmap threshold to the
    largest block it freed (up to 32 MiB): a worker's chunk copies, payloads and frames (up to 4 MiB
    each) then stayed resident as free heap. Fixed thresholds give a block of RELEASE_BYTES or more back
    to the kernel when it is freed. /usr/share: the two workers' PSS at the peak 89-97 -> 60-71 MiB, for
    ~170,000 more page faults (~0.35 s of system time)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, RELEASE_BYTES)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, RELEASE_BYTES)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: its own policy


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # EOF on the sockets still ends it, at its next send or receive
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


# ---- the parent's side -----------------------------------------------------------------------
class Workers:
    """The forked workers of one backup, their sockets, and the replies as they come."""

    def __init__(self, repo, n: int, want_facts: bool, assess=None, own_packs: bool = False) -> None:
        self.pids: list[int] = []
        self.ctrl: list[socket.socket] = []
        self.readers: list[_Reader] = []
        self.sel = selectors.DefaultSelector()
        # With own packs, worker i's spool files are named by owners[i], random per backup: the parent
        # removes those of workers it stopped (pids repeat across hosts and pid namespaces).
        run = secrets.token_hex(6)
        self.owners = [f"{run}-{i}" for i in range(n)]
        pairs = [
            (socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET), socket.socketpair(socket.AF_UNIX))
            for _ in range(n)
        ]
        # Frozen, the parent's objects are never scanned by a collection in either process: their pages
        # stay shared. A freeze already in place (Backup.run's) is its owner's to undo, with these.
        outer = gc.get_freeze_count()
        gc.freeze()
        try:
            for i, ((_, c_child), (_, d_child)) in enumerate(pairs):
                pid = os.fork()
                if pid == 0:  # the child: only its own two ends stay open
                    code = 1
                    try:
                        _child_setup(c_child.fileno(), d_child.fileno())
                        _serve(c_child, d_child, repo, want_facts, assess, self.owners[i] if own_packs else "")
                        code = 0
                    except _Stopped:  # its own pack removed: now ended by the signal, as reported
                        signal.signal(signal.SIGTERM, signal.SIG_DFL)
                        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                        os.kill(os.getpid(), signal.SIGTERM)
                    finally:
                        os._exit(code)
                self.pids.append(pid)
        except BaseException:
            for pid in self.pids:
                os.kill(pid, signal.SIGKILL)
                _reap(pid)
            raise
        finally:
            if not outer:
                gc.unfreeze()
            for (_, c_child), (_, d_child) in pairs:
                c_child.close()
                d_child.close()
        for i, ((c_parent, _), (d_parent, _)) in enumerate(pairs):
            self.ctrl.append(c_parent)
            self.readers.append(_Reader(d_parent))
            self.sel.register(d_parent, selectors.EVENT_READ, i)

    def __len__(self) -> int:
        return len(self.pids)

    def send(self, worker: int, msg: Batch | Grant | Flush, fds: list[int] = ()) -> None:
        try:
            socket.send_fds(self.ctrl[worker], [msgspec.msgpack.encode(msg)], fds)
        except OSError as e:
            status = self._status(worker) if isinstance(e, (BrokenPipeError, ConnectionError)) else f" ({e})"
            raise CerminError(f"backup worker {self.pids[worker]} exited unexpectedly{status}") from None

    def replies(self, block: bool) -> Iterator[tuple[int, Reply]]:
        """(worker, reply) ready now (or, with `block`, after waiting for at least one)."""
        for key, _ in self.sel.select(None if block else 0):
            r = self.readers[key.data]
            if not r.fill():
                raise CerminError(f"backup worker {self.pids[key.data]} exited unexpectedly{self._status(key.data)}")
            for msg in r.frames():
                if isinstance(msg, Fatal):
                    raise _failure(msg)
                yield key.data, msg

    def _status(self, i: int) -> str:
        """How worker `i`, whose socket reached EOF, ended (it may take a moment to become reapable)."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                pid, status = os.waitpid(self.pids[i], os.WNOHANG)
            except ChildProcessError:
                return ""
            if pid:
                break
            if time.monotonic() > deadline:
                return ""
            time.sleep(0.01)
        self.pids[i] = -1
        if os.WIFSIGNALED(status):
            return f" (killed by signal {os.WTERMSIG(status)})"
        return f" (exit status {os.WEXITSTATUS(status)})"

    def close(self, abort: bool = False) -> None:
        """Stop every worker: EOF on its control socket, then reap it (killed when it does not go, or told
        to stop at once with `abort`: the backup failed or was interrupted, what they are reading is not
        wanted; each removes the pack it was writing, unless the signal came as it made one)."""
        if abort:
            for pid in self.pids:
                if pid > 0:
                    os.kill(pid, signal.SIGTERM)
        for s in self.ctrl:
            s.close()
        for r in self.readers:
            self.sel.unregister(r.sock)
            r.sock.close()
        self.sel.close()
        for pid in self.pids:
            if pid > 0:
                _reap(pid)
        self.pids = []


def _failure(msg: Fatal) -> CerminError:
    """A worker's failure as the parent raises it: a CerminError as itself (its exit code: a full disk
    is one), anything else as the worker's failure."""
    kind = getattr(errors, msg.kind, None) if msg.kind else None
    if isinstance(kind, type) and issubclass(kind, CerminError):
        try:
            return kind(msg.message)
        except TypeError:
            pass
    return CerminError(f"backup worker failed: {msg.message}")


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 5.0
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.005)
