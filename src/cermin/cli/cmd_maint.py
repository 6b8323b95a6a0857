"""Integrity and maintenance: check, repair, forget, prune."""

from __future__ import annotations

import click

from cermin.cli.common import Output, locked, open_repo
from cermin.errors import EXIT_FATAL, UsageError
from cermin.util import parse_rfc3339

_extend_locks = click.option(
    "--extend-locks", is_flag=True, help="Object Lock repositories: also run `cermin lock extend` afterwards."
)


def _extend(out: Output, repo) -> None:
    from cermin.engine.objectlock import extend_locks

    rep = extend_locks(repo)
    if out.json:
        out.emit({"message_type": "lock", "checked": rep.checked, "extended": rep.extended, "until": rep.until})
    else:
        out.text(f"Object Lock: extended {rep.extended} of {rep.checked} objects to {rep.until[:10]}")


def _planted(out: Output, names: list[str]) -> None:
    if names:
        shown = ", ".join(n[:20] for n in names[:5]) + (", ..." if len(names) > 5 else "")
        out.warn(
            f"{len(names)} object(s) fail authentication though named by their content ({shown}): planted without "
            "the repository key; ignored and left in place (`cermin check` lists them)"
        )


def _say(out: Output):
    def say(msg: str) -> None:
        if out.json:
            out.emit({"message_type": "status", "message": msg})
        elif out.verbose:
            out.text(msg)

    return say


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
    from cermin.engine.check import run_check

    out = Output(g)
    repo = open_repo(g, load_index=False)
    with locked(g, repo, False, "check"):
        report = run_check(repo, read_data, subset, _say(out))
        if extend_locks:
            _extend(out, repo)
    if out.json:
        for p in report.errors:
            out.emit(
                {
                    "message_type": "error",
                    "kind": p.kind,
                    "message": p.message,
                    "pack": p.pack,
                    "object": p.object,
                    "blobs": p.blobs,
                }
            )
        for p in report.notices:
            out.emit({"message_type": "notice", "kind": p.kind, "message": p.message, "object": p.object})
        for sid, paths in report.affected.items():
            out.emit({"message_type": "affected", "snapshot": sid, "paths": paths})
        out.emit(
            {
                "message_type": "summary",
                "ok": report.ok,
                "errors": len(report.errors),
                "snapshots": report.snapshots,
                "trees": report.trees,
                "packs": report.packs,
                "blobs": report.blobs,
                "packs_read": report.packs_read,
                "bytes_read": report.bytes_read,
                "damaged_packs": report.damaged_packs,
                "damaged_snapshots": report.damaged_snapshots,
            }
        )
    else:
        for p in report.notices:
            out.text(f"notice: {p.message}")
        for p in report.errors:
            out.text(f"error: {p.message}")
            if p.blobs and out.verbose:
                out.text("  blobs: " + ", ".join(b[:16] for b in p.blobs))
        for sid, paths in report.affected.items():
            out.text(f"snapshot {sid[:8]} loses data in {len(paths)} path(s):")
            for path in paths[:50]:
                out.text(f"  {path}")
            if len(paths) > 50:
                out.text(f"  ... and {len(paths) - 50} more (--json lists all)")
        read = f", read {report.packs_read} packs" if report.packs_read else ""
        out.text(
            f"checked {report.snapshots} snapshots, {report.trees} trees, {report.packs} packs, "
            f"{report.blobs} blobs{read}: " + ("no errors" if report.ok else f"{len(report.errors)} ERRORS")
        )
    if not report.ok:
        if not out.json:
            click.echo(
                f"cermin: error: check found {len(report.errors)} problem(s); see `cermin repair --help`", err=True
            )
        return EXIT_FATAL
    return 0


@click.group()
def repair():
    """Repair a damaged repository: `repair packs`, then `repair index`, then `repair snapshots`."""


@repair.command("index")
@click.pass_obj
def repair_index_cmd(g):
    """Rebuild the index from the packs' own headers."""
    from cermin.engine.repair import repair_index

    out = Output(g)
    repo = open_repo(g, load_index=False)
    with locked(g, repo, True, "repair index"):
        r = repair_index(repo)
    _planted(out, [f"index/{n}" for n in r.foreign])
    if out.json:
        out.emit(
            {
                "message_type": "summary",
                "packs_indexed": r.packs_indexed,
                "packs_adopted": r.packs_adopted,
                "packs_dropped": r.packs_dropped,
                "index_files_written": len(r.index_files_written),
                "index_files_removed": r.index_files_removed,
            }
        )
    else:
        out.text(
            f"indexed {r.packs_indexed} packs ({len(r.packs_adopted)} adopted, {len(r.packs_dropped)} "
            f"unreadable left out); replaced {r.index_files_removed} index files"
        )


