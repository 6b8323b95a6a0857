"""The agent's Ed25519 key, which signs drill reports (ops/drill.py, FORMAT.md §10a `drill_report`).

The private key is a PEM (PKCS#8, unencrypted) file of mode 0600 — by default `<workdir>/agent.key`,
made by `cermin agent keygen` or on the first drill — and a key readable by group or others is
refused, as ssh refuses one. The public key sits next to it as `<key>.pub` (PEM SubjectPublicKeyInfo,
so `openssl pkey -pubin` reads it). A key is named by its fingerprint: `sha256:` and the SHA-256 (hex)
of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass

from cermin.errors import CerminError, UsageError


class AgentKeyError(CerminError):
    """The agent key cannot be read, made or used."""


def fingerprint(public_raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(public_raw).hexdigest()


@dataclass
class AgentKey:
    private: object  # Ed25519PrivateKey
    path: str = ""

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization as s

        return self.private.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_raw)

    def public_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization as s

        return self.private.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def generate_key(path: str, overwrite: bool = False) -> AgentKey:
    """A new key written to `path` (mode 0600, created exclusively unless `overwrite`) and `path.pub`."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = AgentKey(Ed25519PrivateKey.generate(), path)
    pem = key.private.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}-{secrets.token_hex(4)}"  # per call: the agent drills from several threads
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails if a key is already there: never replaced by accident
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        with open(path + ".pub", "wb") as f:
            f.write(key.public_pem())
    except FileExistsError:
        raise AgentKeyError(f"{path} already exists (keep it: reports it signed name it)") from None
    except OSError as e:
        raise AgentKeyError(f"cannot write the agent key {path}: {e.strerror or e}") from None
    return key


def load_key(path: str) -> AgentKey:
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise AgentKeyError(f"no agent key at {path} (`cermin agent keygen --key-file {path}` makes one)") from None
    except OSError as e:
        raise AgentKeyError(f"cannot read the agent key {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise AgentKeyError(f"the agent key {path} is open to others (mode {mode:o}): chmod 600 it")
        data = f.read(64 * 1024)
    try:
        private = s.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise AgentKeyError(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise AgentKeyError(f"{path} is not an Ed25519 key")
    return AgentKey(private, path)


def load_or_create_key(path: str) -> tuple[AgentKey, bool]:
    """(the key, True when it was made now)."""
    if os.path.lexists(path):
        return load_key(path), False
    try:
        return generate_key(path), True
    except AgentKeyError:
        if os.path.lexists(path):  # another process made it first
            return load_key(path), False
        raise


def read_public_key(spec: str) -> bytes:
    """A trusted public key (raw 32 bytes) from a file — PEM public key (`.pub`), or the private key
    itself — or given inline as the base64 of the raw key."""
    from cryptography.hazmat.primitives import serialization as s
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if os.path.exists(spec):
        try:
            with open(spec, "rb") as f:
                data = f.read(64 * 1024)
        except OSError as e:
            raise UsageError(f"cannot read the key {spec}: {e.strerror or e}") from None
        try:
            if b"PRIVATE KEY" in data:
                key = s.load_pem_private_key(data, password=None)
                pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else None
            else:
                pub = s.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise UsageError(f"{spec} is not a PEM Ed25519 key: {e}") from None
        if not isinstance(pub, Ed25519PublicKey):
            raise UsageError(f"{spec} is not an Ed25519 key")
        return pub.public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    try:
        raw = base64.b64decode(spec.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"{spec!r} is neither a key file nor the base64 of a 32-byte Ed25519 public key")
    return raw


@dataclass
class KeyMade:
    """`cermin agent keygen`: the new key's files and fingerprint."""

    path: str
    public_path: str
    fingerprint: str
    public_b64: str
    exit_code = 0

    def to_json(self) -> list[dict]:
        d = {"message_type": "agent_key", "key_file": self.path, "public_key_file": self.public_path}
        return [d | {"fingerprint": self.fingerprint, "public_key": self.public_b64}]

    def to_text(self, verbose: int = 0):
        from cermin.engine.results import answer, note

        return [
            answer(f"{self.fingerprint}  {self.public_b64}"),
            note(f"private key {self.path} (mode 600: keep it on the agent's host only)"),
            note(f"public key {self.public_path}: give it to auditors (`cermin drill verify REPORT --key ...`)"),
        ]


def keygen(path: str) -> KeyMade:
    key = generate_key(path)
    return KeyMade(path, path + ".pub", key.fingerprint, key.public_b64)
