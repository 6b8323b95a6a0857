"""What `cermin guard scan` (guard/scan.py) reads with: YARA rules (the optional yara-x package) and
the heads and whole contents of data blobs, a pack read once when it holds many of the blobs wanted."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cermin.engine.observer import ENTROPY_BYTES
from cermin.errors import CerminError, CorruptObject, ObjectNotFound, UsageError
from cermin.format import pack
from cermin.format.records import ID_LEN, Node
from cermin.repo.packcache import PackCache
from cermin.repo.repository import Repository

YARA_TIMEOUT = 60  # seconds for one file
PACK_WHOLE_BLOBS = 8  # a pack holding this many wanted blobs (or a quarter of its bytes) is read whole
INSTALL_HINT = "pip install 'cermin[yara]'"


# ---- YARA ------------------------------------------------------------------------------------
class YaraRules:
    """Compiled YARA rules (yara-x), with one scanner per thread (a scanner is not thread-safe)."""

    def __init__(self, rules, digest: str, files: list[str]) -> None:
        self.rules = rules
        self.digest = digest  # sha256 over the rule files' names and contents
        self.files = files
        self._tls = threading.local()

    def match(self, data: bytes) -> list[str]:
        import yara_x

        sc = getattr(self._tls, "scanner", None)
        if sc is None:
            sc = self._tls.scanner = yara_x.Scanner(self.rules)
            sc.set_timeout(YARA_TIMEOUT)
        return sorted({r.identifier for r in sc.scan(data).matching_rules})


def load_yara(path: str) -> YaraRules:
    """Compile the rules in `path` (a file, or a directory of *.yar / *.yara files). Raises CerminError
    with one line when yara-x is missing or a rule does not compile."""
    try:
        import yara_x
    except ImportError:
        raise CerminError(f"--yara needs the yara-x package, an optional extra: {INSTALL_HINT}") from None
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith((".yar", ".yara")))
        if not files:
            raise UsageError(f"no *.yar or *.yara files in {path}")
    else:
        files = [path]
    compiler = yara_x.Compiler()
    digest = hashlib.sha256()
    for f in files:
        try:
            with open(f, "rb") as fh:
                src = fh.read()
        except OSError as e:
            raise CerminError(f"cannot read YARA rules {f}: {e.strerror}") from None
        digest.update(os.path.basename(f).encode() + b"\0" + src + b"\0")
        compiler.add_include_dir(os.path.dirname(os.path.abspath(f)))
        try:
            compiler.add_source(src.decode("utf-8", "replace"), origin=f)
        except yara_x.CompileError as e:
            first = " ".join(str(e).split("\n")[:2])
            raise CerminError(f"YARA rules {f} do not compile: {first}") from None
    return YaraRules(compiler.build(), digest.hexdigest(), [os.path.basename(f) for f in files])


# ---- reading blobs ---------------------------------------------------------------------------
class BlobSet:
    """Blob ids in bounded memory: their first 8 bytes, sorted (a collision only makes one chunk count
    as deduplicated)."""

    FLUSH = 32 << 20

    def __init__(self) -> None:
        self._buf = bytearray()
        self._parts: list[np.ndarray] = []
        self._arr: np.ndarray | None = None

    def add(self, content: bytes) -> None:
        """A node's content (concatenated 32-byte ids)."""
        self._buf += content[: len(content) // ID_LEN * ID_LEN]
        if len(self._buf) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._parts.append(np.unique(id_prefixes(bytes(self._buf))))
            self._buf = bytearray()

    def freeze(self) -> None:
        self._flush()
        self._arr = np.unique(np.concatenate(self._parts)) if self._parts else np.empty(0, ">u8")
        self._parts = []

    def mask(self, content: bytes) -> np.ndarray:
        """For each blob of a content: is it in the set."""
        return np.isin(id_prefixes(content[: len(content) // ID_LEN * ID_LEN]), self._arr)


def id_prefixes(content: bytes) -> np.ndarray:
    return np.frombuffer(content, np.uint8).reshape(-1, ID_LEN)[:, :8].copy().view(">u8").ravel()


def blob_ids(node: Node) -> list[bytes]:
    c = node.content
    return [c[i : i + ID_LEN] for i in range(0, len(c) // ID_LEN * ID_LEN, ID_LEN)]


def load_one(repo: Repository, bid: bytes, cache: PackCache | None = None) -> bytes:
    if cache is not None:
        try:
            return cache.load_blob(bid, pack.DATA)
        except CorruptObject:
            pass  # a versioned store may still hold cermin's own version: repo.load_blob tries it
    return repo.load_blob(bid, pack.DATA)


def read_heads(repo: Repository, ids, workers: int = 4, on_bytes=None) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """The first ENTROPY_BYTES bytes of each data blob in `ids`, grouped by pack: a pack holding many
    of them (PACK_WHOLE_BLOBS, or a quarter of its size) is read once whole, others blob by blob.
    Returns (blob id -> head, blob id -> why it could not be read)."""
    by_pack: dict[bytes, list] = defaultdict(list)
    bad: dict[bytes, str] = {}
    for bid in set(ids):
        loc = repo.index.lookup(bid)
        if loc is None:
            bad[bid] = f"blob {bid.hex()[:16]} is not in the index (missing data)"
        elif not repo.type_fits(loc.type, pack.DATA):
            bad[bid] = f"blob {bid.hex()[:16]} is not a data blob"
        else:
            by_pack[loc.pack_id].append((bid, loc))

    def one(item) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
        pack_id, blobs = item
        out: dict[bytes, bytes] = {}
        errs: dict[bytes, str] = {}
        cipher = data = None
        if len(blobs) >= PACK_WHOLE_BLOBS or 4 * sum(loc.length for _, loc in blobs) >= repo.secrets.pack_size:
            name = pack_id.hex()
            try:
                data = repo.load_pack(name)
                cipher = pack.pack_cipher(repo.keys, data, f"pack {name[:12]}")
            except (CorruptObject, ObjectNotFound):
                data = None  # blob by blob below: each gets its own error
        for bid, loc in blobs:
            try:
                if data is not None:
                    try:
                        ct = data[loc.offset : loc.offset + loc.length]
                        blob = repo.open_blob(cipher, loc.offset, loc.type, bid, ct, loc.raw_length)
                    except CorruptObject:
                        blob = repo.load_blob(bid, pack.DATA)
                else:
                    blob = repo.load_blob(bid, pack.DATA)
                out[bid] = blob[:ENTROPY_BYTES]
                if on_bytes is not None:
                    on_bytes(len(blob))
            except (CorruptObject, ObjectNotFound) as e:
                errs[bid] = str(e)
        return out, errs

    heads: dict[bytes, bytes] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cermin-scan") as ex:
        for out, errs in ex.map(one, by_pack.items()):
            heads.update(out)
            bad.update(errs)
    return heads, bad
