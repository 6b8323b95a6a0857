"""What every command shares: password sources, opening the repository, output and progress."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shlex
import subprocess
import sys
import threading
import time

import click

from cermin.errors import CerminError, UsageError


def _strip_newline(b: bytes) -> bytes:
    return b[:-1] if b.endswith(b"\n") else b


def read_password(g, prompt: str = "repository password: ", confirm: bool = False) -> bytes:
    if g.password_file:
        try:
            with open(g.password_file, "rb") as f:
                return _checked(_strip_newline(f.read()), f"password file {g.password_file}")
        except OSError as e:
            raise CerminError(f"cannot read password file {g.password_file}: {e.strerror}") from None
    if g.password_command:
        try:
            argv = shlex.split(g.password_command)
        except ValueError as e:
            raise UsageError(f"cannot parse --password-command: {e}") from None
        if not argv:
            raise UsageError("--password-command is empty")
        try:
            out = subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise CerminError(f"password command failed: {e}") from None
        return _checked(_strip_newline(out), "password command")
    env = os.environ.get("CERMIN_PASSWORD")
    if env is not None:
        return _checked(env.encode(), "CERMIN_PASSWORD")
    return prompt_password(prompt, confirm)


def prompt_password(prompt: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("no password given: set CERMIN_PASSWORD, --password-file or --password-command")
    pw = getpass.getpass(prompt).encode()
    if confirm and getpass.getpass("enter the password again: ").encode() != pw:
        raise UsageError("passwords do not match")
    return _checked(pw, "password")


def _checked(pw: bytes, source: str) -> bytes:
    if not pw:
        raise UsageError(f"empty password from {source}")
    return pw


def backend_of(g):
    from cermin.backend import open_backend

    if not g.repo:
        raise UsageError("no repository given: use -r/--repo or set CERMIN_REPOSITORY")
    return open_backend(g.repo)


def open_repo(g, load_index: bool = True):
    from cermin.repo.repository import Repository

    backend = backend_of(g)
    config = Repository.read_config(backend)  # missing / unknown version: an error before the password
    repo = Repository.open(backend, read_password(g), config)
    out = Output(g)
    for w in repo.warnings:  # skipped key slots; later ones (skipped index files) as they happen
        out.warn(w)
    repo.on_warning = out.warn
    if load_index:
        repo.load_index()
    return repo


@contextlib.contextmanager
def locked(g, repo, exclusive: bool, operation: str):
    """Hold a repository lock (none with --no-lock); yields the lock or None."""
    if g.no_lock:
        yield None
        return
    from cermin.repo.lock import RepoLock

    with RepoLock(repo, exclusive, operation) as lock:
        yield lock


_write_lock = threading.Lock()


@contextlib.contextmanager
def stdout_errors():
    """A failed write to standard output (a full disk, a closed pipe) names standard output."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader went away: main exits quietly
    except OSError as e:
        raise CerminError(f"cannot write to standard output: {e.strerror or e}") from None


class Output:
    """Text for people, one JSON object per line for machines. Safe to call from worker threads."""

    def __init__(self, g) -> None:
        self.json = g.json
        self.quiet = g.quiet
        self.verbose = g.verbose

    def emit(self, obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":")) + "\n"
        with _write_lock, stdout_errors():
            sys.stdout.write(line)
            sys.stdout.flush()

    def text(self, line: str = "") -> None:
        """A line of the command's answer (a listing, a report): printed even with -q."""
        if not self.json:
            with _write_lock, stdout_errors():
                click.echo(line)

    def note(self, line: str = "") -> None:
        """Chatter around the answer (counts, "saved", hints): -q silences it."""
        if not self.quiet:
            self.text(line)

    def warn(self, line: str) -> None:
        if self.json:
            self.emit({"message_type": "warning", "message": line})
        else:
            click.echo(f"warning: {line}", err=True)

    def error_line(self, line: str) -> None:
        if self.json:
            self.emit({"message_type": "error", "message": line})
        else:
            click.echo(f"error: {line}", err=True)


@contextlib.contextmanager
def progress(out: Output, describe, kind: str):
    """Run a status thread: a live line on a terminal, status JSON lines every second with --json.

    `describe()` returns (dict of counters, one-line text); it reads counters without locks.
    """
    tty = sys.stdout.isatty()
    if out.quiet or (not out.json and not tty):
        yield
        return
    stop = threading.Event()

    def loop_json():
        while not stop.wait(1.0):
            d, _ = describe()
            out.emit({"message_type": "status", "operation": kind, **d})

    def loop_tty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(Text(""), console=Console(), refresh_per_second=8, transient=True) as live:
            while not stop.wait(0.125):
                live.update(Text(describe()[1]))

    t = threading.Thread(target=loop_json if out.json else loop_tty, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def elapsed(start: float) -> str:
    s = int(time.monotonic() - start)
    return f"{s // 60}:{s % 60:02d}"