@repair.command("packs")
@click.argument("pack_ids", nargs=-1)
@click.pass_obj
def repair_packs_cmd(g, pack_ids):
    """Read packs (all, or PACK_IDS), move readable blobs out of damaged ones, delete the damaged packs."""
    from cermin.engine.repair import repair_packs

    out = Output(g)
    repo = open_repo(g, load_index=False)
    with locked(g, repo, True, "repair packs"):
        r = repair_packs(repo, list(pack_ids) or None, progress=_say(out))
    if out.json:
        out.emit(
            {
                "message_type": "summary",
                "packs_checked": r.packs_checked,
                "packs_salvaged": r.packs_salvaged,
                "blobs_salvaged": r.blobs_salvaged,
                "blobs_lost": r.blobs_lost,
                "packs_written": r.packs_written,
            }
        )
    else:
        out.text(
            f"checked {r.packs_checked} packs: replaced {len(r.packs_salvaged)} damaged packs, "
            f"salvaged {r.blobs_salvaged} blobs, lost {len(r.blobs_lost)}"
        )
        if r.blobs_lost:
            out.text("run `cermin repair snapshots` to rewrite the snapshots that used the lost blobs")


@repair.command("snapshots")
@click.option("--forget", is_flag=True, help="Remove the original damaged snapshots after writing repaired ones.")
@click.pass_obj
def repair_snapshots_cmd(g, forget):
    """Write repaired snapshots without the files whose data is lost."""
    from cermin.engine.repair import repair_snapshots

    out = Output(g)
    repo = open_repo(g, load_index=False)
    with locked(g, repo, True, "repair snapshots"):
        repo.load_index()
        r = repair_snapshots(repo, forget)
    _planted(out, [f"snapshots/{n}" for n in r.foreign])
    if out.json:
        for s in r.repaired:
            out.emit(
                {"message_type": "repaired", "original": s.original, "new": s.new, "removed_paths": s.removed_paths}
            )
        out.emit(
            {
                "message_type": "summary",
                "repaired": len(r.repaired),
                "unreadable_removed": r.unreadable_removed,
                "originals_removed": r.originals_removed,
            }
        )
    else:
        for s in r.repaired:
            new = f"-> {s.new[:8]}" if s.new else "nothing recoverable, removed"
            out.text(f"snapshot {s.original[:8]} {new}: {len(s.removed_paths)} path(s) left out")
            for p in s.removed_paths[:20]:
                out.text(f"  {p}")
        for n in r.unreadable_removed:
            out.text(f"removed unreadable snapshot file {n[:12]}")
        out.text(
            f"{len(r.repaired)} snapshot(s) repaired" + ("" if forget else "; originals kept (--forget removes them)")
        )


def _waiting(out: Output, rid: str, count: int, what: str) -> int:
    """A deletion queued on a server with a two-person rule: say so (not an error), exit 20."""
    from cermin.errors import EXIT_APPROVAL

    if out.json:
        out.emit({"message_type": "approval_required", "id": rid, "count": count, "what": what})
    else:
        click.echo(
            f"waiting for approval {rid}: {what} ({count} objects) needs a second admin "
            f"(`cermin approvals approve {rid}`)",
            err=True,
        )
    return EXIT_APPROVAL


def _prune(g, out: Output, repo, lock, max_unused: float, dry_run: bool):
    from cermin.engine.prune import execute_prune, plan_prune
    from cermin.util import fmt_bytes

    plan = plan_prune(repo, max_unused)
    _planted(out, plan.foreign)
    if out.json:
        out.emit({"message_type": "prune_plan", "dry_run": dry_run, **plan.to_json()})
    else:
        out.text(
            f"used: {plan.used_blobs} blobs, {fmt_bytes(plan.used_bytes)}; unused: {plan.unused_blobs} blobs, "
            f"{fmt_bytes(plan.unused_bytes)}"
        )
        out.text(
            f"packs: keep {len(plan.keep_packs)}, repack {len(plan.repack_packs)} "
            f"({plan.repack_blobs} blobs, {fmt_bytes(plan.repack_bytes)}), delete {len(plan.delete_packs)}, "
            f"delete unindexed {len(plan.unindexed_packs)}"
        )
        out.text(f"frees about {fmt_bytes(plan.bytes_freed)} of {fmt_bytes(plan.total_bytes)}")
    if dry_run:
        return
    res = execute_prune(repo, plan, lock, _say(out))
    if res.approval:
        what = f"deleting {res.packs_queued} packs and {res.index_files_queued} old index files"
        return _waiting(out, res.approval, res.packs_queued + res.index_files_queued, what)
    if out.json:
        out.emit(
            {
                "message_type": "summary",
                "packs_written": res.packs_written,
                "bytes_written": res.bytes_written,
                "packs_deleted": res.packs_deleted,
                "bytes_deleted": res.bytes_deleted,
            }
        )
    else:
        out.text(
            f"deleted {res.packs_deleted} packs ({fmt_bytes(res.bytes_deleted)}), wrote {res.packs_written} "
            f"packs ({fmt_bytes(res.bytes_written)})"
        )


