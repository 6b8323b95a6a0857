"""Storage backends and `open_backend(location)`."""

from __future__ import annotations

from cermin.backend.base import Backend, Kind
from cermin.errors import UsageError


def open_backend(location: str) -> Backend:
    if location.startswith("memory:"):
        from cermin.backend.memory import MemoryBackend

        return MemoryBackend(location)
    if location.startswith("local:"):
        location = location[len("local:") :]
    elif "://" in location or location.split(":", 1)[0] in ("s3", "http", "https", "sftp", "rest"):
        raise UsageError(f"unsupported repository location {location!r} (this build supports local paths)")
    from cermin.backend.local import LocalBackend

    return LocalBackend(location)


__all__ = ["Backend", "Kind", "open_backend"]
