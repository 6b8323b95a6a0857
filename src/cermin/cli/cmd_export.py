"""`cermin export evidence`: the auditors' evidence document without the dashboard (ops/evidence.py,
web/exportdoc.py; docs/dashboard.md "Evidence export")."""

from __future__ import annotations

from dataclasses import dataclass

import click

from cermin.cli.cmd_config import DEFAULT_CONFIG
from cermin.cli.common import Output
from cermin.errors import CerminError

FORMATS = ("csv", "zip", "json", "html", "pdf")  # web/exportdoc.FORMATS (not imported: --help stays fast)
TABLES = ("systems", "copies", "runs", "drills", "alarms", "flagged", "notifications")


@click.group()
def export():
    """Export documents: the evidence auditors file."""


@dataclass
class Exported:
    path: str
    fmt: str
    table: str | None
    scope: str
    period: str
    since: str
    until: str
    digest: str
    sentence: str
    systems: int
    met: int
    size: int
    exit_code = 0

    def to_json(self) -> list[dict]:
        d = {"message_type": "evidence_export", "path": self.path, "format": self.fmt, "table": self.table}
        d |= {"scope": self.scope, "since": self.since, "until": self.until, "digest": "sha256:" + self.digest}
        return [d | {"systems": self.systems, "met_period": self.met, "bytes": self.size}]

    def to_text(self, verbose: int = 0):
        from cermin.engine.results import answer, note

        where = "standard output" if self.path == "-" else self.path
        return [
            answer(f"sha256:{self.digest}  {where}"),
            note(f"evidence of {self.scope} for {self.period} ({self.fmt}{', ' + self.table if self.table else ''})"),
            note(self.sentence),
        ]


@export.command("evidence")
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar="CERMIN_CONFIG",
    default=DEFAULT_CONFIG,
    show_default=True,
    help="The agent's TOML file: its state store, retention rules and drill report key (or CERMIN_CONFIG).",
)
@click.option("--tenant", help="One tenant's evidence (default: the whole fleet).")
@click.option("--since", help="First day (YYYY-MM-DD, UTC) or date and time; default: 30 days before --until.")
@click.option("--until", help="Last day, included (YYYY-MM-DD, UTC) or an end time; default: today.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True, help="The document's format.")
@click.option("--table", type=click.Choice(TABLES), help="With --format csv: the table (default systems).")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="The file ('-': stdout)."
)
@click.pass_obj
def export_evidence(g, config_path, tenant, since, until, fmt, table, output):
    """Evidence for auditors: policy, backups, copies, immutability, drills and alarms over a period."""
    import os
    import socket
    import sys
    from datetime import UTC, datetime

    from cermin.ops.config import load_config
    from cermin.ops.evidence import evidence_of_config
    from cermin.ops.evidencedoc import parse_period
    from cermin.util import username
    from cermin.web import exportdoc

    if table and fmt != "csv":
        raise click.UsageError("--table goes with --format csv")
    if output == "-" and g.json:
        raise click.UsageError("-o - writes the document to standard output: --json has no room there")
    if fmt == "pdf":
        why = exportdoc.pdf_unavailable()
        if why:
            raise CerminError(why)
    cfg = load_config(config_path)
    now = datetime.now(UTC)
    start, end = parse_period(since, until, now)
    who = f"{username()}@{socket.gethostname()} (cermin export evidence)"
    ev = evidence_of_config(cfg, tenant, start, end, now, who)
    body = exportdoc.render(ev, fmt, table)
    if output == "-":
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
    else:
        tmp = f"{output}.tmp{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(body)
            os.replace(tmp, output)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CerminError(f"cannot write {output}: {e.strerror or e}") from None
    result = Exported(
        output,
        fmt,
        table or ("systems" if fmt == "csv" else None),
        ev.scope,
        ev.period,
        start.isoformat(),
        end.isoformat(),
        ev.digest,
        ev.summary.sentence(),
        ev.summary.systems,
        ev.summary.met_period,
        len(body),
    )
    if output == "-":
        return 0  # the document is the output
    return Output(g).render(result)
