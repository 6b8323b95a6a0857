"""Repository-level commands: init, cat, stats, unlock."""

from __future__ import annotations

import click

from cermin.cli.common import FromRepo, Output, backend_of, from_options, open_repo, read_password


@click.command()
@click.option(
    "--object-lock",
    "lock_days",
    type=click.IntRange(1, 36500),
    default=None,
    metavar="DAYS",
    help="S3 only: upload every object with Object Lock retention of DAYS (the bucket must have Object Lock).",
)
@click.option("--lock-mode", type=click.Choice(["compliance", "governance"]), default="compliance", show_default=True)
@click.option(
    "--maintenance-interval",
    "maintenance_days",
    type=click.IntRange(1, 3650),
    default=7,
    show_default=True,
    metavar="DAYS",
    help="How often `cermin lock extend` will run; the lock must outlast it plus a margin.",
)
@click.option(
    "--copy-chunker-params-from",
    "copy_from",
    metavar="REPO",
    help="Take the chunker parameters and blob-id key of REPO (its password via --from-password-*): "
    "a mirror of REPO then copies blobs and trees as they are (see docs/mirror.md).",
)
@click.option(
    "--compression",
    "level",
    type=click.IntRange(1, 19),
    default=None,
    metavar="LEVEL",
    help="zstd level for this repository, for good: 1 spends ~25% less CPU compressing than the "
    "default 3 and stores a few % more; higher levels store less for much more CPU.",
)
@from_options
@click.pass_obj
def init(
    g,
    lock_days,
    lock_mode,
    maintenance_days,
    copy_from,
    level,
    from_password_file,
    from_password_command,
    from_token_file,
):
    """Create a new repository at -r/--repo."""
    from cermin.backend.local import LocalBackend
    from cermin.ops import commands

    backend = backend_of(g)
    if isinstance(backend, LocalBackend):
        backend.check_creatable()  # before asking for a password twice
    source = None
    if copy_from:
        source = FromRepo(copy_from, from_password_file, from_password_command, from_token_file).open(Output(g))
    password = lambda: read_password(g, "new repository password: ", confirm=True)  # noqa: E731
    return Output(g).render(
        commands.init(
            backend, password, lock_days, lock_mode, maintenance_days, secrets_from=source, compression_level=level
        )
    )


@click.command()
@click.argument("what", type=click.Choice(["config", "snapshot", "tree", "index", "key", "blob"]))
@click.argument("object_id", required=False)
@click.pass_obj
def cat(g, what, object_id):
    """Print a repository object as JSON: config, snapshot ID, tree ID, index ID, key ID, blob ID."""
    from cermin.ops import browse

    return Output(g).render(browse.cat(open_repo(g, load_index=what in ("tree", "blob")), what, object_id))


@click.command()
@click.argument("snapshot_ids", nargs=-1)
@click.option(
    "--mode",
    type=click.Choice(["restore-size", "raw", "raw-data", "dedup"]),
    default="restore-size",
    show_default=True,
    help="restore-size: what a restore writes; raw: unique data and its stored size; dedup: both and their ratio.",
)
@click.option("--host", "hosts", multiple=True)
@click.option("--tag", "tags", multiple=True)
@click.pass_obj
def stats(g, snapshot_ids, mode, hosts, tags):
    """Show sizes for the given snapshots (default: all)."""
    from cermin.ops import commands

    return Output(g).render(commands.stats(open_repo(g), list(snapshot_ids), mode, hosts, tags))


@click.command()
@click.option("--remove-all", is_flag=True, help="Remove every lock, not only stale ones.")
@click.pass_obj
def unlock(g, remove_all):
    """Remove stale locks (or all locks with --remove-all)."""
    from cermin.ops import commands

    return Output(g).render(commands.unlock(open_repo(g, load_index=False), remove_all))
