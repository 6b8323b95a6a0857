"""`cermin guard mark|ack|report`: the ransomware guard's evidence and verdicts (docs/guard.md).

Subcommands added elsewhere (`guard canary`, `guard scan`) register on the `guard` group below.
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
