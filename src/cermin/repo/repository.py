"""Repository: config and key slots, sealed objects, the blob index and snapshots."""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec

from cermin.backend.base import CONFIG_NAME, Backend, Kind
from cermin.errors import (
    CorruptObject,
    ForeignObject,
    ObjectNotFound,
    RepositoryNotFound,
    StoredDamaged,
    UnsupportedVersion,
    UsageError,
)
from cermin.format import chunker, crypto, pack, records
from cermin.format.crypto import MasterKeys
from cermin.format.records import FORMAT_VERSION, Config, RepoSecrets, Snapshot, Tree
from cermin.repo import keys as keyslots
from cermin.repo.masterindex import MasterIndex
from cermin.util import now_rfc3339, plural

# Local disks: 8 MiB packs halve the memory a backup holds in packs being filled and uploaded.
# Object stores (S3, the HTTP server) set 16 MiB: fewer requests, per shared/DESIGN.md.
DEFAULT_PACK_SIZE = 8 * 1024 * 1024
SAVE_ATTEMPTS = 3  # stores of one object found damaged after its save (backend/verifying.py)


TREE_CACHE_TREES = 256
TREE_CACHE_BYTES = 4 * 1024 * 1024  # encoded bytes of the cached trees
CIPHER_CACHE = 64  # packs whose derived key load_blob keeps


def _aad(kind: Kind) -> bytes:
    return b"cermin/" + kind.value.encode()


def _configure(backend: Backend, extra: dict) -> None:
    """Backends that need repository settings (the S3 Object Lock policy) get them from the config."""
    backend.configure(extra)


