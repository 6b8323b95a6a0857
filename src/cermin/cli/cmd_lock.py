"""`cermin lock status|extend|unhide`: the immutable tier's retention."""

from __future__ import annotations

import click

from cermin.cli.common import Output, backend_of, locked, open_repo


@click.group()
def lock():
    """Object Lock retention of an immutable (S3) repository."""


def _show(out: Output, rep, dry_run: bool) -> None:
    if out.json:
        out.emit(
            {
                "message_type": "lock",
                "policy": rep.policy,
                "checked": rep.checked,
                "extended": rep.extended,
                "lapsing": len(rep.lapsing),
                "until": rep.until,
                "hidden": rep.hidden,
                "planted": rep.planted,
                "missing": rep.missing,
                "warnings": rep.warnings,
                "dry_run": dry_run,
            }
        )
        return
    p = rep.policy
    out.text(f"policy: {p['mode']} lock of {p['days']} days, maintenance every {p['maintenance_days']} days")
    verb = "would extend" if dry_run else "extended"
    out.text(f"checked {rep.checked} objects; {verb} {len(rep.lapsing)} to {rep.until[:10]}")
    for w in rep.warnings:
        out.warn(w)
    if rep.hidden:
        out.warn(
            f"{len(rep.hidden)} objects are hidden behind delete markers (still readable): "
            "`cermin lock unhide` makes them visible again; someone deleted them with these credentials"
        )
    if rep.planted:
        out.warn(
            f"{len(rep.planted)} objects have newer versions cermin did not write (ignored; the originals are "
            "the ones kept locked): someone overwrote them with these credentials"
        )
    if rep.missing:
        out.warn(f"{len(rep.missing)} objects the repository needs have no version at all: run `cermin check`")


@lock.command("status")
@click.pass_obj
def lock_status(g):
    """Show the policy, what would need extending now, and hidden or planted objects."""
    from cermin.engine.objectlock import extend_locks

    out = Output(g)
    repo = open_repo(g, load_index=False)
    _show(out, extend_locks(repo, dry_run=True), True)


@lock.command("extend")
@click.pass_obj
def lock_extend(g):
    """Extend the retention of every object still needed that would lapse before the next run."""
    from cermin.engine.objectlock import extend_locks

    out = Output(g)
    repo = open_repo(g, load_index=False)
    with locked(g, repo, False, "lock extend"):
        _show(out, extend_locks(repo), False)


@lock.command("unhide")
@click.pass_obj
def lock_unhide(g):
    """Remove delete markers that hide locked objects (needs no password)."""
    from cermin.engine.objectlock import unhide

    out = Output(g)
    keys = unhide(backend_of(g))
    out.emit({"message_type": "unhide", "keys": keys}) if out.json else out.text(
        f"made {len(keys)} object(s) visible again"
    )
