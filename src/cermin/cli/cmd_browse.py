"""Read-only views: snapshots, ls, diff, find."""

from __future__ import annotations

import click

from cermin.cli.common import Output, open_repo

_filters = [
    click.option("--host", "hosts", multiple=True, help="Only snapshots of this host (repeatable)."),
    click.option("--tag", "tags", multiple=True, help="Only snapshots with these tags; 'a,b' means both."),
    click.option("--path", "paths", multiple=True, help="Only snapshots that include this path."),
]


def snapshot_filters(f):
    for opt in reversed(_filters):
        f = opt(f)
    return f


def _paths(paths) -> tuple[bytes, ...]:
    from cermin.ops.browse import abs_paths

    return abs_paths(paths)


@click.command()
@snapshot_filters
@click.option("--latest", type=click.IntRange(min=0), default=0, help="Only the newest N snapshots.")
@click.option("--forgotten", is_flag=True, help="Also list snapshots marked forgotten (kept only by Object Lock).")
@click.pass_obj
def snapshots(g, hosts, tags, paths, latest, forgotten):
    """List snapshots, oldest first."""
    from cermin.ops import browse

    repo = open_repo(g, load_index=False)
    return Output(g).render(browse.snapshots(repo, hosts, tags, paths, latest, forgotten))


@click.command()
@click.argument("snapshot")
@click.argument("path", required=False, default="/")
@click.option(
    "-R", "--recursive/--no-recursive", default=False, help="Everything below PATH, not only its own entries."
)
@click.option("-l", "--long", "long_", is_flag=True, help="Show mode, owner, size and time.")
@click.pass_obj
def ls(g, snapshot, path, recursive, long_):
    """List the entries of directory PATH (default /) in SNAPSHOT, as ls does; -R lists everything below it."""
    from cermin.ops import browse

    return Output(g).render(browse.ls(open_repo(g), snapshot, path, recursive, long_))


@click.command()
@click.argument("snapshot1")
@click.argument("snapshot2")
@click.option("--metadata", is_flag=True, help="Also list entries whose metadata alone changed (U).")
@click.pass_obj
def diff(g, snapshot1, snapshot2, metadata):
    """Show what changed from SNAPSHOT1 to SNAPSHOT2: + added, - removed, M modified, T type, U metadata."""
    from cermin.ops import browse

    return Output(g).render(browse.diff(open_repo(g), snapshot1, snapshot2, metadata))


@click.command()
@click.argument("patterns", nargs=-1, required=True)
@click.option("-s", "--snapshot", "snaps", multiple=True, help="Search only these snapshots.")
@snapshot_filters
@click.pass_obj
def find(g, patterns, snaps, hosts, tags, paths):
    """Find files whose name (or path, if the pattern has a '/') matches a glob PATTERN."""
    from cermin.ops import browse

    return Output(g).render(browse.find(open_repo(g), list(patterns), snaps, hosts, tags, paths))
