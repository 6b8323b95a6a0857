"""After a backup: say when the new snapshot is not clean, and run the operator's alarm hook.

The hook (`backup --on-alarm COMMAND` or CERMIN_ON_ALARM) runs without a shell (argv from
shlex.split) for a suspicious or infected snapshot only — never for a clean one, nor for one without
a verdict (no guard ran). It inherits the environment plus CERMIN_SNAPSHOT_ID, CERMIN_VERDICT,
CERMIN_GUARD_SCORE, CERMIN_GUARD_REASONS (one per line), CERMIN_GUARD_PATHS (one per line, at most
100), CERMIN_REPOSITORY_ID and CERMIN_HOSTNAME. Its output goes to stderr (so --json stays clean); it
may run for HOOK_TIMEOUT seconds. A hook that fails is a warning: the snapshot is saved either way.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass

from cermin.engine.results import Line, warning
from cermin.guard.verdict import Evidence, Verdict, judge, load_evidence
from cermin.repo.repository import Repository
from cermin.repo.snapshots import SnapshotRef, aux_records

HOOK_TIMEOUT = 300.0


@dataclass
class Alarm:
    """A backup whose snapshot is not clean, and what its hook did."""

    snapshot_id: str
    verdict: Verdict
    command: str | None = None
    returncode: int | None = None  # None: no hook, or it could not run
    hook_error: str = ""
    exit_code = 0

    def to_json(self) -> list[dict]:
        d = {"message_type": "guard_alarm", "snapshot_id": self.snapshot_id, **self.verdict.to_json()}
        if self.command is not None:
            d["hook"] = {"command": self.command, "exit_code": self.returncode, "error": self.hook_error or None}
        return [d]

    def to_text(self, verbose: int = 0) -> list[Line]:
        v = self.verdict
        why = "; ".join(v.reasons[:3]) + (f" (+{len(v.reasons) - 3} more)" if len(v.reasons) > 3 else "")
        lines = [
            warning(
                f"guard: snapshot {self.snapshot_id[:8]} is {v.verdict.upper()}: {why or 'no reason given'} — "
                f"`cermin guard report {self.snapshot_id[:8]}` explains it"
            )
        ]
        if self.command is not None and (self.hook_error or self.returncode):
            lines.append(warning(f"alarm hook failed: {self.hook_error or f'exit code {self.returncode}'}"))
        return lines


def hook_env(repo: Repository, ref: SnapshotRef, v: Verdict) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        CERMIN_SNAPSHOT_ID=ref.id,
        CERMIN_VERDICT=v.verdict,
        CERMIN_GUARD_SCORE="" if v.score is None else f"{v.score:g}",
        CERMIN_GUARD_REASONS="\n".join(r.replace("\n", " ") for r in v.reasons),
        CERMIN_GUARD_PATHS="\n".join(p.replace("\n", " ") for p in v.paths[:100]),
        CERMIN_REPOSITORY_ID=repo.config.id,
        CERMIN_HOSTNAME=ref.snapshot.hostname,
    )
    return {k: val.replace("\0", "") for k, val in env.items()}


def check_new_snapshot(
    repo: Repository, ref: SnapshotRef, command: str | None = None, evidence: Evidence | None = None
) -> Alarm | None:
    """An Alarm (hook run) when the new snapshot's effective verdict is suspicious or infected."""
    v = judge(ref, evidence if evidence is not None else load_evidence(aux_records(repo)))
    if not v.alarm:
        return None
    alarm = Alarm(ref.id, v, command or None)
    if command:
        try:
            argv = shlex.split(command)
            if not argv:
                raise ValueError("empty command")
            p = subprocess.run(
                argv, env=hook_env(repo, ref, v), stdin=subprocess.DEVNULL, stdout=2, timeout=HOOK_TIMEOUT, check=False
            )
            alarm.returncode = p.returncode
        except subprocess.TimeoutExpired:
            alarm.hook_error = f"still running after {HOOK_TIMEOUT:.0f}s: stopped"
        except (OSError, ValueError) as e:
            alarm.hook_error = f"cannot run {command!r}: {e}"
    return alarm


class AlarmedBackup:
    """A BackupSummary followed by its Alarm; reads as the summary (`.snapshot_id`, ...)."""

    def __init__(self, summary, alarm: Alarm) -> None:
        self.summary, self.alarm = summary, alarm

    def __getattr__(self, name):
        return getattr(self.summary, name)

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code

    def to_json(self) -> list[dict]:
        return [*self.summary.to_json(), *self.alarm.to_json()]

    def to_text(self, verbose: int = 0) -> list[Line]:
        return [*self.summary.to_text(verbose), *self.alarm.to_text(verbose)]
