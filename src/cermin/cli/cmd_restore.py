"""`cermin restore` and `cermin dump`."""

from __future__ import annotations

import click

from cermin.cli.common import Output, StdoutBytes, open_repo, reporter


@click.command()
@click.argument("snapshot", required=False)
@click.option("-t", "--target", type=click.Path(file_okay=False), help="Directory to restore into (required).")
@click.option("-i", "--include", "includes", multiple=True, help="Restore only paths matching GLOB (repeatable).")
@click.option("-e", "--exclude", "excludes", multiple=True, help="Skip paths matching GLOB (repeatable).")
@click.option("--verify", is_flag=True, help="Read every restored file back and check it against the snapshot.")
@click.option("--workers", type=click.IntRange(1, 256), default=None)
@click.option("--no-owner", is_flag=True, help="Do not restore owners (files belong to you) nor setuid/setgid bits.")
@click.option("--no-xattrs", is_flag=True, help="Do not restore extended attributes.")
@click.option("--no-special", is_flag=True, help="Drop setuid/setgid bits and do not create device nodes.")
@click.option("--untrusted", is_flag=True, help="For snapshots you do not trust: --no-owner --no-xattrs --no-special.")
@click.option("--last-clean", is_flag=True, help="Restore the newest snapshot the guard judges clean.")
@click.option("--host", "hosts", multiple=True, help="With --last-clean or 'latest': only this host's snapshots.")
@click.option("--path", "paths", multiple=True, help="With --last-clean or 'latest': only snapshots of this path.")
@click.option(
    "--per-file-last-clean",
    "per_file",
    is_flag=True,
    help="Each path of SNAPSHOT at its newest version no verdict or file-level flag marks; lists what came from where.",
)
@click.option(
    "--lookback",
    type=click.IntRange(0, 10000),
    default=None,
    help="With --per-file-last-clean: also search N snapshots older than the last clean one (default 3).",
)
@click.option("--no-removed", is_flag=True, help="With --per-file-last-clean: do not bring back removed files.")
@click.option("--dry-run", is_flag=True, help="With --per-file-last-clean: list the plan, restore nothing.")
@click.pass_obj
def restore(
    g,
    snapshot,
    target,
    includes,
    excludes,
    verify,
    workers,
    no_owner,
    no_xattrs,
    no_special,
    untrusted,
    last_clean,
    hosts,
    paths,
    per_file,
    lookback,
    no_removed,
    dry_run,
):
    """Restore SNAPSHOT[:PATH] into --target. 'latest', 'last-clean' and unique ID prefixes work;
    --last-clean [--host H] [--path P] restores the newest clean snapshot (SNAPSHOT may then be :PATH);
    --per-file-last-clean SNAPSHOT[:PATH] restores each file at its newest unmarked version
    (docs/guard.md, "Per-file last clean").

    Entries with invalid names (empty, '.', '..', containing '/' or NUL) are skipped as errors, and
    no symlink is ever followed: nothing is written outside --target."""
    from cermin.engine.restore import RestoreOptions
    from cermin.ops import commands
    from cermin.ops.browse import abs_paths

    out = Output(g)
    ref, sub = commands.split_ref(snapshot or "")
    ref = _which(ref, bool(target), last_clean, per_file, lookback is not None or no_removed or dry_run, dry_run)
    opts = RestoreOptions(
        target=target or "",
        subpath=sub,
        includes=list(includes),
        excludes=list(excludes),
        verify=verify,
        workers=workers or 0,
        no_owner=no_owner or untrusted,
        no_xattrs=no_xattrs or untrusted,
        no_special=no_special or untrusted,
    )
    with reporter(out) as progress:
        repo = open_repo(g, load_index=False)
        if per_file:
            summary = commands.restore_per_file(
                repo, ref, opts, progress, g.no_lock, tuple(hosts), abs_paths(paths), lookback, not no_removed, dry_run
            )
        else:
            summary = commands.restore(repo, ref, opts, progress, g.no_lock, tuple(hosts), abs_paths(paths))
    return out.render(summary)


def _which(ref: str, target: bool, last_clean: bool, per_file: bool, per_file_opts: bool, dry_run: bool) -> str:
    """The snapshot to restore, once the options are known to go together."""
    from cermin.errors import UsageError

    if per_file_opts and not per_file:
        raise UsageError("--lookback, --no-removed and --dry-run go with --per-file-last-clean")
    if not target and not (per_file and dry_run):
        raise UsageError("give the directory to restore into (--target)")
    if per_file and (last_clean or not ref):
        raise UsageError("--per-file-last-clean starts from the SNAPSHOT you name (e.g. the flagged one, or latest)")
    if last_clean:
        if ref and ref != "last-clean":
            raise UsageError("--last-clean chooses the snapshot: give no SNAPSHOT (only :PATH)")
        return "last-clean"
    if not ref:
        raise UsageError("give a SNAPSHOT (or --last-clean)")
    return ref


@click.command()
@click.argument("snapshot")
@click.argument("path")
@click.pass_obj
def dump(g, snapshot, path):
    """Write the file PATH from SNAPSHOT to standard output, or a directory as a tar stream."""
    from cermin.ops import commands

    repo = open_repo(g, load_index=False)
    return Output(g).render(commands.dump(repo, snapshot, path, StdoutBytes(), no_lock=g.no_lock))
