"""Local directory backend: the embedded default.

Layout: config, keys/<id>, data/<first 2 hex>/<id>, index/<id>, snapshots/<id>, locks/<id>.
Writes go to a temporary file that is fsynced, then hard-linked to its final name (link fails if
the name exists, so an object can never be replaced), then the directory is fsynced.
"""

from __future__ import annotations

import errno
import os
import secrets

from cermin.backend.base import CONFIG_NAME, BackendBase, Capabilities, Kind, Leftover
from cermin.errors import (
    CerminError,
    ObjectExists,
    ObjectNotFound,
    ReadOnlyRepository,
    RepositoryExists,
    RepositoryNotFound,
)
from cermin.util import write_all

_DIRS = [k for k in Kind if k is not Kind.CONFIG]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(e: OSError, what: str) -> CerminError:
    if e.errno == errno.ENOSPC:
        return CerminError(f"no space left on device while writing {what}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # a read-only mount, or a directory not ours
        return ReadOnlyRepository(f"permission denied writing {what}: {e.strerror}")
    return CerminError(f"cannot write {what}: {e.strerror or e}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _publish(fd: int, tmp: str, final: str, what: str, root: str) -> None:
    """Make the written temporary file `tmp` (open as `fd`, closed here) the object at `final`: data
    durable first, then read-only, then linked (never replacing an object), then the link durable."""
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o400)  # objects are read-only once written
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise ObjectExists(f"{what} already exists") from None
        _fsync_dir(os.path.dirname(final))
    except OSError as e:
        raise _io_error(e, f"{what} in {root}") from None


class _FileSpool:
    """A new object written straight to a temporary file (`LocalBackend.spool`)."""

    whole = False  # committed in place, never read back

    def __init__(self, backend: LocalBackend, kind: Kind, fd: int, tmp: str) -> None:
        self.backend = backend
        self.kind = kind
        self.fd = fd
        self.tmp = tmp
        self.size = 0

    def write(self, parts: list) -> None:
        try:
            write_all(self.fd, parts)
        except OSError as e:
            raise _io_error(e, f"{self.kind.value}/ (a new object) in {self.backend.root}") from None
        self.size += sum(len(p) for p in parts)

    def commit(self, name: str) -> None:
        fd, self.fd = self.fd, -1
        try:
            _publish(fd, self.tmp, self.backend._path(self.kind, name), f"{self.kind.value}/{name}", self.backend.root)
        finally:
            _unlink_quietly(self.tmp)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        _unlink_quietly(self.tmp)


class LocalBackend(BackendBase):
    caps = Capabilities()  # a directory: unversioned, no retention, 8 MiB packs

    def __init__(self, path: str) -> None:
        self.root = os.path.abspath(path)
        self.location = self.root
        self._made_dirs: set[str] = set()

    def _path(self, kind: Kind, name: str) -> str:
        if kind is Kind.CONFIG:
            return os.path.join(self.root, CONFIG_NAME)
        if kind is Kind.DATA:
            return os.path.join(self.root, kind.value, name[:2], name)
        return os.path.join(self.root, kind.value, name)

    def check_creatable(self) -> None:
        """Refuse early (before a password is asked) what `create` would refuse: a repository there
        already, a file, or a directory of user files. A missing or empty directory is fine, and so
        is the bare layout an interrupted init left: repository files never mix with user files."""
        if os.path.exists(os.path.join(self.root, CONFIG_NAME)):
            raise RepositoryExists(f"a repository already exists at {self.root}")
        try:
            entries = os.listdir(self.root)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            raise RepositoryExists(f"cannot create a repository at {self.root}: it is a file") from None
        except OSError as e:
            raise _io_error(e, f"repository directory {self.root}") from None
        layout = {k.value for k in _DIRS}
        layout.add("lost+found")  # the root of a fresh filesystem is empty too
        foreign = sorted(n for n in entries if n not in layout and not n.startswith(".tmp-"))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RepositoryExists(
                f"cannot create a repository in {self.root}: the directory is not empty ({shown}); "
                "use a new or empty directory"
            )

    def create(self) -> None:
        self.check_creatable()
        try:
            os.makedirs(self.root, exist_ok=True)
            for k in _DIRS:
                os.makedirs(os.path.join(self.root, k.value), exist_ok=True)
            for i in range(256):
                os.makedirs(os.path.join(self.root, Kind.DATA.value, f"{i:02x}"), exist_ok=True)
        except OSError as e:
            raise _io_error(e, f"repository directory {self.root}") from None

    def save(self, kind: Kind, name: str, data: bytes) -> None:
        final = self._path(kind, name)
        d = os.path.dirname(final)
        if kind is Kind.AUX and not os.path.isdir(d):  # repositories created before this kind existed
            os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".tmp-{name[:16]}-{secrets.token_hex(6)}")
        what = f"{kind.value}/{name}"
        fd = self._create(tmp, what)
        try:
            try:
                write_all(fd, [data])
            except BaseException as e:
                os.close(fd)
                if isinstance(e, OSError):
                    raise _io_error(e, f"{what} in {self.root}") from None
                raise
            _publish(fd, tmp, final, what, self.root)
        finally:
            _unlink_quietly(tmp)

    def spool(self, kind: Kind, owner: str = "") -> _FileSpool:
        """A temporary file in the kind's directory, linked to its final name by `commit`."""
        tmp = os.path.join(self.root, kind.value, f".tmp-spool-{owner or 'p'}-{secrets.token_hex(8)}")
        return _FileSpool(self, kind, self._create(tmp, f"{kind.value}/ (a new object)"), tmp)

    def drop_spools(self, owner: str) -> None:
        """Remove the spool files of `owner` (a backup worker, stopped: it may be stopped anywhere,
        between creating a spool file and recording it too). An owner is random per backup: never
        another process's, whichever host or pid namespace shares the directory."""
        if not owner:
            return
        d = os.path.join(self.root, Kind.DATA.value)
        prefix = f".tmp-spool-{owner}-"
        try:
            names = [e.name for e in os.scandir(d) if e.name.startswith(prefix)]
        except OSError:
            return
        for name in names:
            _unlink_quietly(os.path.join(d, name))

    def _create(self, tmp: str, what: str) -> int:
        """A new temporary file (never an existing one), open for writing."""
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            d = os.path.dirname(tmp)
            raise CerminError(f"repository directory {d} is missing (damaged repository?)") from None
        except OSError as e:
            raise _io_error(e, f"{what} in {self.root}") from None

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(kind, name)
        try:
            with open(path, "rb", buffering=0) as f:
                if length is None:
                    f.seek(offset)
                    return f.read()
                return os.pread(f.fileno(), length, offset)
        except FileNotFoundError:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist") from None
        except NotADirectoryError:
            if kind is Kind.CONFIG:  # the repository path is a file
                raise RepositoryNotFound(f"no repository at {self.root}: it is a file, not a directory") from None
            raise CerminError(f"cannot read {kind.value}/{name}: a file is in the way in {self.root}") from None
        except OSError as e:
            raise CerminError(f"cannot read {kind.value}/{name} in {self.root}: {e.strerror or e}") from None

    def size(self, kind: Kind, name: str) -> int:
        try:
            return os.stat(self._path(kind, name)).st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist") from None

    def list(self, kind: Kind):
        if kind is Kind.CONFIG:
            try:
                yield CONFIG_NAME, self.size(kind, CONFIG_NAME)
            except ObjectNotFound:
                pass
            return
        base = os.path.join(self.root, kind.value)
        dirs = [base]
        if kind is Kind.DATA:
            try:
                dirs = [os.path.join(base, d) for d in sorted(os.listdir(base))]
            except FileNotFoundError:
                return
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if e.name.startswith(".tmp-"):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    size = e.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # removed while we listed (a refreshed lock): the rest still counts
                yield e.name, size

    def remove(self, kind: Kind, name: str) -> None:
        path = self._path(kind, name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist") from None
        _fsync_dir(os.path.dirname(path))

    def exists(self, kind: Kind, name: str) -> bool:
        return os.path.exists(self._path(kind, name))

    # ---- temporary files of interrupted writes ---------------------------------------------------
    def leftovers(self) -> list[Leftover]:
        """`.tmp-*` files in the root and every kind's directory: a write killed before its link."""
        dirs = [""] + [k.value for k in _DIRS]
        try:
            dirs += [f"{Kind.DATA.value}/{d}" for d in sorted(os.listdir(os.path.join(self.root, Kind.DATA.value)))]
        except OSError:
            pass
        out = []
        for d in dirs:
            try:
                entries = list(os.scandir(os.path.join(self.root, d)))
            except OSError:
                continue
            for e in entries:
                if not e.name.startswith(".tmp-"):
                    continue
                try:
                    if not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # its write just finished
                out.append(Leftover(f"{d}/{e.name}" if d else e.name, st.st_size, st.st_mtime))
        return out

    def remove_leftover(self, path: str) -> None:
        parts = path.split("/")
        if not parts[-1].startswith(".tmp-") or any(p in ("", ".", "..") for p in parts) or len(parts) > 3:
            raise CerminError(f"not a temporary file of this repository: {path!r}")
        full = os.path.join(self.root, *parts)
        try:
            os.unlink(full)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _io_error(e, f"{path} in {self.root}") from None
        _fsync_dir(os.path.dirname(full))

    def close(self) -> None:
        pass
