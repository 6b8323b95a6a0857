"""Integrity and maintenance: check, repair, forget, prune, protect."""

from __future__ import annotations

import click

from cermin.cli.common import Output, open_repo, reporter

_extend_locks = click.option(
    "--extend-locks", is_flag=True, help="Object Lock repositories: also run `cermin lock extend` afterwards."
)


@click.command()
@click.option("--read-data", is_flag=True, help="Read and authenticate every blob of every pack.")
@click.option(
    "--read-data-subset",
    "subset",
    metavar="N%|n/m",
    help="Read a random N% of packs, or group n of m (rotate n daily to cover all in m days).",
)
@_extend_locks
@click.pass_obj
def check(g, read_data, subset, extend_locks):
    """Verify the repository; name every damaged pack, blob, snapshot and file path. Exit 1 on damage."""
    from cermin.ops import commands

    out = Output(g)
    opts = commands.CheckOptions(read_data, subset, extend_locks, g.no_lock)
    with reporter(out) as progress:
        return out.render(commands.check(open_repo(g, load_index=False), opts, progress))


@click.group()
def repair():
    """Repair a damaged repository: `repair packs`, then `repair index`, then `repair snapshots`."""


@repair.command("index")
@click.pass_obj
def repair_index_cmd(g):
    """Rebuild the index from the packs' own headers."""
    from cermin.ops import commands

    return Output(g).render(commands.repair_index(open_repo(g, load_index=False), g.no_lock))


@repair.command("packs")
@click.argument("pack_ids", nargs=-1)
@click.pass_obj
def repair_packs_cmd(g, pack_ids):
    """Read packs (all, or PACK_IDS), move readable blobs out of damaged ones, delete the damaged packs."""
    from cermin.ops import commands

    out = Output(g)
    with reporter(out) as progress:
        res = commands.repair_packs(open_repo(g, load_index=False), list(pack_ids), progress, g.no_lock)
    return out.render(res)


@repair.command("snapshots")
@click.option("--forget", is_flag=True, help="Remove the original damaged snapshots after writing repaired ones.")
@click.pass_obj
def repair_snapshots_cmd(g, forget):
    """Write repaired snapshots without the files whose data is lost."""
    from cermin.ops import commands

    return Output(g).render(commands.repair_snapshots(open_repo(g, load_index=False), forget, g.no_lock))


_max_unused = click.option(
    "--max-unused",
    default="5%",
    show_default=True,
    help="Unused space allowed to remain in kept packs, as % of used data.",
)


@click.command()
@_max_unused
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan, change nothing.")
@_extend_locks
@click.pass_obj
def prune(g, max_unused, dry_run, extend_locks):
    """Remove data no snapshot uses: plan, then repack, re-index and delete in two phases."""
    from cermin.ops import commands

    out = Output(g)
    opts = commands.PruneOptions(commands.parse_percent(max_unused), dry_run, extend_locks, g.no_lock)
    with reporter(out) as progress:
        return out.render(commands.prune(open_repo(g, load_index=False), opts, progress))


@click.command()
@click.argument("snapshot_ids", nargs=-1)
@click.option("--keep-last", type=click.IntRange(min=0), default=0, help="Keep the N newest snapshots.")
@click.option("--keep-hourly", type=click.IntRange(min=0), default=0)
@click.option("--keep-daily", type=click.IntRange(min=0), default=0)
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0)
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0)
@click.option("--keep-yearly", type=click.IntRange(min=0), default=0)
@click.option("--keep-within", help="Keep snapshots newer than DURATION before the newest (e.g. 1y6m, 30d).")
@click.option("--keep-tag", "keep_tags", multiple=True, help="Keep snapshots with this tag ('a,b': both).")
@click.option(
    "--group-by", default="host,paths", show_default=True, help="Apply the policy per group of host,paths,tags."
)
@click.option("--host", "hosts", multiple=True)
@click.option("--tag", "tags", multiple=True)
@click.option("--path", "paths", multiple=True)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be removed.")
@click.option("--prune", "then_prune", is_flag=True, help="Prune right after forgetting.")
@_max_unused
@click.pass_obj
def forget(
    g,
    snapshot_ids,
    keep_last,
    keep_hourly,
    keep_daily,
    keep_weekly,
    keep_monthly,
    keep_yearly,
    keep_within,
    keep_tags,
    group_by,
    hosts,
    tags,
    paths,
    dry_run,
    then_prune,
    max_unused,
):
    """Remove snapshots: the given IDs, or those a --keep-* policy does not keep (per group)."""
    from cermin.cli.cmd_browse import _paths
    from cermin.engine.forget import KeepPolicy
    from cermin.ops import commands

    out = Output(g)
    keep = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, list(keep_tags))
    opts = commands.ForgetOptions(
        snapshot_ids=list(snapshot_ids),
        policy=None if snapshot_ids else KeepPolicy(*keep),
        hosts=tuple(hosts),
        tags=tuple(tags),
        paths=_paths(paths),
        group_by=tuple(x.strip() for x in group_by.split(",") if x.strip()),
        dry_run=dry_run,
        prune=commands.PruneOptions(commands.parse_percent(max_unused)) if then_prune else None,
        no_lock=g.no_lock,
    )
    with reporter(out) as progress:
        return out.render(commands.forget(open_repo(g, load_index=False), opts, progress))


@click.command()
@click.argument("snapshot")
@click.option("--until", "until", required=True, help="Date (YYYY-MM-DD or RFC 3339, UTC) until which it is kept.")
@click.pass_obj
def protect(g, snapshot, until):
    """Keep SNAPSHOT from forget and prune until a date; on Object Lock storage also lock it that long.
    Protections can be extended but never shortened or lifted."""
    from cermin.ops import commands

    when = commands.parse_until(until)
    return Output(g).render(commands.protect(open_repo(g, load_index=False), snapshot, when, g.no_lock))
