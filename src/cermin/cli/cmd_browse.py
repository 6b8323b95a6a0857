"""Read-only views: snapshots, ls, diff, find."""

from __future__ import annotations

import os

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


def _bad_entries(out: Output):
    """(list of messages, on_bad callback for the tree walkers): invalid entries are errors, shown as found."""
    from cermin.engine.treewalk import bad_entry_message

    bad: list[str] = []

    def on_bad(dir_path, node, why):
        bad.append(bad_entry_message(dir_path, node, why))
        out.error_line(bad[-1])

    return bad, on_bad


def _bad_exit(out: Output, bad: list[str]) -> int:
    if not bad:
        return 0
    from cermin.errors import EXIT_FATAL

    if not out.json:
        click.echo(f"cermin: error: {len(bad)} invalid entries skipped; run `cermin check`", err=True)
    return EXIT_FATAL


def _paths(paths) -> tuple[bytes, ...]:
    return tuple(os.path.normpath(os.path.abspath(os.fsencode(p))) for p in paths)


@click.command()
@snapshot_filters
@click.option("--latest", type=click.IntRange(min=0), default=0, help="Only the newest N snapshots.")
@click.option("--forgotten", is_flag=True, help="Also list snapshots marked forgotten (kept only by Object Lock).")
@click.pass_obj
def snapshots(g, hosts, tags, paths, latest, forgotten):
    """List snapshots, oldest first."""
    from cermin.repo.snapshots import list_snapshots, snapshot_json
    from cermin.util import fmt_bytes

    out = Output(g)

    def unreadable(names):
        out.warn(
            f"{len(names)} snapshot file(s) cannot be read and are left out ({', '.join(n[:8] for n in names)}); "
            "run `cermin check`"
        )

    def foreign(names):
        out.warn(
            f"{len(names)} snapshot file(s) fail authentication though named by their content "
            f"({', '.join(n[:8] for n in names)}): planted without the repository key; ignored"
        )

    hidden: list[str] = []
    refs = list_snapshots(
        open_repo(g, load_index=False),
        tuple(hosts),
        tuple(tags),
        _paths(paths),
        on_unreadable=unreadable,
        on_foreign=foreign,
        include_forgotten=forgotten,
        on_forgotten=hidden.extend,
    )
    if latest:
        refs = refs[-latest:]
    if out.json:
        out.emit({"message_type": "snapshots", "snapshots": [snapshot_json(r) for r in refs], "forgotten": len(hidden)})
        return
    out.text(f"{'ID':<10}{'Time':<21}{'Host':<16}{'Tags':<16}{'Size':>12}  Paths")
    for r in refs:
        s = r.snapshot
        size = fmt_bytes(s.summary.total_bytes) if s.summary else "?"
        flag = " (incomplete)" if s.incomplete else ""
        flag += " (dated in the future: not trusted)" if r.future else ""
        flag += " (forgotten)" if r.forgotten else ""
        paths_txt = ", ".join(p.decode("utf-8", "backslashreplace") for p in s.paths)
        out.text(
            f"{r.short_id:<10}{s.time[:19].replace('T', ' '):<21}{s.hostname[:15]:<16}"
            f"{','.join(s.tags)[:15]:<16}{size:>12}  {paths_txt}{flag}"
        )
    out.note(f"{len(refs)} snapshot(s)")
    if hidden:
        shown = "listed above" if forgotten else "not listed; --forgotten shows them"
        out.note(f"{len(hidden)} snapshot(s) marked forgotten, kept until their Object Lock lapses ({shown})")


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
    from cermin.engine.treewalk import find_node, node_json, walk
    from cermin.format.records import DIR
    from cermin.repo.snapshots import resolve
    from cermin.util import display_path

    out = Output(g)
    bad, on_bad = _bad_entries(out)
    repo = open_repo(g)
    ref = resolve(repo, snapshot)
    bpath = os.fsencode(path)
    node = find_node(repo, ref.snapshot.tree, bpath)
    base = b"/" + b"/".join(c for c in bpath.split(b"/") if c)
    base = b"" if base == b"/" else base
    if node.type == DIR:
        entries = walk(repo, node.subtree, base, recursive=recursive, on_bad=on_bad)
    else:
        entries = iter([(base, node)])
    for p, n in entries:
        if out.json:
            out.emit({"message_type": "node", "snapshot": ref.id, **node_json(p, n)})
        elif long_:
            d = node_json(p, n)
            out.text(
                f"{d['permissions']} {n.user or n.uid:>8} {n.group or n.gid:>8} {n.size:>12} "
                f"{d['mtime'][:19].replace('T', ' ')} {display_path(p)}"
            )
        else:
            out.text(display_path(p))
    return _bad_exit(out, bad)


