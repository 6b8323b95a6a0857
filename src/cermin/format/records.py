"""Typed records stored in the repository (msgspec). FORMAT.md documents every field.

Map-encoded structs with `omit_defaults`: new optional fields can be added without a format break,
and decoders ignore fields they do not know (mirror, guard and drills rely on this).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

FORMAT_VERSION = 3  # 2: every plaintext config field is bound into the sealed secrets; 3: tree ids keyed apart
READ_VERSIONS = (2, 3)
TREE_KEY_VERSION = 3  # from this version on, tree ids are keyed BLAKE3 under a key derived for trees

# Node types
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
FIFO = "fifo"
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
SOCKET = "socket"
NODE_TYPES = (FILE, DIR, SYMLINK, FIFO, CHARDEV, BLOCKDEV, SOCKET)

ID_LEN = 32
INDEX_ENTRY_SIZE = 45  # format.index.ENTRY: id, type, offset, length, raw length


class Node(msgspec.Struct, omit_defaults=True, gc=False):
    """One directory entry. `name` and `target` are raw bytes so non-UTF-8 names survive."""

    name: bytes
    type: str
    mode: int = 0  # permission bits incl. setuid/setgid/sticky (S_IMODE)
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    device: int = 0  # st_dev, with inode identifies hard links within one snapshot
    links: int = 1
    size: int = 0
    content: bytes = b""  # file: concatenated 32-byte data blob ids in file order
    subtree: bytes = b""  # dir: 32-byte tree blob id
    target: bytes = b""  # symlink target
    rdev: int = 0  # device nodes
    xattrs: list[tuple[bytes, bytes]] = []
    # Per-node extension room (e.g. guard fingerprints); unknown keys travel unchanged.
    extra: dict[str, Any] = {}

    def blob_ids(self) -> list[bytes]:
        c = self.content
        return [c[i : i + ID_LEN] for i in range(0, len(c), ID_LEN)]


class Tree(msgspec.Struct, omit_defaults=True, gc=False):
    nodes: list[Node] = []  # sorted by name bytes


class SnapshotSummary(msgspec.Struct, omit_defaults=True, gc=False):
    """Written into the snapshot so listing never needs a tree walk."""

    backup_start: str = ""
    backup_end: str = ""
    files_new: int = 0
    files_changed: int = 0
    files_unmodified: int = 0
    dirs: int = 0
    other: int = 0
    errors: int = 0
    changed_during_read: int = 0
    bytes_read: int = 0
    total_files: int = 0
    total_bytes: int = 0
    data_blobs_added: int = 0
    tree_blobs_added: int = 0
    data_added_raw: int = 0
    data_added_stored: int = 0


class Snapshot(msgspec.Struct, omit_defaults=True, gc=False):
    time: str  # RFC 3339 with nanoseconds, UTC
    tree: bytes
    paths: list[bytes]
    hostname: str = ""
    username: str = ""
    uid: int = 0
    gid: int = 0
    tags: list[str] = []
    parent: str = ""  # id of the parent snapshot used for change detection
    incomplete: bool = False  # some files could not be read; see summary.errors
    program_version: str = ""
    summary: SnapshotSummary | None = None
    # Fields that must travel unchanged through mirror/copy (protection, guard verdict, origin,
    # repair marks) live here until they earn a typed field.
    extra: dict[str, Any] = {}


class AuxRecord(msgspec.Struct, omit_defaults=True):
    """An auxiliary immutable record (`aux/`). `type` says what it is:
    - "protection": `target` is a snapshot id kept by forget/prune until `data["until"]` (RFC 3339).
      Protections are only ever added: a later record can extend, nothing can shorten one.
    Later types (drill reports, guard evidence) add their own `data` keys."""

    type: str
    time: str
    target: str = ""
    data: dict[str, Any] = {}


MAX_COMPRESSION_LEVEL = 19  # zstd levels 1..19 (20+ need window sizes a reader would have to allow)


class RepoSecrets(msgspec.Struct, omit_defaults=True):
    """Encrypted part of the config: per-repository secrets shared by every key slot."""

    id_key: bytes  # keyed BLAKE3 key for blob ids
    chunker_seed: int  # 1..2^63-1, XORed into the FastCDC gear table
    chunker_min: int
    chunker_avg: int
    chunker_max: int
    pack_size: int  # target pack size in bytes
    compression_level: Annotated[int, msgspec.Meta(ge=1, le=MAX_COMPRESSION_LEVEL)] = 3


class Config(msgspec.Struct, omit_defaults=True):
    """The `config` file (JSON). `version` is readable without a password."""

    version: int
    id: str
    created: str
    secrets: bytes  # sealed RepoSecrets msgpack, AAD = b"cermin/config/" + id
    extra: dict[str, Any] = {}


class KeyFile(msgspec.Struct, omit_defaults=True):
    """A key slot (JSON): the master key wrapped by a key derived from one password."""

    version: int
    kdf: str  # "argon2id"
    memory_kib: int
    iterations: int
    lanes: int
    salt: bytes
    wrapped: bytes  # nonce(12) || AES-GCM(kek, master_key, aad=b"cermin/key")
    created: str = ""
    hostname: str = ""
    username: str = ""


class Lock(msgspec.Struct, omit_defaults=True):
    time: str
    exclusive: bool
    hostname: str
    pid: int
    username: str = ""
    operation: str = ""


class IndexPack(msgspec.Struct, array_like=True, gc=False):
    id: bytes  # 32-byte pack id (BLAKE3 of the pack file)
    blobs: bytes  # concatenated 45-byte entries, see format.index

    def __post_init__(self) -> None:
        # Checked when decoded (msgspec turns this into a ValidationError: the index file is skipped
        # with a warning), not left to whoever slices the entries later.
        if len(self.id) != ID_LEN:
            raise ValueError(f"a pack id of {len(self.id)} bytes")
        if len(self.blobs) % INDEX_ENTRY_SIZE:
            raise ValueError(f"pack entries of {len(self.blobs)} bytes, not whole {INDEX_ENTRY_SIZE}-byte records")


class IndexFile(msgspec.Struct, array_like=True, gc=False):
    packs: list[IndexPack]
    supersedes: list[bytes] = []  # index files this one replaces (written by prune/repair)


_enc = msgspec.msgpack.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _enc.encode(obj)


def decode(data: bytes, cls: type):
    return msgspec.msgpack.decode(data, type=cls)


tree_decoder = msgspec.msgpack.Decoder(Tree)
snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)
index_decoder = msgspec.msgpack.Decoder(IndexFile)
