"""`cermin guard mark|ack|report|scan`: the ransomware guard's evidence and verdicts (docs/guard.md).

Subcommands added elsewhere (`guard canary`) register on the `guard` group below.
"""

from __future__ import annotations

import click

from cermin.cli.common import Output, open_repo


@click.group()
def guard():
    """Ransomware guard: flag time windows, acknowledge alarms, explain verdicts."""


@guard.command("mark")
@click.option("--from", "start", required=True, help="Start of the window (YYYY-MM-DD or RFC 3339).")
@click.option("--to", "end", default="", help="End of the window; without it the alarm stays open.")
@click.option("--reason", required=True, help="Why (e.g. the EDR alert id).")
@click.option("--infected", is_flag=True, help="Flag as infected (default: suspicious).")
@click.pass_obj
def guard_mark(g, start, end, reason, infected):
    """Flag every snapshot taken in a time window as suspicious (or --infected), e.g. after an EDR alert."""
    from cermin.ops import commands

    repo = open_repo(g, load_index=False)
    return Output(g).render(commands.guard_mark(repo, start, end, reason, infected, g.no_lock))


@guard.command("ack")
@click.argument("snapshot")
@click.option("--reason", required=True, help="Why the alarm is benign.")
@click.pass_obj
def guard_ack(g, snapshot, reason):
    """Acknowledge SNAPSHOT's alarm as benign (marks recorded later still count)."""
    from cermin.ops import commands

    repo = open_repo(g, load_index=False)
    return Output(g).render(commands.guard_ack(repo, snapshot, reason, g.no_lock))


@guard.command("report")
@click.argument("snapshot")
@click.pass_obj
def guard_report(g, snapshot):
    """Explain SNAPSHOT's verdict: reasons, affected paths, marks, acknowledgements."""
    from cermin.ops import commands

    return Output(g).render(commands.guard_report(open_repo(g, load_index=False), snapshot))


@guard.command("scan")
@click.argument("snapshots", nargs=-1)
@click.option("--all", "all_snapshots", is_flag=True, help="Scan every snapshot (oldest first).")
@click.option(
    "--yara",
    "rules",
    type=click.Path(exists=True),
    help="Also match files against these YARA rules (a file, or a directory of *.yar/*.yara); "
    "needs pip install 'cermin[yara]'.",
)
@click.option("--all-files", is_flag=True, help="With --yara: match every file, not only the new and changed ones.")
@click.option("--parent", help="Compare with this snapshot instead of each one's own parent.")
@click.option("--dry-run", "--no-record", "dry_run", is_flag=True, help="Print the result; write no guard_scan record.")
@click.pass_obj
def guard_scan(g, snapshots, all_snapshots, rules, all_files, parent, dry_run):
    """Re-evaluate SNAPSHOTS by reading their data (made before the guard, or after a rule update);
    the result is a guard_scan record that can raise a verdict (or give one to a snapshot without)."""
    from cermin.cli.common import reporter
    from cermin.errors import UsageError
    from cermin.guard.scan import ScanOptions, load_yara
    from cermin.ops import commands

    if all_files and not rules:
        raise UsageError("--all-files needs --yara RULES")
    if not snapshots and not all_snapshots:
        raise UsageError("name the snapshots to scan (or --all)")
    compiled = load_yara(rules) if rules else None  # before the password: a missing extra fails fast
    opts = ScanOptions(parent=parent, yara=compiled, all_files=all_files, record=not dry_run)
    out = Output(g)
    repo = open_repo(g, load_index=False)
    with reporter(out) as progress:
        result = commands.guard_scan(repo, list(snapshots), opts, progress, g.no_lock, all_snapshots)
    return out.render(result)


@guard.group("canary")
def guard_canary():
    """Canary files: decoys whose any change or removal makes the next snapshot infected."""


@guard_canary.command("plant")
@click.argument("paths", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--count", type=click.IntRange(1, 16), default=2, show_default=True, help="Canary files per PATH.")
def guard_canary_plant(paths, count):
    """Place canary files into each directory PATH (names start with .cermin-canary)."""
    import os

    from cermin.guard.canary import plant

    for p in paths:
        for f in plant(p, count):
            click.echo(os.fsdecode(f))
