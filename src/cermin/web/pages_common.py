"""What the tenant, system, alerts, approvals and audit pages share: names checked before they reach the
store, the agent's configuration (to open repositories for actions), URLs that keep a page's other
parameters, and a few formatting helpers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import HTTPException, Request

from cermin.ops.config import Config, fmt_duration
from cermin.util import fmt_bytes

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # tenant and system names (ops/config.py)


def system_id(tenant: str, system: str) -> str:
    """'tenant/system' from a URL's parts, or 404 — the same answer as for a system that does not exist."""
    if not NAME.match(tenant) or not NAME.match(system):
        raise HTTPException(404, "not found")
    return f"{tenant}/{system}"


def site_config(request: Request) -> Config:
    """The agent's configuration, read when an action needs a repository: `app.state.config` if the
    caller set one, else the file the dashboard was started with (`cermin web -c`). 503 without one."""
    cfg = getattr(request.app.state, "config", None)
    if cfg is not None:
        return cfg
    path = request.app.state.settings.config_path
    if not path:
        raise HTTPException(
            503, "the dashboard was started without the agent's configuration: it cannot open repositories"
        )
    from cermin.ops.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as e:
        raise HTTPException(503, f"cannot read the agent's configuration: {e}") from None


def url(path: str, params: dict[str, object], **change) -> str:
    """`path` with `params` updated by `change`; empty values are left out."""
    d = {**params, **change}
    q = {k: str(v) for k, v in d.items() if v not in (None, "")}
    return path + ("?" + urlencode(q) if q else "")


def age(now: datetime, t: datetime | None) -> str:
    """'3h12min ago', 'never'."""
    if t is None:
        return "never"
    s = (now - t).total_seconds()
    return "just now" if abs(s) < 60 else f"{fmt_duration(abs(s), 2)} {'ago' if s > 0 else 'ahead'}"


def size(n: int | None) -> str:
    return "—" if n is None else fmt_bytes(n)


def parse_day(text: str | None, what: str) -> datetime | None:
    """A date field (YYYY-MM-DD, UTC midnight), or None when empty; 400 when malformed."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise HTTPException(400, f"bad {what}: expected YYYY-MM-DD") from None
