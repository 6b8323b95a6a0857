"""Storage backends and `open_backend(location)`."""

from __future__ import annotations

from cermin.backend.base import Backend, Kind
from cermin.errors import UsageError


def open_backend(location: str) -> Backend:
    if location.startswith("memory:"):
        from cermin.backend.memory import MemoryBackend

        return MemoryBackend(location)
    if location.startswith("s3:"):
        from cermin.backend.s3 import S3Backend

        return S3Backend(location)
    if location.startswith(("http://", "https://")):
        from cermin.backend.http import HttpBackend

        return HttpBackend(location)
    if location.startswith("local:"):
        location = location[len("local:") :]
    elif "://" in location or location.split(":", 1)[0] in ("sftp", "rest"):
        raise UsageError(f"unsupported repository location {location!r} (a directory, s3:... or http(s)://...)")
    from cermin.backend.local import LocalBackend

    return LocalBackend(location)


__all__ = ["Backend", "Kind", "open_backend"]
