"""`cermin backup`."""

from __future__ import annotations

import os
import sys

import click

from cermin.cli.common import Output, open_repo, reporter
from cermin.errors import CerminError, UsageError


def _read_exclude_files(files) -> list[str]:
    out = []
    for f in files:
        try:
            with open(f, encoding="utf-8", errors="surrogateescape") as fh:
                out += [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise CerminError(f"cannot read exclude file {f}: {e.strerror}") from None
    return out


def _file_printer(out: Output):
    """-v: one line per file whose content was read (a backup observer: called from worker threads)."""
    from cermin.engine.observer import BackupObserver
    from cermin.util import display_path

    class FilePrinter(BackupObserver):
        fingerprint = False

        def file_read(self, ev) -> None:
            kind = "new" if ev.new else "modified"
            if out.json:
                out.emit(
                    {"message_type": "verbose_status", "action": kind, "item": display_path(ev.path), "size": ev.size}
                )
            else:
                out.text(f"{kind:<9}{display_path(ev.path)}")

    return FilePrinter()


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("-e", "--exclude", "excludes", multiple=True, help="Exclude paths matching GLOB (repeatable).")
@click.option(
    "--exclude-file",
    "exclude_files",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Read exclude patterns from a file, one per line.",
)
@click.option("--exclude-caches", is_flag=True, help="Skip contents of directories with a CACHEDIR.TAG.")
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross filesystem boundaries.")
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--host", help="Hostname to record (default: this machine's).")
@click.option("--parent", help="Snapshot to compare with for change detection (default: latest of same paths).")
@click.option("-n", "--dry-run", is_flag=True, help="Do everything except write to the repository.")
@click.option("--stdin", "use_stdin", is_flag=True, help="Back up data read from standard input.")
@click.option("--stdin-filename", default="stdin", show_default=True, help="File name for --stdin data.")
@click.option("--no-guard", is_flag=True, help="Do not run the ransomware guard (no verdict in the snapshot).")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Processes reading files (default: CPUs, 2 to 8)."
)
@click.option(
    "--on-alarm",
    envvar="CERMIN_ON_ALARM",
    help="Run COMMAND (no shell) when the new snapshot is suspicious or infected (env: CERMIN_SNAPSHOT_ID, "
    "CERMIN_VERDICT, ...).",
)
@click.pass_obj
def backup(
    g,
    paths,
    excludes,
    exclude_files,
    exclude_caches,
    one_file_system,
    tags,
    host,
    parent,
    dry_run,
    use_stdin,
    stdin_filename,
    no_guard,
    workers,
    on_alarm,
):
    """Back up PATHS (or stdin) into a new snapshot.

    Exits 3 when some files could not be read: the snapshot is saved and marked incomplete.
    """
    from cermin.engine.backup import BackupOptions
    from cermin.ops import commands

    out = Output(g)
    if use_stdin == bool(paths):
        raise UsageError("--stdin takes no paths" if paths else "give at least one path to back up (or --stdin)")
    opts = BackupOptions(
        paths=[os.fsencode(p) for p in paths],
        excludes=list(excludes) + _read_exclude_files(exclude_files),
        exclude_caches=exclude_caches,
        one_file_system=one_file_system,
        tags=[t for tag in tags for t in tag.split(",") if t],
        hostname=host,
        parent=parent,
        dry_run=dry_run,
        workers=workers or 0,
        stdin=sys.stdin.buffer if use_stdin else None,
        stdin_filename=stdin_filename,
        observers=[_file_printer(out)] if g.verbose and not g.quiet else [],
        guard=not no_guard,
    )
    with reporter(out) as progress:
        summary = commands.backup(open_repo(g, load_index=False), opts, progress, no_lock=g.no_lock, on_alarm=on_alarm)
    return out.render(summary)
