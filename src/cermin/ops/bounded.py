"""Run a child process with bounded memory, in its own session, killed by process group on its deadline.

Hooks (ops/sources.py `run_hooks`), drill command checks and psql (ops/drillchecks.py) run programs whose
output nobody bounds — a hook that loops printing, a dump whose every statement errors — and which may
start helpers of their own. `run_bounded` keeps only the last `keep` bytes of stdout and of stderr while it
streams them (never the whole output in memory), starts the child as a session and process group leader
(`start_new_session=True`), and when the deadline passes — or the caller is interrupted (an exception, a
signal turned into one) — kills the whole group with SIGKILL, so grandchildren do not outlive it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

TAIL_KEEP = 64 * 1024  # bytes kept of each of stdout and stderr


@dataclass
class Ran:
    returncode: int  # negative: killed by that signal
    stdout: bytes  # the last `keep` bytes
    stderr: bytes
    timed_out: bool  # the deadline passed: the process group was killed


class Tail:
    """The last `keep` bytes of a stream."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.buf = bytearray()

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > self.keep:
            del self.buf[: len(self.buf) - self.keep]


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_bounded(
    argv: list[str],
    env: dict[str, str] | None,
    timeout: float,
    cwd: str | None = None,
    keep: int = TAIL_KEEP,
    kill_leftovers: bool = False,
) -> Ran:
    """Run `argv` (stdin from /dev/null) for at most `timeout` seconds -> Ran. The deadline covers the
    child and anything still holding its stdout/stderr open. `kill_leftovers`: also kill what is left of
    its process group when it exits in time (helpers it started in the background). Raises OSError
    when the program cannot be started."""
    p = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    tails = {p.stdout.fileno(): Tail(keep), p.stderr.fileno(): Tail(keep)}
    timed_out, finished = False, False
    try:
        with selectors.DefaultSelector() as sel:
            for f in (p.stdout, p.stderr):
                sel.register(f, selectors.EVENT_READ)
            while sel.get_map() and not timed_out:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(left):
                    data = os.read(key.fd, 65536)
                    if data:
                        tails[key.fd].add(data)
                    else:
                        sel.unregister(key.fileobj)
        if not timed_out:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True  # closed its output, still running
        finished = True
    finally:
        if timed_out or not finished or kill_leftovers or p.poll() is None:
            kill_group(p.pid)
        p.wait()
        for f in (p.stdout, p.stderr):
            with contextlib.suppress(OSError):
                f.close()
    out, err = (bytes(t.buf) for t in tails.values())
    return Ran(p.returncode, out, err, timed_out)
