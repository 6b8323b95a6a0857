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
from collections.abc import Iterator

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

    def render(self, result) -> int:
        """Print a result (cermin.engine.results): its JSON lines, or its text lines each where its
        kind goes. Returns the result's exit code."""
        from cermin.engine import results as r

        if self.json:
            for d in result.to_json():
                if isinstance(d, str):  # a document with its own layout (cat)
                    with _write_lock, stdout_errors():
                        sys.stdout.write(d + "\n")
                        sys.stdout.flush()
                else:
                    self.emit(d)
            return result.exit_code
        for kind, line in result.to_text(self.verbose):
            if kind == r.ANSWER:
                self.text(line)
            elif kind == r.NOTE:
                self.note(line)
            elif kind == r.WARNING:
                self.warn(line)
            elif kind == r.ERROR:
                self.error_line(line)
            else:
                click.echo(line, err=True)
        return result.exit_code

    def error_line(self, line: str) -> None:
        if self.json:
            self.emit({"message_type": "error", "message": line})
        else:
            click.echo(f"error: {line}", err=True)


class _JsonStatus:
    """--json: every progress event as a `status` line; sampled operations once a second."""

    interval = 1.0

    def __init__(self, out: Output) -> None:
        self.out = out

    def __call__(self, ev) -> None:
        self.out.emit(ev.to_json())


class _LiveLine:
    """A terminal: one live line (rich), redrawn from the latest event, gone when the command ends."""

    interval = 0.125

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self._text = Text
        self.live = Live(Text(""), console=Console(), refresh_per_second=8, transient=True)

    def __call__(self, ev) -> None:
        with _write_lock:
            self.live.update(self._text(ev.to_text()))


class _Lines:
    """-v without a terminal: each phase message of a step-wise operation as a line."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def __call__(self, ev) -> None:
        if ev.message:
            self.out.text(ev.message)


@contextlib.contextmanager
def reporter(out: Output) -> Iterator:
    """The one way progress is shown: a live line on a terminal, `status` lines with --json, phase
    messages with -v otherwise, nothing with -q. Yields the Reporter to hand to the operation (or None)."""
    if out.quiet:
        yield None
    elif out.json:
        yield _JsonStatus(out)
    elif sys.stdout.isatty():
        live = _LiveLine()
        with live.live:
            yield live
    else:
        yield _Lines(out) if out.verbose else None


class StdoutBytes:
    """Binary standard output for data (dump): a failed write names standard output."""

    def write(self, b) -> int:
        with stdout_errors():
            return sys.stdout.buffer.write(b)

    def flush(self) -> None:
        with stdout_errors():
            sys.stdout.buffer.flush()


# ---- a second repository (the source of `mirror`, `init --copy-chunker-params-from`) -----------
class FromRepo:
    """Where the *source* repository A is and how to open it: its own password (--from-password-file,
    --from-password-command, CERMIN_FROM_PASSWORD) and, for http(s), its own token
    (--from-token-file, CERMIN_FROM_TOKEN; default: the usual CERMIN_TOKEN / CERMIN_TOKEN_FILE)."""

    def __init__(self, location, password_file=None, password_command=None, token_file=None) -> None:
        self.repo = location
        self.password_file = password_file
        self.password_command = password_command
        self.token_file = token_file

    def password(self) -> bytes:
        env = os.environ.get("CERMIN_FROM_PASSWORD")
        if not self.password_file and not self.password_command and env is not None:
            return _checked(env.encode(), "CERMIN_FROM_PASSWORD")
        if self.password_file or self.password_command:
            return read_password(self)
        if not sys.stdin.isatty():  # never CERMIN_PASSWORD: that one is the target's
            raise UsageError(
                "no password for the source repository: set CERMIN_FROM_PASSWORD, --from-password-file "
                "or --from-password-command"
            )
        return prompt_password("source repository password: ", False)

    def backend(self):
        from cermin.backend import open_backend

        loc = self.repo
        token = None
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                raise CerminError(f"cannot read token file {self.token_file}: {e.strerror}") from None
        token = token or os.environ.get("CERMIN_FROM_TOKEN")
        if token and loc.startswith(("http://", "https://")):
            from cermin.backend.http import HttpBackend
            from cermin.backend.retry import RetryBackend

            return RetryBackend(HttpBackend(loc, token))
        return open_backend(loc)

    def open(self, out: Output | None = None):
        from cermin.repo.repository import Repository

        backend = self.backend()
        config = Repository.read_config(backend)
        repo = Repository.open(backend, self.password(), config)
        if out is not None:
            for w in repo.warnings:
                out.warn(f"source: {w}")
            repo.on_warning = lambda w: out.warn(f"source: {w}")
        return repo


def from_options(f):
    """The options naming the source repository's password and token (mirror, init)."""
    f = click.option(
        "--from-token-file",
        type=click.Path(dir_okay=False),
        help="http(s) source: read its token from this file (or CERMIN_FROM_TOKEN).",
    )(f)
    f = click.option("--from-password-command", help="Run this command for the source repository's password.")(f)
    f = click.option(
        "--from-password-file",
        type=click.Path(dir_okay=False),
        help="Read the source repository's password from this file (or CERMIN_FROM_PASSWORD).",
    )(f)
    return f
