"""`cermin mirror`: copy the snapshots of one repository (--from A) into another (--to B)."""

from __future__ import annotations

import os

import click

from cermin.cli.common import FromRepo, Output, from_options, open_repo, reporter
from cermin.errors import UsageError


class _Target:
    """The Globals of B: `--to` names it, its password comes by the usual options."""

    def __init__(self, g, location: str) -> None:
        self.__dict__.update(vars(g))
        self.repo = location


def _from_to(source: str | None, target: str | None) -> tuple[str, str]:
    if not source:
        raise UsageError("give the source repository with --from")
    if not target:
        raise UsageError("give the target repository with --to")
    return source, target


class MirrorGroup(click.Group):
    """`mirror [OPTIONS] [SNAPSHOT...]` and, next to it, `mirror status|verify ...`: positional words
    are snapshot ids unless the first one names a subcommand. Global options (`--json`, `-q`,
    `--password-file`, ...) may come anywhere, after snapshot ids too: cli/main.py hoists them,
    walking past the words (`words_are_arguments`) and knowing this group's options below its
    subcommands (`options_after_subcommand`)."""

    words_are_arguments = True
    options_after_subcommand = True

    def parse_args(self, ctx, args):
        args = list(args)
        takes_value = {
            n
            for p in self.params
            if isinstance(p, click.Option) and not p.is_flag
            for n in (*p.opts, *p.secondary_opts)
        }
        words, rest, i = [], [], 0
        while i < len(args):
            tok = args[i]
            if tok == "--":
                words += args[i + 1 :]
                break
            if tok.startswith("-") and tok != "-":
                n = 1 if tok in takes_value else 0
                rest += args[i : i + 1 + n]
                i += 1 + n
                continue
            if not words and tok in self.commands:  # a subcommand: click parses the rest
                return super().parse_args(ctx, rest + self._hoist(args[i + 1 :], takes_value) + [tok] + self._sub)
            words.append(tok)
            i += 1
        ctx.meta["mirror.snapshot_ids"] = words
        return super().parse_args(ctx, rest)

    def _hoist(self, args: list[str], takes_value: set[str]) -> list[str]:
        """`mirror status --from A --to B`: this group's options after the subcommand name move in
        front of it; the subcommand's own stay in `self._sub`."""
        mine = {n for p in self.params if isinstance(p, click.Option) for n in (*p.opts, *p.secondary_opts)}
        hoisted, self._sub, i = [], [], 0
        while i < len(args):
            tok = args[i]
            name = tok.split("=", 1)[0]
            if tok == "--":
                self._sub += args[i:]
                break
            if name in mine:
                n = 1 if tok in takes_value else 0
                hoisted += args[i : i + 1 + n]
                i += 1 + n
                continue
            self._sub.append(tok)
            i += 1
        return hoisted


@click.group(
    cls=MirrorGroup,
    invoke_without_command=True,
    options_metavar="[OPTIONS] [SNAPSHOT...]",
    subcommand_metavar="| COMMAND [ARGS]...",
)
@click.option("--from", "source", metavar="REPO", help="The repository to copy from (A): only read.")
@click.option("--to", "target", metavar="REPO", help="The repository to copy into (B): its password as usual.")
@from_options
@click.option("--host", "hosts", multiple=True, help="Only snapshots of this host (repeatable).")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag; 'a,b' needs both (repeatable).")
@click.option("--path", "paths", multiple=True, help="Only snapshots that include this path (repeatable).")
@click.option("-n", "--dry-run", is_flag=True, help="Say what would be copied; write nothing.")
@click.option(
    "--copy-acks",
    is_flag=True,
    help="Also copy the source's guard acknowledgements (and scans reporting no alarm), which can clear "
    "flagged snapshots in the target. Off: whoever holds the source's password could write them.",
)
@click.pass_context
def mirror(
    ctx,
    source,
    target,
    from_password_file,
    from_password_command,
    from_token_file,
    hosts,
    tags,
    paths,
    dry_run,
    copy_acks,
):
    """Copy every snapshot of --from (or the SNAPSHOTs given, or those matching --host/--tag/--path)
    that --to lacks, with everything it references. Nothing is written to --from; nothing is
    deleted in --to. The guard's marks and scans of --from travel too; its acknowledgements only
    with --copy-acks (docs/mirror.md).

    Exits 3 when some snapshots of the source could not be copied (damaged there): the others are.
    """
    if ctx.invoked_subcommand is not None:
        # `mirror status` / `mirror verify` (engine/mirrorstatus.py: mirror_status(src, dst),
        # mirror_verify(src, dst, read_data)) are registered below with @mirror.command(); they
        # read --from/--to from ctx.params of this group.
        return None
    from cermin.engine.mirror import MirrorOptions
    from cermin.ops import commands

    g = ctx.obj
    out = Output(g)
    a_loc, b_loc = _from_to(source, target)
    src = FromRepo(a_loc, from_password_file, from_password_command, from_token_file).open(out)
    dst = open_repo(_Target(g, b_loc), load_index=False)
    opts = MirrorOptions(
        hosts=tuple(hosts),
        tags=tuple(tags),
        paths=tuple(os.fsencode(p) for p in paths),
        snapshot_ids=list(ctx.meta.get("mirror.snapshot_ids", [])),
        dry_run=dry_run,
        copy_acks=copy_acks,
    )
    try:
        with reporter(out) as progress:
            result = commands.mirror(src, dst, opts, progress, no_lock=g.no_lock)
    finally:
        src.close()
        dst.close()
    return out.render(result)


def _parent(ctx):
    p = ctx.parent.params
    return (
        p["source"],
        p["target"],
        FromRepo(p["source"], p["from_password_file"], p["from_password_command"], p["from_token_file"])
        if p["source"]
        else None,
    )


@mirror.command("status")
@click.option("--source-id", metavar="ID", help="Without --from: only the mirror runs of this source repository.")
@click.pass_context
def mirror_status(ctx, source_id):
    """How far --to lags behind --from: per host and path set the newest snapshot on each side, the
    lag in time, snapshots and bytes, and the last mirror runs. Without --from, from --to alone."""
    from cermin.ops import commands

    g, out = ctx.obj, Output(ctx.obj)
    source, target, a = _parent(ctx)
    dst = open_repo(_Target(g, _from_to("-", target)[1]), load_index=False)
    src = a.open(out) if a is not None else None
    try:
        return out.render(commands.mirror_status(src, dst, source_id))
    finally:
        dst.close()
        if src is not None:
            src.close()


@mirror.command("verify")
@click.option("--read-data", is_flag=True, help="Also read and authenticate every blob of the copies in --to.")
@click.pass_context
def mirror_verify(ctx, read_data):
    """Prove that every snapshot --to mirrored from --from restores the same tree (names, metadata
    and contents), without writing anything to disk. Exits 1 when a copy differs."""
    from cermin.ops import commands

    g, out = ctx.obj, Output(ctx.obj)
    source, target, a = _parent(ctx)
    _from_to(source, target)
    src, dst = a.open(out), open_repo(_Target(g, target), load_index=False)
    try:
        return out.render(commands.mirror_verify(src, dst, read_data, no_lock=g.no_lock))
    finally:
        src.close()
        dst.close()