_max_unused = click.option(
    "--max-unused",
    default="5%",
    show_default=True,
    help="Unused space allowed to remain in kept packs, as % of used data.",
)


def _parse_pct(s: str) -> float:
    from cermin.errors import UsageError

    try:
        v = float(s.rstrip("%")) / 100
    except ValueError:
        raise UsageError(f"bad --max-unused {s!r}") from None
    if not 0 <= v:
        raise UsageError(f"bad --max-unused {s!r}")
    return v


@click.command()
@_max_unused
@click.option("-n", "--dry-run", is_flag=True, help="Print the plan, change nothing.")
@_extend_locks
@click.pass_obj
def prune(g, max_unused, dry_run, extend_locks):
    """Remove data no snapshot uses: plan, then repack, re-index and delete in two phases."""
    out = Output(g)
    repo = open_repo(g, load_index=False)
    with locked(g, repo, True, "prune") as lock:
        rc = _prune(g, out, repo, lock, _parse_pct(max_unused), dry_run)
        if extend_locks and not dry_run:
            _extend(out, repo)
    return rc


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
    from cermin.engine.forget import forget as do_forget

    out = Output(g)
    repo = open_repo(g, load_index=False)
    policy = None
    if not snapshot_ids:
        policy = KeepPolicy(
            keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, keep_within, list(keep_tags)
        )
    with locked(g, repo, True, "forget") as lock:
        res = do_forget(
            repo,
            list(snapshot_ids),
            policy,
            tuple(hosts),
            tuple(tags),
            _paths(paths),
            tuple(x.strip() for x in group_by.split(",") if x.strip()),
            dry_run,
        )
        if snapshot_ids:
            for sid in res.ids:
                out.emit({"message_type": "forget", "id": sid, "dry_run": dry_run}) if out.json else out.text(
                    f"{'would remove' if dry_run else 'remove'} {sid[:8]}"
                )
        for grp in res.groups:
            if out.json:
                out.emit(
                    {
                        "message_type": "forget_group",
                        "group": {k: v for k, v in grp.key.items()},
                        "keep": [{"id": d.ref.id, "time": d.ref.snapshot.time, "reasons": d.reasons} for d in grp.keep],
                        "remove": [{"id": d.ref.id, "time": d.ref.snapshot.time} for d in grp.remove],
                        "dry_run": dry_run,
                    }
                )
            else:
                out.text(f"group {grp.key}: keep {len(grp.keep)}, remove {len(grp.remove)}")
                for d in grp.decisions:
                    what = "keep  " if d.keep else "remove"
                    out.text(f"  {what} {d.ref.short_id} {d.ref.snapshot.time[:19]}  {', '.join(d.reasons)}")
        if res.approval:
            return _waiting(out, res.approval, len(res.ids), f"forgetting {len(res.ids)} snapshot(s)")
        if not dry_run:
            out.text(f"removed {len(res.removed)} snapshot(s)")
            if res.locked:
                out.warn(
                    f"{len(res.locked)} snapshot(s) are under Object Lock retention: marked forgotten (hidden, no "
                    "longer re-locked); their files stay until the retention lapses"
                )
            if then_prune:
                return _prune(g, out, repo, lock, _parse_pct(max_unused), False)


@click.command()
@click.argument("snapshot")
@click.option("--until", "until", required=True, help="Date (YYYY-MM-DD or RFC 3339, UTC) until which it is kept.")
@click.pass_obj
def protect(g, snapshot, until):
    """Keep SNAPSHOT from forget and prune until a date; on Object Lock storage also lock it that long.
    Protections can be extended but never shortened or lifted."""
    from cermin.engine.protect import protect as do_protect
    from cermin.repo.snapshots import resolve

    out = Output(g)
    try:
        when = parse_rfc3339(until if "T" in until else until + "T00:00:00Z")
    except ValueError:
        raise UsageError(f"bad --until {until!r}: use YYYY-MM-DD or an RFC 3339 time") from None
    repo = open_repo(g, load_index=False)
    with locked(g, repo, False, "protect"):
        repo.load_index()
        res = do_protect(repo, resolve(repo, snapshot), when)
    if out.json:
        out.emit(
            {
                "message_type": "protected",
                "snapshot": res.snapshot,
                "until": res.until,
                "record": res.record,
                "objects_locked": res.objects_locked,
            }
        )
    else:
        extra = f"; Object Lock extended on {res.objects_locked} objects" if res.objects_locked else ""
        out.text(f"snapshot {res.snapshot[:8]} protected until {res.until}{extra}")
