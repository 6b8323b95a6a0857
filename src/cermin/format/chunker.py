"""Content-defined chunking with FastCDC; boundaries keyed by a per-repository seed."""

from __future__ import annotations

from pyfastcdc import FastCDC

DEFAULT_MIN = 256 * 1024
DEFAULT_AVG = 1024 * 1024
DEFAULT_MAX = 4 * 1024 * 1024


def make_chunker(seed: int, min_size: int, avg_size: int, max_size: int) -> FastCDC:
    # One FastCDC object per thread: the library says instances are not concurrency-safe.
    return FastCDC(avg_size, min_size=min_size, max_size=max_size, seed=seed)