@click.command()
@click.argument("snapshot1")
@click.argument("snapshot2")
@click.option("--metadata", is_flag=True, help="Also list entries whose metadata alone changed (U).")
@click.pass_obj
def diff(g, snapshot1, snapshot2, metadata):
    """Show what changed from SNAPSHOT1 to SNAPSHOT2: + added, - removed, M modified, T type, U metadata."""
    from cermin.engine.treewalk import diff_trees
    from cermin.repo.snapshots import resolve
    from cermin.util import display_path

    out = Output(g)
    bad, on_bad = _bad_entries(out)
    repo = open_repo(g)
    a, b = resolve(repo, snapshot1), resolve(repo, snapshot2)
    counts = {"+": 0, "-": 0, "M": 0, "T": 0, "U": 0}
    for change, path, old, new in diff_trees(repo, a.snapshot.tree, b.snapshot.tree, on_bad=on_bad):
        counts[change] += 1
        if change == "U" and not metadata:
            continue
        n = new or old
        suffix = "/" if n.type == "dir" else ""
        if out.json:
            out.emit({"message_type": "change", "path": display_path(path) + suffix, "modifier": change})
        else:
            out.text(f"{change:<5}{display_path(path)}{suffix}")
    if out.json:
        out.emit(
            {
                "message_type": "statistics",
                "source_snapshot": a.id,
                "target_snapshot": b.id,
                "added": counts["+"],
                "removed": counts["-"],
                "modified": counts["M"],
                "type_changed": counts["T"],
                "metadata_changed": counts["U"],
            }
        )
    else:
        out.note(
            f"\nadded {counts['+']}, removed {counts['-']}, modified {counts['M']}, "
            f"type changed {counts['T']}, metadata changed {counts['U']}"
        )
    return _bad_exit(out, bad)


@click.command()
@click.argument("patterns", nargs=-1, required=True)
@click.option("-s", "--snapshot", "snaps", multiple=True, help="Search only these snapshots.")
@snapshot_filters
@click.pass_obj
def find(g, patterns, snaps, hosts, tags, paths):
    """Find files whose name (or path, if the pattern has a '/') matches a glob PATTERN."""
    from cermin.engine.treewalk import find_in_tree, node_json
    from cermin.repo.snapshots import list_snapshots, resolve
    from cermin.util import display_path

    out = Output(g)
    bad, on_bad = _bad_entries(out)
    repo = open_repo(g)
    refs = (
        [resolve(repo, s) for s in snaps] if snaps else list_snapshots(repo, tuple(hosts), tuple(tags), _paths(paths))
    )
    total = 0
    for ref in refs:
        for p, n in find_in_tree(repo, ref.snapshot.tree, list(patterns), on_bad):
            total += 1
            if out.json:
                out.emit({"message_type": "match", "snapshot": ref.id, **node_json(p, n)})
            else:
                out.text(f"{ref.short_id}  {n.size:>12}  {display_path(p)}")
    if not out.json:
        out.note(f"{total} match(es) in {len(refs)} snapshot(s)")
    return _bad_exit(out, bad)