def config_aad(config: Config) -> bytes:
    """Binds every plaintext config field (the Object Lock policy among them) to the sealed secrets:
    a config edited by someone without the master key no longer opens."""
    fields = {"version": config.version, "id": config.id, "created": config.created, "extra": config.extra}
    return b"cermin/config/" + json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class Repository:
    def __init__(self, backend: Backend, keys: MasterKeys, config: Config, secrets: RepoSecrets, key_name: str):
        self.backend = backend
        self.keys = keys
        self.config = config
        self.secrets = secrets
        self.key_name = key_name
        self.index = MasterIndex()
        self.index_files: list[str] = []
        self.skipped_index_files: dict[str, str] = {}  # index file -> why it was left out
        # Packs in storage that no index file in force names (name -> size), as seen by load_index:
        # an interrupted backup's durable packs, which the next backup adopts (indexfiles.adopt_packs).
        self.unindexed_packs: dict[str, int] | None = None
        self.warnings: list[str] = []
        self.on_warning: Callable[[str], None] | None = None
        self._blob_id = crypto.keyed_hasher(secrets.id_key)
        # Version 2 named trees like data (a file holding a tree's bytes deduplicated into it).
        separate = config.version >= records.TREE_KEY_VERSION
        self._tree_id = crypto.keyed_hasher(crypto.tree_id_key(secrets.id_key)) if separate else self._blob_id
        # Decoded trees, bounded by their encoded size: a node decodes to ~5x its bytes, and 256 trees
        # of 1,000 files each held ~180 MiB (a re-backup of 200,000 files peaked at 274 MiB).
        self._tree_cache: OrderedDict[bytes, tuple[Tree, int]] = OrderedDict()
        self._tree_cache_bytes = 0
        self._tree_lock = threading.Lock()  # also guards _ciphers
        self._ciphers: OrderedDict[str, object] = OrderedDict()  # pack name -> its blobs' cipher

    # ---- lifecycle -------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        kdf: crypto.KdfParams | None = None,
        pack_size: int | None = None,
        chunker_params: tuple[int, int, int] | None = None,
        chunker_seed: int | None = None,
        extra: dict | None = None,
        secrets_from: Repository | None = None,
        compression_level: int | None = None,
    ) -> Repository:
        """A new repository with its own master key and key slot. `secrets_from`: another (open)
        repository whose blob-id key and chunker parameters the new one takes (FORMAT.md §2,
        `init --copy-chunker-params-from`): blobs then keep their ids between the two, so a mirror
        copies trees unchanged and deduplicates against what it already holds."""
        if (extra or {}).get("object_lock") is not None and not backend.caps.retention:
            raise UsageError("an Object Lock policy needs an S3 repository (s3:...)")
        if compression_level is not None and not 1 <= compression_level <= records.MAX_COMPRESSION_LEVEL:
            raise UsageError(f"the compression level must be 1..{records.MAX_COMPRESSION_LEVEL}")
        _configure(backend, extra or {})
        backend.create()
        master = MasterKeys.generate()
        mn, avg, mx = chunker_params or (chunker.DEFAULT_MIN, chunker.DEFAULT_AVG, chunker.DEFAULT_MAX)
        secrets = RepoSecrets(
            id_key=os.urandom(32),
            chunker_seed=chunker_seed or (pysecrets.randbelow((1 << 63) - 1) + 1),
            chunker_min=mn,
            chunker_avg=avg,
            chunker_max=mx,
            pack_size=pack_size or backend.caps.default_pack_size,
        )
        if secrets_from is not None:
            f = secrets_from.secrets
            secrets.id_key, secrets.chunker_seed = f.id_key, f.chunker_seed
            secrets.chunker_min, secrets.chunker_avg, secrets.chunker_max = f.chunker_min, f.chunker_avg, f.chunker_max
            secrets.compression_level = f.compression_level
        if compression_level is not None:
            secrets.compression_level = compression_level
        # Round-trip `extra` through JSON so the AAD is computed over exactly what readers will see.
        config = Config(
            # a copy of another repository's ids names its trees as that one does
            version=secrets_from.config.version if secrets_from is not None else FORMAT_VERSION,
            id=os.urandom(32).hex(),
            created=now_rfc3339(),
            secrets=b"",
            extra=json.loads(json.dumps(extra or {})),
        )
        config.secrets = crypto.seal(master, pack.compress(records.encode(secrets), 3), config_aad(config))
        # Key slot first, config last: a directory with a config is a usable repository.
        kf = keyslots.make_keyfile(master.master, password, kdf)
        key_data = keyslots.encode_keyfile(kf)
        key_name = crypto.file_id(key_data)
        backend.save(Kind.KEY, key_name, key_data)
        backend.save(Kind.CONFIG, CONFIG_NAME, msgspec.json.encode(config))
        return cls(backend, master, config, secrets, key_name)

    @staticmethod
    def read_config(backend: Backend) -> Config:
        try:
            data = backend.load(Kind.CONFIG, CONFIG_NAME)
        except ObjectNotFound:
            raise RepositoryNotFound(f"no repository at {backend.location} (run `cermin init`)") from None
        try:
            probe = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise CorruptObject(f"repository config at {backend.location} is corrupted (not valid JSON)") from None
        version = probe.get("version") if isinstance(probe, dict) else None
        if isinstance(version, int) and version not in records.READ_VERSIONS:
            raise UnsupportedVersion(
                f"repository format version {version} is not supported by this cermin "
                f"(supports versions {', '.join(map(str, records.READ_VERSIONS))}); use a matching cermin release"
            )
        try:
            config = msgspec.json.decode(data, type=Config)
        except msgspec.ValidationError as e:
            raise CorruptObject(f"repository config is corrupted ({e})") from None
        _configure(backend, config.extra)
        return config

    @classmethod
    def open(cls, backend: Backend, password: bytes, config: Config | None = None) -> Repository:
        """Open with a password; `config` may be one already read (saves a round trip on S3/HTTP)."""
        config = config or cls.read_config(backend)
        warnings: list[str] = []

        def secrets_of(master: bytes) -> tuple[MasterKeys, RepoSecrets]:
            keys = MasterKeys(master)
            try:
                raw = crypto.unseal(keys, config.secrets, config_aad(config), "repository config")
                secrets = records.decode(pack.decompress(raw, "repository config"), RepoSecrets)
            except CorruptObject:
                raise CorruptObject(
                    "the repository config failed authentication: its fields (the Object Lock policy among them) "
                    "were changed by someone without the repository key; refusing to use it"
                ) from None
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                raise CorruptObject(f"repository config secrets are corrupted ({e})") from None
            return keys, secrets

        master, key_name, (keys, secrets) = keyslots.open_master(
            backend, password, config.id, warnings.append, secrets_of
        )
        repo = cls(backend, keys, config, secrets, key_name)
        for w in warnings:
            repo.warn(w)
        return repo

    def warn(self, message: str) -> None:
        """Record a problem that did not stop the operation (a skipped planted object, a key slot out
        of bounds); callers show `warnings`, or set `on_warning` to see them as they happen."""
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def close(self) -> None:
        self.backend.close()

    # ---- ids and chunking ------------------------------------------------------------------
    def blob_id(self, data) -> bytes:
        """The id of a data blob."""
        return self._blob_id(data)

    def tree_id(self, data) -> bytes:
        """The id of an encoded tree."""
        return self._tree_id(data)

    def id_of(self, blob_type: int, data) -> bytes:
        return self._tree_id(data) if blob_type == pack.TREE else self._blob_id(data)

    def type_fits(self, stored: int, wanted: int | None) -> bool:
        """Whether a blob stored with type `stored` may be read as `wanted`. In version 2 a file and a
        tree with the same bytes share one id (one key names both) and whichever came second was
        deduplicated into the other: equal ids there mean equal bytes, so either type serves both."""
        if wanted is None or stored == wanted:
            return True
        return self._tree_id is self._blob_id and {stored, wanted} <= {pack.DATA, pack.TREE}

    def shares_ids_with(self, other: Repository) -> bool:
        """Whether `other` names every blob as this repository does (`init --copy-chunker-params-from`):
        blobs and trees then copy between them as they are."""
        return self.secrets.id_key == other.secrets.id_key and self.tree_id(b"") == other.tree_id(b"")

    def make_chunker(self):
        s = self.secrets
        return chunker.make_chunker(s.chunker_seed, s.chunker_min, s.chunker_avg, s.chunker_max)

    # ---- sealed standalone objects (index, snapshot, lock) ---------------------------------
    def seal_object(self, kind: Kind, plaintext: bytes) -> bytes:
        payload = pack.compress(plaintext, self.secrets.compression_level)
        return crypto.seal(self.keys, payload, _aad(kind))

    def save_object(self, kind: Kind, plaintext: bytes) -> str:
        """Seal and store; when a verifying backend (backend/verifying.py) finds the object stored
        damaged, seal it again (a fresh nonce: a new name) and store that, up to SAVE_ATTEMPTS times."""
        for attempt in range(SAVE_ATTEMPTS):
            data = self.seal_object(kind, plaintext)
            name = crypto.file_id(data)
            try:
                self.backend.save(kind, name, data)
            except StoredDamaged:
                if attempt + 1 == SAVE_ATTEMPTS:
                    raise
                continue
            return name
        raise AssertionError("unreachable")

    def load_object(self, kind: Kind, name: str) -> bytes:
        """The plaintext of a sealed object. CorruptObject when its bytes do not match its name
        (damage); ForeignObject when they match but fail authentication or decompression (an object
        nobody holding the key wrote: planted)."""
        data = self.backend.load(kind, name)
        what = f"{kind.value}/{name[:12]}"
        if crypto.file_id(data) != name:
            if self.backend.caps.versions:  # someone may have planted a newer version
                data = self.backend.load_original(kind, name)
            if crypto.file_id(data) != name:
                raise CorruptObject(f"{what} is damaged (content does not match its name)")
        try:
            return pack.decompress(crypto.unseal(self.keys, data, _aad(kind), what), what, pack.MAX_OBJECT_SIZE)
        except ForeignObject:
            raise
        except CorruptObject as e:
            raise ForeignObject(f"{e} — not written with this repository's key (planted?)") from None

    def load_record(self, kind: Kind, name: str, decode):
        """A sealed object decoded with `decode` (a msgspec decoder's method or a type); a record that
        authenticates but does not decode is foreign too."""
        raw = self.load_object(kind, name)
        try:
            return decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ForeignObject(f"{kind.value}/{name[:12]} cannot be decoded ({e})") from None

    # ---- index -----------------------------------------------------------------------------
    def load_index(self, workers: int = 4) -> None:
        """Load every index file in force. A file that is damaged or planted (fails its name,
        authentication or decoding) is left out with a warning — its packs' blobs then count as
        absent, so a backup stores them again and a restore names what it cannot read — instead of
        stopping every backup, restore and prune. Packs an index names but storage no longer has are
        left out too: a backup must never deduplicate against a blob that does not exist."""
        names = [n for n, _ in self.backend.list(Kind.INDEX)]

        def load(name: str):
            try:
                return name, self.load_record(Kind.INDEX, name, records.index_decoder.decode)
            except CorruptObject as e:  # an I/O error still propagates: it proves nothing
                return name, e

        with ThreadPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(load, names))
        loaded = []
        for name, idx in results:
            if isinstance(idx, CorruptObject):
                self.skipped_index_files[name] = str(idx)
                self.warn(f"index file {name[:12]} skipped: {idx}; run `cermin check`")
            else:
                loaded.append((name, idx))
        present = dict(self.backend.list(Kind.DATA))  # listed after the index files
        missing: set[bytes] = set()
        # A file superseded by another present file is ignored: prune could not delete it (e.g.
        # under Object Lock), and the packs it names may be gone.
        superseded = {s.hex() for _, idx in loaded for s in idx.supersedes}
        for name, idx in loaded:
            if name in superseded:
                continue
            for p in idx.packs:
                if p.id.hex() not in present:
                    missing.add(p.id)
                    continue
                self.index.add_pack_bulk(p.id, p.blobs)
            self.index_files.append(name)
        indexed = {p.hex() for p in self.index.packs}
        self.unindexed_packs = {n: size for n, size in present.items() if n not in indexed}
        if missing:
            first = min(missing).hex()[:12]
            self.warn(
                f"missing: {plural(len(missing), 'pack')} named by the index ({first}...); their blobs are treated "
                "as absent; run `cermin check`"
            )
        self.index.build()

    def save_index(self, packs: list[records.IndexPack]) -> str:
        return self.save_object(Kind.INDEX, records.encode(records.IndexFile(packs=packs)))

    def load_pack(self, name: str) -> bytes:
        """A whole pack, checked against its name; on a versioned store a planted newer version is
        skipped in favour of the one cermin wrote. Returns the bytes even when damaged (callers
        authenticate each blob and report what fails)."""
        data = self.backend.load(Kind.DATA, name)
        if crypto.file_id(data) != name:
            if self.backend.caps.versions:
                first = self.backend.load_original(Kind.DATA, name)
                if crypto.file_id(first) == name:
                    return first
        return data

    # ---- blobs -----------------------------------------------------------------------------
    def load_blob(self, blob_id: bytes, want_type: int | None = None) -> bytes:
        loc, pack_name, what = self._locate(blob_id, want_type)
        try:
            return self._read_blob(self.backend.load, pack_name, loc, blob_id, what, cached=True)
        except CorruptObject as e:
            if self.backend.caps.versions:
                try:  # a newer version planted over the pack: cermin's version
                    return self._read_blob(self.backend.load_original, pack_name, loc, blob_id, what)
                except CorruptObject:
                    pass
            return self.alternate_blob(blob_id, want_type, e)

    def alternate_blob(self, blob_id: bytes, want_type: int | None, first: CorruptObject) -> bytes:
        """The blob from another location the index knows for it, when the first failed: an index
        file planted (by a key holder) to point at the wrong place must not make a blob stored
        elsewhere unreadable. `first` is raised when none of them holds it."""
        for loc in self.index.alternates(blob_id):
            if not self.type_fits(loc.type, want_type):
                continue
            name = loc.pack_id.hex()
            what = f"blob {blob_id.hex()[:16]} in pack {name[:12]}"
            for load in (
                (self.backend.load, self.backend.load_original) if self.backend.caps.versions else (self.backend.load,)
            ):
                try:
                    return self._read_blob(load, name, loc, blob_id, what)
                except (CorruptObject, ObjectNotFound):
                    pass
        raise first

    def original_blob(self, blob_id: bytes, want_type: int | None = None) -> bytes:
        """A blob read from the first version of its pack: on a versioned store, what cermin wrote
        under a newer version someone planted (for readers that tried the newest version first)."""
        loc, pack_name, what = self._locate(blob_id, want_type)
        return self._read_blob(self.backend.load_original, pack_name, loc, blob_id, what)

    def _locate(self, blob_id: bytes, want_type: int | None):
        loc = self.index.lookup(blob_id)
        if loc is None:
            raise CorruptObject(f"blob {blob_id.hex()[:16]} is not in the index (missing data)")
        if not self.type_fits(loc.type, want_type):
            raise CorruptObject(f"blob {blob_id.hex()[:16]} has type {loc.type}, expected {want_type}")
        pack_name = loc.pack_id.hex()
        return loc, pack_name, f"blob {blob_id.hex()[:16]} in pack {pack_name[:12]}"

    def _read_blob(self, load, pack_name: str, loc, blob_id: bytes, what: str, cached: bool = False) -> bytes:
        """`cached`: the pack's cipher may come from, and go to, the small per-pack cache (reads of
        many blobs of one pack, like a backup's walk of the parent's trees, derive it once). Only
        for the plain `load`: the original version of a replaced object is read afresh."""
        cipher = None
        if cached:
            with self._tree_lock:
                cipher = self._ciphers.get(pack_name)
        if cipher is None:
            prefix = load(Kind.DATA, pack_name, 0, pack.PREFIX_LEN)
            cipher = pack.pack_cipher(self.keys, prefix, what)
        ct = load(Kind.DATA, pack_name, loc.offset, loc.length)
        if len(ct) != loc.length:
            raise CorruptObject(f"{what}: pack is truncated")
        data = self.open_blob(cipher, loc.offset, loc.type, blob_id, ct, loc.raw_length)
        if cached:  # only a cipher that just opened a blob (authenticated) is kept
            with self._tree_lock:
                self._ciphers[pack_name] = cipher
                self._ciphers.move_to_end(pack_name)
                if len(self._ciphers) > CIPHER_CACHE:
                    self._ciphers.popitem(last=False)
        return data

    def open_blob(
        self, cipher, offset: int, blob_type: int, blob_id: bytes, ct: bytes, raw_len: int = pack.MAX_BLOB_SIZE
    ) -> bytes:
        """Decrypt, decompress (at most `raw_len` bytes, its declared length) and verify one blob
        against its id."""
        what = f"blob {blob_id.hex()[:16]}"
        problem = self.entry_problem(blob_type, len(ct), raw_len)
        if problem:
            raise CorruptObject(f"{what}: {problem}")
        data = pack.decompress(pack.open_blob(cipher, offset, blob_type, blob_id, ct, what), what, raw_len)
        if self.id_of(blob_type, data) != blob_id:
            raise CorruptObject(f"{what}: content does not match its id")
        if raw_len != pack.MAX_BLOB_SIZE and len(data) != raw_len:  # every length after it would be off
            raise CorruptObject(f"{what}: {len(data)} bytes, its index says {raw_len}")
        return data

    def entry_problem(self, blob_type: int, length: int, raw_len: int) -> str | None:
        """Why an index entry's lengths cannot be those of a blob this repository wrote, or None; asked
        before a read is sized by them. A data blob is at most one chunk (`chunker_max`); its ciphertext
        at most the plaintext, a codec byte and the tag (a payload is stored raw unless zstd shrinks it),
        with room left for zstd's worst case."""
        if blob_type == pack.DATA and raw_len != pack.MAX_BLOB_SIZE and raw_len > self.secrets.chunker_max:
            return f"its index declares {raw_len} bytes, more than a chunk of this repository"
        if length > raw_len + (raw_len >> 7) + 128:
            return f"its index declares {length} stored bytes for {raw_len}"
        return None

    def load_tree(self, tree_id: bytes, cache: bool = True) -> Tree:
        """A tree blob, decoded; `cache=False` for a caller that reads each tree once (backup's walk)."""
        with self._tree_lock:
            hit = self._tree_cache.get(tree_id)
            if hit is not None:
                self._tree_cache.move_to_end(tree_id)
                return hit[0]
        raw = self.load_blob(tree_id, pack.TREE)
        try:
            t = records.tree_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise CorruptObject(f"tree {tree_id.hex()[:16]} cannot be decoded ({e})") from None
        if cache:
            with self._tree_lock:
                if tree_id not in self._tree_cache:
                    self._tree_cache[tree_id] = (t, len(raw))
                    self._tree_cache_bytes += len(raw)
                while self._tree_cache and (
                    len(self._tree_cache) > TREE_CACHE_TREES or self._tree_cache_bytes > TREE_CACHE_BYTES
                ):
                    self._tree_cache_bytes -= self._tree_cache.popitem(last=False)[1][1]
        return t

    # ---- snapshots -------------------------------------------------------------------------
    def save_snapshot(self, snap: Snapshot) -> str:
        return self.save_object(Kind.SNAPSHOT, records.encode(snap))

    def load_snapshot(self, name: str) -> Snapshot:
        return self.load_record(Kind.SNAPSHOT, name, records.snapshot_decoder.decode)
