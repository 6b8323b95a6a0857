"""Repository-level commands: init, cat, stats, unlock."""

from __future__ import annotations

import json

import click

from cermin.cli.common import Output, backend_of, open_repo, read_password, stdout_errors
from cermin.errors import ObjectNotFound, UsageError


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
@click.pass_obj
def init(g, lock_days, lock_mode, maintenance_days):
    """Create a new repository at -r/--repo."""
    from cermin.repo.repository import Repository

    out = Output(g)
    backend = backend_of(g)
    from cermin.backend.local import LocalBackend

    if isinstance(backend, LocalBackend):
        backend.check_creatable()  # before asking for a password twice
    extra = {}
    if lock_days is not None:
        from cermin.engine.objectlock import new_lock_policy

        extra["object_lock"] = new_lock_policy(backend, lock_days, lock_mode, maintenance_days)
    repo = Repository.init(backend, read_password(g, "new repository password: ", confirm=True), extra=extra)
    if out.json:
        out.emit({"message_type": "initialized", "id": repo.config.id, "repository": backend.location})
    else:
        out.note(f"created cermin repository {repo.config.id[:10]} at {backend.location}")
        out.note("Keep the password safe: without it the data cannot be recovered.")
    if lock_days is not None:
        from cermin.engine.objectlock import DEPLOYMENT_WARNING

        out.warn(DEPLOYMENT_WARNING)


@click.command()
@click.argument("what", type=click.Choice(["config", "snapshot", "tree", "index", "key", "blob"]))
@click.argument("object_id", required=False)
@click.pass_obj
def cat(g, what, object_id):
    """Print a repository object as JSON: config, snapshot ID, tree ID, index ID, key ID, blob ID."""
    from cermin.backend.base import Kind
    from cermin.format import records
    from cermin.repo import snapshots
    from cermin.util import display_path

    repo = open_repo(g, load_index=what in ("tree", "blob"))
    if what == "config":
        c, s = repo.config, repo.secrets
        obj = {
            "version": c.version,
            "id": c.id,
            "created": c.created,
            "chunker": {"min": s.chunker_min, "avg": s.chunker_avg, "max": s.chunker_max},
            "pack_size": s.pack_size,
            "compression_level": s.compression_level,
        }
    elif not object_id:
        raise UsageError(f"cat {what} needs an ID")
    elif what in ("index", "blob") and not _is_hex_id(object_id):
        raise _bad_id(what, object_id)
    elif what == "snapshot":
        obj = snapshots.snapshot_json(snapshots.resolve(repo, object_id))
    elif what == "tree":
        from cermin.engine.treewalk import node_json

        tid = _tree_id(repo, object_id)
        obj = {"id": tid.hex(), "nodes": [node_json(b"/" + n.name, n) for n in repo.load_tree(tid).nodes]}
    elif what == "index":
        idx = records.index_decoder.decode(repo.load_object(Kind.INDEX, object_id))
        from cermin.format import index as fmt_index

        obj = {
            "packs": [
                {
                    "id": p.id.hex(),
                    "blobs": [
                        {"id": b.hex(), "type": t, "offset": o, "length": ln, "raw_length": r}
                        for b, t, o, ln, r in fmt_index.iter_entries(p.blobs)
                    ],
                }
                for p in idx.packs
            ]
        }
    elif what == "key":
        from cermin.repo.keyops import resolve_key

        name = resolve_key(repo, object_id)
        obj = json.loads(repo.backend.load(Kind.KEY, name))
    else:
        data = repo.load_blob(bytes.fromhex(object_id))
        obj = {"id": object_id, "length": len(data), "text": display_path(data[:4096])}
    with stdout_errors():
        click.echo(json.dumps(obj, indent=None if g.json else 2))


def _bad_id(what: str, object_id: str) -> ObjectNotFound:
    """A malformed id names no object: exit 1, like an unknown snapshot id in every other command."""
    return ObjectNotFound(f"no {what} with id {object_id!r} (expected 64 hex digits)")


def _is_hex_id(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s.lower())


def _tree_id(repo, ref: str) -> bytes:
    from cermin.repo import snapshots

    if len(ref) == 64:
        if not _is_hex_id(ref):
            raise _bad_id("tree", ref)
        return bytes.fromhex(ref)
    return snapshots.resolve(repo, ref).snapshot.tree  # a snapshot id gives its root tree


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
    from cermin.engine import commands

    return Output(g).render(commands.stats(open_repo(g), list(snapshot_ids), mode, hosts, tags))


@click.command()
@click.option("--remove-all", is_flag=True, help="Remove every lock, not only stale ones.")
@click.pass_obj
def unlock(g, remove_all):
    """Remove stale locks (or all locks with --remove-all)."""
    from cermin.engine import commands

    return Output(g).render(commands.unlock(open_repo(g, load_index=False), remove_all))
