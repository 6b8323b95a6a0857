"""`cermin drill SYSTEM|SNAP` (restore, verify, check, time, sign: ops/drill.py) and `cermin drill verify`."""

from __future__ import annotations

import click

from cermin.cli.cmd_config import DEFAULT_CONFIG
from cermin.cli.common import Output, reporter
from cermin.errors import UsageError

COPIES = ("primary", "immutable", "mirror")


class DrillGroup(click.Group):
    """`drill SYSTEM|SNAP [OPTIONS]` next to `drill verify REPORT`: a first word that names no
    subcommand is the drill's target (the hidden `run` command takes it). cli/main.py asks
    `get_command` while hoisting global options, so an unknown word answers with `run` there too."""

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or super().get_command(ctx, "run")

    def parse_args(self, ctx, args):
        args = list(args)
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=DrillGroup, subcommand_metavar="SYSTEM|SNAP [OPTIONS] | verify REPORT [--key PUB | -c CONFIG]")
def drill():
    """Restore drills: `drill SYSTEM|SNAP` restores into a sandbox, verifies every file, runs the
    system's checks, measures the RTO and writes a signed report (exit 1 when it fails); `drill
    verify REPORT` checks one (exit 0 only when signed by a trusted key). `drill SYSTEM --help` lists
    the drill's options (--config, --last-clean, --from-copy, --keep, ...)."""


def config_option(f):
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="CERMIN_CONFIG",
        default=DEFAULT_CONFIG,
        show_default=True,
        help="The agent's TOML file (or CERMIN_CONFIG).",
    )(f)


@drill.command("run", hidden=True)
@click.argument("target")
@config_option
@click.option("--last-clean", is_flag=True, help="Restore the last snapshot the guard calls clean (per source).")
@click.option(
    "--from-copy", "copy", type=click.Choice(COPIES), default="primary", show_default=True, help="Which copy."
)
@click.option("--keep", is_flag=True, help="Keep the restored data in the sandbox afterwards.")
@click.option("--key-file", type=click.Path(dir_okay=False), help="Signing key (default: the config's key_file).")
@click.option("--reports-dir", type=click.Path(file_okay=False), help="Where the JSON and HTML go.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Instead of the config's agent.workdir.")
@click.pass_obj
def drill_run(g, target, config_path, last_clean, copy, keep, key_file, reports_dir, workdir):
    """Drill TARGET: a system (tenant/system, or a unique system name) or one snapshot id of a system."""
    from cermin.ops.config import ConfigError, load_config
    from cermin.ops.drill import LAST_CLEAN, find_snapshot_system, run_drill

    cfg = load_config(config_path)
    out = Output(g)
    repo, snapshot = None, LAST_CLEAN if last_clean else None
    try:
        system = cfg.system(target)
    except ConfigError:
        if not all(c in "0123456789abcdef" for c in target.lower()) or len(target) < 4:
            raise
        if last_clean:
            raise UsageError("--last-clean picks the snapshots itself: give a system, not a snapshot") from None
        system, repo, snapshot = find_snapshot_system(cfg, target, copy)
    with reporter(out) as progress:
        result = run_drill(
            cfg,
            system,
            copy=copy,
            snapshot=snapshot,
            workdir=workdir,
            signing_key=key_file,
            progress=progress,
            keep=keep,
            reports_dir=reports_dir,
            repo=repo,
            no_lock=g.no_lock,
        )
    return out.render(result)


@drill.command("verify")
@click.argument("report")
@click.option(
    "--key",
    "keys",
    multiple=True,
    help="A trusted public key: a .pub file, the agent's key file, or base64 (repeatable).",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CERMIN_CONFIG",
    help=f"Without --key, trust the agent key of this TOML file (or CERMIN_CONFIG; default {DEFAULT_CONFIG} "
    "when it exists): its key_file's .pub, or <workdir>/agent.key.pub.",
)
@click.pass_obj
def drill_verify(g, report, keys, config_path):
    """Check a signed drill report (a JSON file, or with -r the id of a drill_report record). Exit 0 only
    when it is intact and signed by a trusted key (--key, or the agent's key from the configuration); a
    valid signature by any other key exits 1."""
    import os

    from cermin.ops.agentkey import read_public_key
    from cermin.ops.drillreport import load_report_file, verify_report

    if keys:
        trusted, hint = [read_public_key(k) for k in keys], "not one of the keys given with --key"
    else:
        trusted, hint = _config_keys(config_path)
    out = Output(g)

    def render(v):
        if not v.trusted:
            v.hint = hint
        return out.render(v)

    if os.path.exists(report) or not g.repo:
        return render(verify_report(load_report_file(report), trusted, source=report))
    from cermin.backend.base import Kind
    from cermin.cli.common import open_repo
    from cermin.format import records
    from cermin.format.records import AuxRecord

    repo = open_repo(g, load_index=False)
    prefix = report.lower()
    names = [n for n, _ in repo.backend.list(Kind.AUX) if n.startswith(prefix)]
    if len(names) != 1:
        why = "no" if not names else f"{len(names)}"
        raise UsageError(f"{report}: not a file, and {why} aux records in the repository start with it")
    rec = repo.load_record(Kind.AUX, names[0], lambda raw: records.decode(raw, AuxRecord))
    return render(verify_report(rec, trusted, source=f"aux/{names[0][:12]}"))


def _config_keys(config_path: str | None) -> tuple[list[bytes], str]:
    """([the agent's public key], a hint when it is not trusted) from the configuration: `config_path`
    (-c or CERMIN_CONFIG: it must load), else the default one when it exists."""
    import os

    from cermin.ops.agentkey import read_public_key
    from cermin.ops.config import load_config

    if config_path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return [], "no trusted key to check it against: give --key PUB (the agent's .pub) or -c CONFIG"
        config_path = DEFAULT_CONFIG
    cfg = load_config(config_path)
    key_file = cfg.agent.key_file or os.path.join(cfg.agent.workdir, "agent.key")
    for path in (key_file + ".pub", key_file):
        if os.path.exists(path):
            return [read_public_key(path)], f"not the agent's key ({path}) of {config_path}"
    return [], f"no agent key at {key_file}.pub (of {config_path}) to check it against: give --key PUB"
