"""Storage backends and `open_backend(location)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cermin.backend.base import Backend, BackendBase, Capabilities, Kind
from cermin.errors import UsageError

if TYPE_CHECKING:
    from cermin.backend.s3 import S3Credentials


def open_backend(location: str, *, credentials: S3Credentials | None = None) -> Backend:
    """The backend for a location. S3 and HTTP come wrapped in the one retrying layer
    (backend/retry.py); a directory and memory raise no TransientError, so they come bare.
    `credentials`: an `S3Credentials` for an s3: location (None: from the environment)."""
    if credentials is not None and not location.startswith("s3:"):
        raise UsageError(f"S3 credentials given for {location!r}, which is not an s3: location")
    if location.startswith("memory:"):
        from cermin.backend.memory import MemoryBackend

        return MemoryBackend(location)
    if location.startswith("s3:"):
        from cermin.backend.retry import RetryBackend
        from cermin.backend.s3 import S3Backend

        return RetryBackend(S3Backend(location, credentials=credentials))
    if location.startswith(("http://", "https://")):
        from cermin.backend.http import HttpBackend
        from cermin.backend.retry import RetryBackend

        return RetryBackend(HttpBackend(location))
    if location.startswith("local:"):
        location = location[len("local:") :]
    elif "://" in location or location.split(":", 1)[0] in ("sftp", "rest"):
        raise UsageError(f"unsupported repository location {location!r} (a directory, s3:... or http(s)://...)")
    from cermin.backend.local import LocalBackend

    return LocalBackend(location)


__all__ = ["Backend", "BackendBase", "Capabilities", "Kind", "open_backend"]
