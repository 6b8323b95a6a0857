"""`cermin lock status|extend|unhide`: the immutable tier's retention."""

from __future__ import annotations

import click

from cermin.cli.common import Output, backend_of, open_repo


@click.group()
def lock():
    """Object Lock retention of an immutable (S3) repository."""


@lock.command("status")
@click.pass_obj
def lock_status(g):
    """Show the policy, what would need extending now, and hidden or planted objects."""
    from cermin.ops import commands

    return Output(g).render(commands.lock_status(open_repo(g, load_index=False)))


@lock.command("extend")
@click.pass_obj
def lock_extend(g):
    """Extend the retention of every object still needed that would lapse before the next run."""
    from cermin.ops import commands

    return Output(g).render(commands.lock_extend(open_repo(g, load_index=False), g.no_lock))


@lock.command("unhide")
@click.pass_obj
def lock_unhide(g):
    """Remove delete markers that hide locked objects (needs no password)."""
    from cermin.ops import commands

    return Output(g).render(commands.lock_unhide(backend_of(g)))
