"""`cermin restore` and `cermin dump`."""

from __future__ import annotations

import os
import sys

import click

from cermin.cli.common import Output, elapsed, locked, open_repo, progress, stdout_errors
from cermin.errors import EXIT_FATAL, CerminError


def _split_ref(ref: str) -> tuple[str, bytes]:
    snap, _, path = ref.partition(":")
    return snap, os.fsencode(path or "/")


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
    from cermin.engine.restore import RestoreOptions, RestoreProgress, run_restore
    from cermin.repo.snapshots import resolve
    from cermin.util import fmt_bytes

    out = Output(g)
    ref_s, sub = _split_ref(snapshot)
    repo = open_repo(g, load_index=False)
    ref = resolve(repo, ref_s)
    prog = RestoreProgress()

    def describe():
        return (
            {"files_done": prog.files, "bytes_done": prog.bytes},
            f"[{elapsed(prog.start)}] {prog.files} files, {fmt_bytes(prog.bytes)} restored",
        )

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
    with locked(g, repo, False, "restore"), progress(out, describe, "restore"):
        repo.load_index()
        summary = run_restore(repo, ref.snapshot, opts, prog)
    for w in summary.warnings:
        out.warn(w)
    for e in summary.errors:
        out.error_line(e)
    if out.json:
        out.emit(
            {
                "message_type": "summary",
                "snapshot_id": ref.id,
                "target": summary.target,
                "files_restored": summary.files,
                "dirs_restored": summary.dirs,
                "other_restored": summary.other,
                "bytes_restored": summary.bytes,
                "files_verified": summary.verified_files,
                "invalid_entries": summary.invalid_entries,
                "errors": len(summary.errors),
                "duration": round(summary.duration, 3),
            }
        )
    else:
        out.note(
            f"restored snapshot {ref.short_id} to {summary.target}: {summary.files} files, "
            f"{summary.dirs} dirs, {fmt_bytes(summary.bytes)} in {summary.duration:.2f}s"
        )
        if verify:
            out.note(f"verified {summary.verified_files} files")
    if summary.errors:
        if not out.json:
            click.echo(f"cermin: error: {len(summary.errors)} entries could not be restored", err=True)
        return EXIT_FATAL
    return 0


@click.command()
@click.argument("snapshot")
@click.argument("path")
@click.pass_obj
def dump(g, snapshot, path):
    """Write the file PATH from SNAPSHOT to standard output."""
    from cermin.engine.treewalk import find_node
    from cermin.format import pack
    from cermin.format.records import FILE
    from cermin.repo.snapshots import resolve

    repo = open_repo(g, load_index=False)
    ref = resolve(repo, snapshot)
    outf = sys.stdout.buffer
    with locked(g, repo, False, "dump"):
        repo.load_index()
        node = find_node(repo, ref.snapshot.tree, os.fsencode(path))
        if node.type != FILE:
            raise CerminError(f"{path} is a {node.type}, not a file")
        for bid in node.blob_ids():
            data = repo.load_blob(bid, pack.DATA)
            with stdout_errors():
                outf.write(data)
    with stdout_errors():
        outf.flush()
