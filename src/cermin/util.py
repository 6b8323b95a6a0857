"""Small helpers with no dependencies on other cermin layers."""

from __future__ import annotations

import getpass
import os
import time
from datetime import UTC, datetime


def username() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def now_rfc3339() -> str:
    return ns_to_rfc3339(time.time_ns())


def ns_to_rfc3339(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_rfc3339(s: str) -> datetime:
    # Python 3.11 fromisoformat accepts 'Z' but only microseconds: trim nanoseconds.
    if "." in s:
        head, frac = s.split(".", 1)
        digits = "".join(ch for ch in frac if ch.isdigit())
        tail = frac[len(digits) :]
        s = f"{head}.{digits[:6]}{tail}"
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def plural(n: int, word: str, words: str | None = None) -> str:
    """'1 pack', '2 packs', '0 packs'; irregular plurals given: plural(n, "match", "matches")."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def display_path(p: bytes) -> str:
    """Show a raw path; bytes that are not UTF-8 appear as \\xNN escapes."""
    return p.decode("utf-8", "backslashreplace")


def main_thread_signals() -> None:
    """ThreadPoolExecutor initializer: this thread blocks SIGINT and SIGTERM, so the kernel delivers
    them to the main thread and interrupts the call it is blocked in (a read of a stalled stdin);
    delivered to a helper thread, Python would only act once that call returned."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def write_all(fd: int, parts: list) -> None:
    """Write every buffer of `parts` in order (writev, continuing after short writes)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:1024])  # IOV_MAX
        while n:
            if n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][n:]
                n = 0
