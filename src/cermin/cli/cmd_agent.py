"""`cermin agent`: the backup agent. For now `agent keygen` (the key that signs drill reports)."""

from __future__ import annotations

import click

from cermin.cli.cmd_config import DEFAULT_CONFIG
from cermin.cli.common import Output


@click.group()
def agent():
    """The backup agent (docs/agent.md)."""


@agent.command("keygen")
@click.option("--key-file", type=click.Path(dir_okay=False), help="Where to write it (default: from the config).")
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CERMIN_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent's TOML (its agent.key_file, or <workdir>/agent.key), when --key-file is not given.",
)
@click.pass_obj
def agent_keygen(g, key_file, config_path):
    """Make the agent's Ed25519 key that signs drill reports (never replaces an existing one)."""
    import os

    from cermin.ops.agentkey import keygen

    if not key_file:
        from cermin.ops.config import load_config

        cfg = load_config(config_path)
        key_file = cfg.agent.key_file or os.path.join(cfg.agent.workdir, "agent.key")
    return Output(g).render(keygen(key_file))
