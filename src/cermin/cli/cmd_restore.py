"""`cermin restore` and `cermin dump`."""

from __future__ import annotations

import click

from cermin.cli.common import Output, StdoutBytes, open_repo, reporter


@click.command()
@click.argument("snapshot")
@click.option("-t", "--target", required=True, type=click.Path(file_okay=False), help="Directory to restore into.")
@click.option("-i", "--include", "includes", multiple=True, help="Restore only paths matching GLOB (repeatable).")
@click.option("-e", "--exclude", "excludes", multiple=True, help="Skip paths matching GLOB (repeatable).")
@click.option("--verify", is_flag=True, help="Read every restored file back and check it against the snapshot.")
@click.option("--workers", type=click.IntRange(1, 256), default=None)
@click.option("--no-owner", is_flag=True, help="Do not restore owners (files belong to you) nor setuid/setgid bits.")
@click.option("--no-xattrs", is_flag=True, help="Do not restore extended attributes.")
@click.option("--no-special", is_flag=True, help="Drop setuid/setgid bits and do not create device nodes.")
@click.option("--untrusted", is_flag=True, help="For snapshots you do not trust: --no-owner --no-xattrs --no-special.")
@click.pass_obj
def restore(g, snapshot, target, includes, excludes, verify, workers, no_owner, no_xattrs, no_special, untrusted):
    """Restore SNAPSHOT[:PATH] into --target. 'latest' and unique ID prefixes work.

    Entries with invalid names (empty, '.', '..', containing '/' or NUL) are skipped as errors, and
    no symlink is ever followed: nothing is written outside --target."""
    from cermin.engine import commands
    from cermin.engine.restore import RestoreOptions

    out = Output(g)
    ref, sub = commands.split_ref(snapshot)
    opts = RestoreOptions(
        target=target,
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
        summary = commands.restore(open_repo(g, load_index=False), ref, opts, progress, no_lock=g.no_lock)
    return out.render(summary)


@click.command()
@click.argument("snapshot")
@click.argument("path")
@click.pass_obj
def dump(g, snapshot, path):
    """Write the file PATH from SNAPSHOT to standard output, or a directory as a tar stream."""
    from cermin.engine import commands

    repo = open_repo(g, load_index=False)
    return Output(g).render(commands.dump(repo, snapshot, path, StdoutBytes(), no_lock=g.no_lock))
