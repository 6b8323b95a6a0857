"""Notifications through apprise URLs (docs/agent.md "Notifications").

What is worth waking someone for: a failed run, an RPO breach, a guard alarm, a failed drill, a mirror
lagging beyond the RPO — and, once, that it recovered. The agent sends an event when a condition starts
and when it ends, not on every tick (`Notifier.update`), so a breach that lasts a weekend is one message.

URLs carry credentials (tokens, passwords), so they come from a file or an environment variable (one per
line, `#` comments), are never logged, and are named in logs and the state store by `url_name`
(scheme and host only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cermin.ops.config import ConfigError

FAILED, RPO_BREACH, GUARD_ALARM, DRILL_FAILED, MIRROR_LAG = (
    "run_failed",
    "rpo_breach",
    "guard_alarm",
    "drill_failed",
    "mirror_lag",
)
KINDS = (FAILED, RPO_BREACH, GUARD_ALARM, DRILL_FAILED, MIRROR_LAG)


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    system: str  # "tenant/system"
    title: str
    body: str
    failure: bool = True  # False: the condition ended (recovered)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.system)


def url_name(url: str) -> str:
    """What a URL may be called in logs: its scheme and host, never its path, user or token."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return "invalid-url"
    return f"{parts.scheme}://{host}" if host else f"{parts.scheme}://"


def read_urls(file: str = "", env: str = "", environ=None) -> list[str]:
    environ = os.environ if environ is None else environ
    if env:
        text = environ.get(env, "")
    elif file:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"cannot read notification URLs from {file}: {getattr(e, 'strerror', None) or e}"
            ) from None
    else:
        return []
    return [ln.strip() for ln in text.replace(",", "\n").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


@dataclass
class Notifier:
    """Sends events to apprise URLs; the fleet's URLs get every event, a tenant's own URLs its systems' events."""

    urls: list[str] = field(default_factory=list)
    tenant_urls: dict[str, list[str]] = field(default_factory=dict)
    timeout: float = 20.0
    sent: list[tuple[Event, str, bool]] = field(default_factory=list)  # (event, url name, delivered)
    _open: set[tuple[str, str]] = field(default_factory=set)

    def targets(self, event: Event) -> list[str]:
        tenant = event.system.split("/", 1)[0]
        return [*self.urls, *self.tenant_urls.get(tenant, ())]

    def send(self, event: Event) -> list[str]:
        """Deliver now; returns the names of the URLs that failed (a notification never fails a run)."""
        import apprise

        logging.getLogger("apprise").setLevel(logging.CRITICAL)  # it logs URLs, which carry secrets
        failed = []
        kind = apprise.NotifyType.FAILURE if event.failure else apprise.NotifyType.SUCCESS
        for url in self.targets(event):
            ap = apprise.Apprise()
            ok = ap.add(url) and bool(ap.notify(body=event.body, title=event.title, notify_type=kind))
            self.sent.append((event, url_name(url), ok))
            if not ok:
                failed.append(url_name(url))
        return failed

    def set_open(self, conditions: Iterable[tuple[str, str]]) -> None:
        """The (kind, system) conditions already told (the state store knows them across agents)."""
        self._open = set(conditions)

    def update(self, current: Iterable[Event], checked: Iterable[tuple[str, str]] | None = None) -> list[Event]:
        """Send the events of conditions that started, and a recovery for those that ended. `current`: every
        condition true now; `checked`: the (kind, system) pairs that were evaluated (default: all open ones),
        so a system that was not looked at is not declared recovered."""
        current = list(current)
        now_open = {e.key for e in current}
        out = [e for e in current if e.key not in self._open]
        looked = set(checked) if checked is not None else set(self._open)
        for kind, system in sorted((self._open & looked) - now_open):
            out.append(
                Event(
                    kind,
                    system,
                    f"cermin: {system} recovered ({kind.replace('_', ' ')})",
                    f"{system}: the {kind.replace('_', ' ')} condition has ended.",
                    failure=False,
                )
            )
        self._open = (self._open - looked) | now_open
        for e in out:
            self.send(e)
        return out
