"""`cermin agent run|once|status|keygen`: the backup agent (ops/agent.py, docs/agent.md)."""

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


def _agent(config_path, name=None):
    from cermin.ops.agent import Agent
    from cermin.ops.agentview import open_store
    from cermin.ops.config import load_config

    cfg = load_config(config_path)
    return Agent(cfg, open_store(cfg), name=name or None)


def name_option(f):
    return click.option(
        "--name", default="", help="The agent's name in the state store (default: agent.name, else the host name)."
    )(f)


@agent.command("once")
@config_option
@name_option
@click.pass_obj
def agent_once(g, config_path, name):
    """Run every job that is due now, once, then exit (exit 1 if a job failed)."""
    from cermin.ops.agentview import TickResult

    a = _agent(config_path, name)
    a.start()
    return Output(g).render(TickResult(a.tick()))


@agent.command("run")
@config_option
@click.option(
    "--interval", type=click.FloatRange(1, 3600), default=30, show_default=True, help="Seconds between passes."
)
@name_option
@click.pass_obj
def agent_run(g, config_path, interval, name):
    """Run the agent in the foreground until SIGTERM or SIGINT (a systemd unit: docs/agent.md)."""
    import json
    import signal
    import threading

    from cermin.ops.agentview import job_line

    a = _agent(config_path, name)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def show(o):
        if g.json:
            click.echo(json.dumps({"message_type": "agent_job", **o.to_json()}), nl=True)
        elif not g.quiet or o.status in ("failed", "warning"):
            line = job_line(o, g.verbose)
            click.echo(line.text, err=line.kind in ("error", "warning"))

    a.run(stop, interval, on_outcome=show)
    return 0


@agent.command("status")
@config_option
@click.pass_obj
def agent_status(g, config_path):
    """Per system: does it meet its class now (backup age vs RPO, copies, verify, drill, alarms), and why not."""
    from datetime import UTC, datetime

    from cermin.ops.agentview import FleetStatus, open_store
    from cermin.ops.config import load_config

    cfg = load_config(config_path)
    store = open_store(cfg)
    now = datetime.now(UTC)
    return Output(g).render(FleetStatus(store.status(now), now))
