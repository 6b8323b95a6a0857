"""`dump`: one file of a snapshot, or a directory as a tar stream, written to a binary stream.

A file's blobs are written in order. A directory becomes a POSIX (pax) tar of everything below it,
names relative to the directory's parent (`dump latest /home/ann` gives `ann/...`), with hard
links, symlinks, FIFOs and device nodes as tar entries; sockets are skipped (tar cannot hold them).
Names come from the tree walker, which skips invalid entries (counted as errors).
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

from cermin.engine.results import Line, error, error_json, fail
from cermin.engine.treewalk import bad_entry_message, find_node, walk
from cermin.errors import EXIT_FATAL, CerminError
from cermin.format import pack
from cermin.format.records import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node
from cermin.repo.repository import Repository
from cermin.util import display_path

_TAR_TYPES = {DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE, FIFO: tarfile.FIFOTYPE, CHARDEV: tarfile.CHRTYPE}
_TAR_TYPES[BLOCKDEV] = tarfile.BLKTYPE


@dataclass
class DumpResult:
    path: str
    tar: bool  # a directory, written as a tar stream
    entries: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_FATAL if self.errors else 0

    def to_json(self) -> list[dict]:  # stdout carries the data: only problems are reported
        return [error_json(e) for e in self.errors]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [error(e) for e in self.errors]
        if self.errors:
            lines.append(fail(f"{len(self.errors)} of the entries could not be written; run `cermin check`"))
        return lines


class _FileReader(io.RawIOBase):
    """A file's content, read blob by blob; exactly `size` bytes (short data padded, errors noted)."""

    def __init__(self, repo: Repository, node: Node, on_error) -> None:
        self.blobs = iter(node.blob_ids())
        self.left = node.size
        self.buf = b""
        self.repo, self.on_error = repo, on_error

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf and self.left > 0:
            bid = next(self.blobs, None)
            if bid is None:
                self.on_error("the file's data is shorter than its size (padded with zeros)")
                self.buf = bytes(self.left)
            else:
                self.buf = self.repo.load_blob(bid, pack.DATA)
        n = min(len(b), len(self.buf), self.left)
        b[:n] = self.buf[:n]
        self.buf, self.left = self.buf[n:], self.left - n
        return n


def dump_file(repo: Repository, node: Node, out: BinaryIO) -> int:
    n = 0
    for bid in node.blob_ids():
        data = repo.load_blob(bid, pack.DATA)
        out.write(data)
        n += len(data)
    return n


def dump_node(repo: Repository, tree_id: bytes, path: bytes, out: BinaryIO) -> DumpResult:
    """Write the file at `path` of the snapshot tree `tree_id`, or a tar of the directory there.
    Takes no lock: the caller holds a shared one (`cermin.ops.commands.dump` takes it)."""
    node = find_node(repo, tree_id, path)
    res = DumpResult(path=display_path(path), tar=node.type == DIR)
    if node.type == FILE:
        res.bytes, res.entries = dump_file(repo, node, out), 1
    elif node.type == DIR:
        _tar(repo, node, path, out, res)
    else:
        raise CerminError(f"{display_path(path)} is a {node.type}: dump writes a file or a directory (as a tar)")
    out.flush()
    return res


def _tar(repo: Repository, node: Node, path: bytes, out: BinaryIO, res: DumpResult) -> None:
    parts = [c for c in path.split(b"/") if c]
    top = parts[-1] if parts else b""
    base = b"/" + b"/".join(parts) if parts else b""

    def on_bad(dir_path, n, why):
        res.errors.append(bad_entry_message(dir_path, n, why))

    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
        if top:
            tar.addfile(_info(os.fsdecode(top), node))
            res.entries += 1
        for p, n in walk(repo, node.subtree, base, recursive=True, on_bad=on_bad):
            name = os.fsdecode((top + p[len(base) :]).lstrip(b"/"))
            if n.type not in _TAR_TYPES and n.type != FILE:
                res.errors.append(f"{display_path(p)}: a {n.type} cannot be put in a tar; skipped")
                continue
            info = _info(name, n)
            key = (n.device, n.inode)
            if n.type == FILE and n.links > 1 and n.inode and key in links:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
                tar.addfile(info)
            elif n.type == FILE:
                if n.links > 1 and n.inode:
                    links[key] = name

                def err(msg, p=p):
                    res.errors.append(f"{display_path(p)}: {msg}")

                tar.addfile(info, io.BufferedReader(_FileReader(repo, n, err), 1 << 20))
                res.bytes += n.size
            else:
                tar.addfile(info)
            res.entries += 1


def _info(name: str, n: Node) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = n.mode & 0o7777
    info.uid, info.gid, info.uname, info.gname = n.uid, n.gid, n.user, n.group
    info.mtime = n.mtime_ns / 1e9
    if n.type == FILE:
        info.type, info.size = tarfile.REGTYPE, n.size
    else:
        info.type = _TAR_TYPES[n.type]
    if n.type == SYMLINK:
        info.linkname = os.fsdecode(n.target)
    if n.type in (CHARDEV, BLOCKDEV):
        info.devmajor, info.devminor = os.major(n.rdev), os.minor(n.rdev)
    return info
