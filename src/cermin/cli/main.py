"""`cermin` entry point: global options, lazy subcommand loading and error-to-exit-code mapping."""

from __future__ import annotations

import importlib
import os
import sys

import click

from cermin import __version__
from cermin.errors import EXIT_FATAL, EXIT_USAGE, CerminError

EPILOG = """\b
Exit codes:
  0   success
  1   fatal error
  2   usage error
  3   backup saved an incomplete snapshot (some files unreadable)
  10  repository does not exist
  11  repository is locked
  12  wrong password
  20  waiting for a second admin's approval (cermin serve)
Environment: CERMIN_REPOSITORY, CERMIN_PASSWORD, CERMIN_PASSWORD_FILE, CERMIN_PASSWORD_COMMAND,
CERMIN_TOKEN / CERMIN_TOKEN_FILE (and CERMIN_CACERT) for http(s) repositories;
for s3: repositories AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION."""

# name -> (module, function, short help). Modules import lazily so `--help` stays fast.
COMMANDS = {
    "init": ("cermin.cli.cmd_repo", "init", "Create a new repository."),
    "backup": ("cermin.cli.cmd_backup", "backup", "Back up files or stdin into a new snapshot."),
    "snapshots": ("cermin.cli.cmd_browse", "snapshots", "List snapshots."),
    "ls": ("cermin.cli.cmd_browse", "ls", "List files in a snapshot."),
    "diff": ("cermin.cli.cmd_browse", "diff", "Show differences between two snapshots."),
    "find": ("cermin.cli.cmd_browse", "find", "Find files in snapshots by name or path pattern."),
    "restore": ("cermin.cli.cmd_restore", "restore", "Restore a snapshot into a directory."),
    "dump": ("cermin.cli.cmd_restore", "dump", "Write one file from a snapshot to stdout."),
    "cat": ("cermin.cli.cmd_repo", "cat", "Print repository objects (for debugging)."),
    "stats": ("cermin.cli.cmd_repo", "stats", "Show repository and snapshot statistics."),
    "check": ("cermin.cli.cmd_maint", "check", "Verify the repository and name any damage."),
    "repair": ("cermin.cli.cmd_maint", "repair", "Repair index, packs or snapshots."),
    "forget": ("cermin.cli.cmd_maint", "forget", "Remove snapshots by ID or retention policy."),
    "prune": ("cermin.cli.cmd_maint", "prune", "Remove unused data (plan, repack, delete)."),
    "protect": ("cermin.cli.cmd_maint", "protect", "Keep a snapshot from forget/prune until a date."),
    "lock": ("cermin.cli.cmd_lock", "lock", "Object Lock retention: status, extend, unhide."),
    "key": ("cermin.cli.cmd_key", "key", "Manage key slots (passwords)."),
    "unlock": ("cermin.cli.cmd_repo", "unlock", "Remove stale locks."),
    "serve": ("cermin.cli.cmd_serve", "serve", "Serve repositories over HTTP with split credentials."),
    "approvals": ("cermin.cli.cmd_serve", "approvals", "Two-person rule: approve or reject deletions."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        return getattr(importlib.import_module(spec[0]), spec[1])

    def format_commands(self, ctx, formatter):
        rows = [(n, spec[2]) for n, spec in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class Globals:
    def __init__(self, repo, password_file, password_command, json_out, quiet, verbose, no_lock=False):
        self.no_lock = no_lock
        self.repo = repo
        self.password_file = password_file
        self.password_command = password_command
        self.json = json_out
        self.quiet = quiet
        self.verbose = verbose


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-r", "--repo", envvar="CERMIN_REPOSITORY", help="Repository: a directory, or s3:http://host:port/bucket/prefix."
)
@click.option(
    "--password-file",
    envvar="CERMIN_PASSWORD_FILE",
    type=click.Path(dir_okay=False),
    help="Read the password from this file.",
)
@click.option(
    "--password-command",
    envvar="CERMIN_PASSWORD_COMMAND",
    help="Run this command and read the password from its output.",
)
@click.option("--json", "json_out", is_flag=True, help="Emit JSON lines instead of text.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("-v", "--verbose", count=True, help="Print more: -v lists every file read by a backup.")
@click.option("--no-lock", is_flag=True, help="Take no lock (for read-only media; unsafe next to prune).")
@click.version_option(__version__, prog_name="cermin")
@click.pass_context
def cli(ctx, repo, password_file, password_command, json_out, quiet, verbose, no_lock):
    """cermin: deduplicated, encrypted, verifiable backups."""
    ctx.obj = Globals(repo, password_file, password_command, json_out, quiet, verbose, no_lock)


def _raise_fd_limit() -> None:
    """Deep trees hold one fd per level and workers hold batches of open files: use the hard limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 1 << 20
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv=None) -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 200_000))  # trees as deep as the filesystem
    _raise_fd_limit()
    try:
        rv = cli.main(args=argv, prog_name="cermin", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cermin: aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_USAGE if isinstance(e, click.UsageError) else e.exit_code)
    except CerminError as e:
        click.echo(f"cermin: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("cermin: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_FATAL)
    except (OSError, MemoryError, RecursionError) as e:
        if os.environ.get("CERMIN_DEBUG"):
            raise
        msg = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        click.echo(f"cermin: error: {msg}", err=True)
        sys.exit(EXIT_FATAL)
    except Exception as e:  # a bug: still one line, details on request
        if os.environ.get("CERMIN_DEBUG"):
            raise
        click.echo(f"cermin: internal error: {type(e).__name__}: {e} (set CERMIN_DEBUG=1 for details)", err=True)
        sys.exit(EXIT_FATAL)
    sys.exit(rv if isinstance(rv, int) else 0)
