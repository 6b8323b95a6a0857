"""The environment of every child the agent and drills start: command and pg_dump sources, hooks, drill
checks (psql, commands).

The agent's own environment holds every tenant's secrets: repository passwords (`password_env`), database
passwords, the state store's URL with its password (`agent.state_env`), notification URLs
(`agent.notify_env`), cloud credentials. A child gets none of them: `child_env` drops

- every variable a configuration names in a `*_env` key (repositories, sources, checks, the agent), of
  the configuration given and of every configuration this process loaded (`remember`, called by
  `parse_config`), so helpers that are not handed the configuration (hooks, drill checks) drop them too;
- cermin's own secrets: `CERMIN_*` names holding PASSWORD or TOKEN (CERMIN_PASSWORD, CERMIN_TOKEN_FILE,
  CERMIN_FROM_PASSWORD, ...);
- PGPASSWORD and the AWS keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
  AWS_SECURITY_TOKEN).

A child that needs a secret is given its own in `extra` (pg_dump and psql: their source's PGPASSWORD).
Everything else (PATH, LANG, HOME, TZ, PGPASSFILE, proxies, ...) passes unchanged."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

SECRET_NAMES = frozenset(
    {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
)

_lock = threading.Lock()
_known: set[str] = set()  # *_env names of every configuration loaded in this process


def is_secret_name(name: str) -> bool:
    """cermin's own secret variables and the fixed list, whatever a configuration says."""
    return name in SECRET_NAMES or (name.startswith("CERMIN_") and ("PASSWORD" in name or "TOKEN" in name))


def secret_env_names(cfg: Any) -> set[str]:
    """The variable names `cfg` (an ops.config.Config) gives in any `*_env` key."""
    parts: list[Any] = [cfg.agent, *cfg.repositories.values(), *cfg.tenants.values()]
    for s in cfg.systems:
        parts += [*s.sources, *s.checks, s.hooks]
    names: set[str] = set()
    for part in parts:
        for key in getattr(part, "__struct_fields__", ()):
            if key.endswith("_env"):
                value = getattr(part, key, "")
                if isinstance(value, str) and value:
                    names.add(value)
    return names


def remember(cfg: Any) -> None:
    """Record a loaded configuration's `*_env` names: children started later drop them."""
    names = secret_env_names(cfg)
    with _lock:
        _known.update(names)


def child_env(cfg: Any = None, environ: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None):
    """`environ` (default os.environ) without any secret (see the module docstring), then `extra`."""
    environ = os.environ if environ is None else environ
    with _lock:
        drop = set(_known)
    if cfg is not None:
        drop |= secret_env_names(cfg)
    env = {k: v for k, v in environ.items() if k not in drop and not is_secret_name(k)}
    env.update(extra or {})
    return env
