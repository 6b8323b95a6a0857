"""`cermin config check`: validate the agent's TOML and print the resolved plan (docs/agent.md)."""

from __future__ import annotations

import click

from cermin.cli.common import Output

DEFAULT_CONFIG = "/etc/cermin/cermin.toml"


@click.group()
def config():
    """The agent's configuration (tenants, systems, policy classes)."""


@config.command("check")
@click.option(
    "-c",
    "--config",
    "path",
    envvar="CERMIN_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The TOML file (or CERMIN_CONFIG).",
)
@click.pass_obj
def config_check(g, path):
    """Validate the configuration and print what runs when, to which copies."""
    from datetime import UTC, datetime

    from cermin.ops.config import load_config
    from cermin.ops.plan import ConfigPlan

    return Output(g).render(ConfigPlan(load_config(path), datetime.now(UTC)))
