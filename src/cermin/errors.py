"""Error types shared by every layer; each carries the process exit code the CLI uses.

Exit codes (documented in README.md and `cermin --help`):
  0 ok, 1 fatal error, 2 usage error, 3 snapshot saved but incomplete,
  10 repository does not exist, 11 repository locked, 12 wrong password,
  20 waiting for a second admin's approval (a deletion through `cermin serve` was queued).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_NO_REPO = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
EXIT_APPROVAL = 20


class CerminError(Exception):
    """An expected failure with a one-line message for the user."""

    exit_code = EXIT_FATAL


class RepositoryNotFound(CerminError):
    exit_code = EXIT_NO_REPO


class RepositoryExists(CerminError):
    pass


class RepositoryLocked(CerminError):
    exit_code = EXIT_LOCKED


class WrongPassword(CerminError):
    exit_code = EXIT_WRONG_PASSWORD


class UnsupportedVersion(CerminError):
    pass


class CorruptObject(CerminError):
    """Stored bytes failed authentication, parsing or their content hash."""


class ForeignObject(CorruptObject):
    """An object whose bytes match its name but that fails authentication or decoding: it was not
    written by a cermin client holding this repository's key (planted with a storage credential or a
    backup token), so it is never damage of something cermin wrote. Readers skip and report it."""


class StoredDamaged(CerminError):
    """A save reported success but reading the object back gave other bytes (a silently truncated or
    bit-flipped write). Raised by backend/verifying.py; the object stays (nothing is overwritten or
    deleted), the caller stores its content again under a new name."""

    def __init__(self, message: str, kind=None, name: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


class ObjectNotFound(CerminError):
    pass


class ObjectExists(CerminError):
    """A write-once object already exists under that name."""


class TransientError(CerminError):
    """A storage request that may succeed if tried again: connection refused or reset, a timeout, a
    5xx answer, throttling. Drivers raise it; the one retrying layer (backend/retry.py) retries it.
    Every other error of a driver is permanent (not found, exists, access denied, precondition, bad
    request) and is never retried."""


class AccessDenied(CerminError):
    """The storage refused the credentials or the operation (permanent: retrying cannot help)."""


class StorageFull(AccessDenied):
    """The storage refused a write for space: a tenant over its quota on `cermin serve` (507). Permanent
    until someone frees space or raises the quota, so never retried; read-only work goes on without
    a lock, as on a read-only repository."""


class ReadOnlyRepository(AccessDenied):
    """The storage refused a write because the repository is read-only to us: a read-only mount
    (EROFS), a directory we may not write (EACCES/EPERM), a read-only credential or token (403).
    Read-only work goes on without a lock (repo/lock.py); writes stop with this one-line error."""


class BackendUnavailable(CerminError):
    """The retry budget ran out on transient errors; the message names the last one."""


class ObjectLocked(CerminError):
    """The storage refused to delete an object still under Object Lock retention."""


class ApprovalRequired(CerminError):
    """The server queued a deletion for a second admin's approval (two-person rule); nothing was
    deleted yet. Not a kind of ObjectLocked: the operation is pending, not refused."""

    exit_code = EXIT_APPROVAL

    def __init__(self, request_id: str, count: int = 1, what: str = "") -> None:
        self.request_id, self.count = request_id, count
        what = what or f"deleting {count} object" + ("" if count == 1 else "s")
        super().__init__(
            f"waiting for approval {request_id}: {what} needs a second admin (`cermin approvals approve {request_id}`)"
        )


class SnapshotNotFound(CerminError):
    pass


class UsageError(CerminError):
    exit_code = EXIT_USAGE
