"""Destructive operations under the two-person rule (docs/dashboard.md "Approvals").

One operator asks — what, on what, and why (`request_forget`: forget one snapshot from one copy of a
system) — and the request waits, pending, in the store's `approvals` (cermin.ops.webstore). A *different*
operator decides (`decide`): the store refuses the requester's own decision, and a request is decided
once. An approval is carried out at once, through the library: `ops.commands.forget` by id on the
repository of that copy, where the engine's own protections still hold — it refuses a protected snapshot
and the newest clean snapshot of its host and paths while a guard alarm is open there, and a snapshot
under Object Lock retention is only marked forgotten — and what happened, done or refused, is recorded
once with the request (`result`). A rejection carries nothing out.

The rules live here and in the store, not in the dashboard, so any other caller (the command line, a
script) gets the same guarantees.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cermin.errors import CerminError
from cermin.ops import stateschema as t
from cermin.ops.config import COPY_KINDS, Config
from cermin.ops.state import StateError, StateStore
from cermin.ops.webstore import Approval, WebStore

FORGET = "forget"
ACTIONS = {FORGET: "forget a snapshot"}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ApprovalError(CerminError):
    """A request or decision that was not made; the message says why."""


class OwnRequest(ApprovalError):
    """The two-person rule: a request is decided by someone other than its requester."""


@dataclass(frozen=True)
class Decided:
    approval: Approval  # as the store holds it now (decided; executed with its result when approved)
    result: dict | None  # what carrying it out did (None for a rejection)


def describe(a: Approval) -> str:
    """What a request asks for, in words."""
    tg = a.target or {}
    if a.action == FORGET:
        snaps = ", ".join(str(s)[:8] for s in tg.get("snapshots", []))
        return f"forget snapshot {snaps} from the {tg.get('copy', '?')} copy of {tg.get('system', '?')}"
    return f"{a.action} {tg}"


def result_text(result: dict | None) -> str:
    """What carrying out a request did, in words."""
    if not result:
        return ""
    if not result.get("ok"):
        return f"refused: {result.get('error') or 'failed'}"
    if result.get("waiting"):
        return f"waiting for the repository server's own approval {result['waiting']}"
    removed, locked = result.get("removed") or [], result.get("locked") or []
    parts = []
    if removed:
        parts.append(f"removed {', '.join(s[:8] for s in removed)}")
    if locked:
        parts.append(
            f"marked forgotten under Object Lock (files stay until it lapses): {', '.join(s[:8] for s in locked)}"
        )
    return "; ".join(parts) or "nothing to remove: the snapshot was gone already"


# ---- asking ------------------------------------------------------------------------------------------------
def request_forget(
    store: StateStore,
    system_id: str,
    copy: str,
    snapshot_id: str,
    user: str,
    reason: str,
    now: datetime | None = None,
) -> Approval:
    """Ask to forget one snapshot the agent recorded in one copy of a system; a second operator decides.
    ApprovalError when the reason is empty or the snapshot is not recorded there (or forgotten already)."""
    if copy not in COPY_KINDS:
        raise ApprovalError(f"unknown copy {copy!r} (one of {', '.join(COPY_KINDS)})")
    if not isinstance(snapshot_id, str) or not _HEX64.match(snapshot_id):
        raise ApprovalError("name the snapshot by its full id (64 hex digits)")
    if not isinstance(reason, str) or not reason.strip():
        raise ApprovalError("a request to forget a snapshot needs a reason")
    sn = t.snapshots.c
    q = sa.select(sn.gone_at).where(sn.system_id == system_id, sn.copy == copy, sn.snapshot_id == snapshot_id)
    with store._tx() as c:
        row = c.execute(q).first()
    if row is None:
        raise ApprovalError(f"the {copy} copy of {system_id} holds no snapshot {snapshot_id[:8]} the agent recorded")
    if row.gone_at is not None:
        raise ApprovalError(f"snapshot {snapshot_id[:8]} is forgotten from the {copy} copy of {system_id} already")
    target = {"system": system_id, "copy": copy, "snapshots": [snapshot_id]}
    try:
        return WebStore(store).request_approval(FORGET, target, user, reason, now=now)
    except StateError as e:
        raise ApprovalError(str(e)) from e


# ---- deciding and carrying out -----------------------------------------------------------------------------
def decide(
    cfg: Config | None,
    store: StateStore,
    approval_id: int,
    user: str,
    decision: str,
    *,
    now: datetime | None = None,
    environ=None,
) -> Decided:
    """Approve or reject a pending request as `user` (never its requester); an approval is carried out at
    once and its result recorded -> Decided. ApprovalError when the request is unknown, decided already,
    the user's own, or (to approve) there is no configuration to open the repository with."""
    ws = WebStore(store)
    found = ws.approval(approval_id)
    if found is None:
        raise ApprovalError(f"there is no request {approval_id}")
    if found.decided_at is not None:
        raise ApprovalError(f"request {found.id} was decided already: {found.decision} by {found.decided_by}")
    if decision not in ("approve", "reject"):
        raise ApprovalError(f"bad decision {decision!r}: approve or reject")
    if found.requested_by == user:
        raise OwnRequest(f"two-person rule: request {found.id} is yours; another operator decides it")
    if decision == "approve" and cfg is None:
        raise ApprovalError("no configuration to open the repository with: the request stays pending")
    try:
        won = ws.decide_approval(found.id, user, decision, now=now)
    except StateError as e:  # the requester's own decision (the store enforces the rule too)
        raise OwnRequest(str(e)) from e
    if not won:
        raise ApprovalError(f"request {found.id} was decided by someone else meanwhile")
    result = None
    if decision == "approve":
        assert cfg is not None
        result = execute(cfg, store, found, now=now, environ=environ)
        ws.mark_executed(found.id, result, now=now)
    after = ws.approval(found.id)
    assert after is not None
    return Decided(after, result)


