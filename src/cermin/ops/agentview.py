"""What `cermin agent once|run|status` print: results that render themselves (engine/results.py), and the
state store the configuration names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime

from cermin.engine.results import Line, answer, error, note, warning
from cermin.errors import EXIT_FATAL
from cermin.ops.config import Config, ConfigError, fmt_duration


def state_url(cfg: Config, environ=None) -> str:
    """The state store's URL: agent.state, or the variable agent.state_env names (a PostgreSQL URL may
    hold a password), or SQLite in the workdir."""
    environ = os.environ if environ is None else environ
    a = cfg.agent
    if a.state_env:
        url = environ.get(a.state_env, "")
        if not url:
            raise ConfigError(f"the environment variable {a.state_env} (agent.state_env) is not set")
        return url
    return a.state or f"sqlite:///{os.path.join(os.path.abspath(a.workdir), 'state.db')}"


def open_store(cfg: Config, environ=None, clock=None):
    from cermin.ops.state import StateStore

    return StateStore.open(state_url(cfg, environ), clock=clock)


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else "never"


@dataclass
class TickResult:
    """The jobs of one `agent once` (or, one by one, of `agent run`)."""

    outcomes: list = field(default_factory=list)  # JobOutcome

    @property
    def exit_code(self) -> int:
        return EXIT_FATAL if any(o.status == "failed" for o in self.outcomes) else 0

    def to_json(self) -> list[dict]:
        return [{"message_type": "agent_job", **o.to_json()} for o in self.outcomes] + [
            {
                "message_type": "agent_tick",
                "jobs": len(self.outcomes),
                "failed": sum(o.status == "failed" for o in self.outcomes),
            }
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        lines = [job_line(o, verbose) for o in self.outcomes]
        if not self.outcomes:
            lines.append(note("nothing is due"))
        return lines


def job_line(o, verbose: int = 0) -> Line:
    text = f"{o.system} {o.kind}: {o.status} in {o.seconds:.1f}s" + (f" — {o.message}" if o.message else "")
    if verbose:
        text += "".join(f"\n  {s.kind} {s.copy}: {s.status}{' — ' + s.message if s.message else ''}" for s in o.steps)
    return error(text) if o.status == "failed" else warning(text) if o.status == "warning" else answer(text)


@dataclass
class FleetStatus:
    """`cermin agent status`: per system, does it meet its class now, and why not."""

    rows: list  # SystemStatus
    now: datetime

    @property
    def exit_code(self) -> int:
        return 0

    def to_json(self) -> list[dict]:
        return [{"message_type": "system_status", **r.to_json()} for r in self.rows] + [
            {
                "message_type": "fleet_status",
                "systems": len(self.rows),
                "meeting": sum(r.meets_class for r in self.rows),
            }
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        ok = sum(r.meets_class for r in self.rows)
        lines = [answer(f"{ok} of {len(self.rows)} systems meet their class now")]
        for r in sorted(self.rows, key=lambda r: (r.meets_class, r.system.priority, r.id)):
            age = "never" if r.backup_age_s is None else fmt_duration(r.backup_age_s) + " ago"
            drill = (
                f"drill {_when(r.last_drill.finished_at)} ({r.last_drill.verdict}, RTO "
                f"{fmt_duration(r.last_drill.rto_measured_s)})"
                if r.last_drill
                else "never drilled"
            )
            head = f"{'ok ' if r.meets_class else 'NO '} {r.id:<28} {r.system.policy:<10} backup {age:<14} {drill}"
            lines.append(answer(head))
            for why in r.reasons if not r.meets_class else ():
                lines.append(answer(f"      {why}"))
            if verbose:
                for kind, c in r.copies.items():
                    lines.append(
                        note(f"      {kind} {c.repository}: newest {_when(c.newest)}{' (fresh)' if c.fresh else ''}")
                    )
        return lines