def execute(cfg: Config, store: StateStore, a: Approval, *, now: datetime | None = None, environ=None) -> dict:
    """Carry out an approved request through the library -> its result ({"ok": bool, ...; "error": why
    not}). Never raises for what the repository or the engine refuses: the refusal is the result."""
    if a.action != FORGET:
        return {"ok": False, "error": f"unknown operation {a.action!r}"}
    tg = a.target or {}
    system_id, copy, snaps = tg.get("system"), tg.get("copy"), tg.get("snapshots")
    if (
        not isinstance(system_id, str)
        or copy not in COPY_KINDS
        or not isinstance(snaps, list)
        or not snaps
        or not all(isinstance(s, str) and _HEX64.match(s) for s in snaps)
    ):
        return {"ok": False, "error": f"malformed request target {tg!r}"}
    return forget_snapshots(cfg, store, system_id, copy, snaps, now=now, environ=environ)


def forget_snapshots(
    cfg: Config,
    store: StateStore,
    system_id: str,
    copy: str,
    snapshot_ids: list[str],
    *,
    now: datetime | None = None,
    environ=None,
) -> dict:
    """Forget snapshots by id from one copy of a system (`ops.commands.forget`: the engine's protections
    apply) and mark them forgotten in the store's timeline -> the result (see `execute`)."""
    from cermin.ops import commands
    from cermin.ops.repos import copy_repo_name, open_config_repo

    name = ""
    try:
        system = cfg.system(system_id)
        name = copy_repo_name(cfg, system, copy)
        repo = open_config_repo(cfg, name, environ)
        done = commands.forget(repo, commands.ForgetOptions(snapshot_ids=list(snapshot_ids))).parts[0]
    except (CerminError, OSError) as e:
        return {"ok": False, "repository": name, "error": str(e) or type(e).__name__}
    if done.approval:  # a repository server under its own two-person rule: its admin decides too
        return {"ok": True, "repository": name, "waiting": done.approval, "removed": [], "locked": []}
    gone = [*done.removed, *done.locked]
    if gone:
        sn = t.snapshots.c
        q = (
            sa.update(t.snapshots)
            .where(sn.system_id == system_id, sn.copy == copy, sn.snapshot_id.in_(gone), sn.gone_at.is_(None))
            .values(gone_at=store._now(now))
        )
        with store._tx(write=True) as c:
            c.execute(q)
    return {"ok": True, "repository": name, "removed": list(done.removed), "locked": list(done.locked)}
