"""The dashboard's settings: where the state store is, how long sessions live, how logins are limited.

There is no secret among them: sessions are server-side (the cookie holds a random token, the store its
SHA-256), so nothing is signed with an application key that could leak or need rotating.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

ENV = "CERMIN_WEB_SETTINGS"  # the settings as JSON, for uvicorn's worker processes (cermin web --workers N)


@dataclass(frozen=True)
class WebSettings:
    state_url: str  # the agent's state store (sqlite:///... or postgresql+psycopg://...)
    config_path: str | None = None  # the agent's TOML, when the dashboard was started from one
    session_ttl_s: int = 8 * 3600  # a session ends this long after login, whatever happens
    session_idle_s: int = 3600  # ... or after this long without a request
    cookie_secure: bool | None = None  # None: Secure when the request came over https (or a proxy says so)
    login_window_s: int = 15 * 60  # failed logins are counted over this window
    login_max_per_name: int = 5  # failures per user name in the window, then 429
    login_max_per_ip: int = 20  # failures from one address in the window, then 429
    upgrade: bool = True  # bring the state store's schema to head when opening it
    title: str = "cermin"

    @classmethod
    def from_config(cls, config_path: str, environ=None, **overrides) -> WebSettings:
        """The state store the agent's configuration names (agent.state, agent.state_env or the workdir)."""
        from cermin.ops.agentview import state_url
        from cermin.ops.config import load_config

        cfg = load_config(config_path, environ)
        return cls(state_url=state_url(cfg, environ), config_path=config_path, **overrides)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ=None) -> WebSettings:
        raw = (os.environ if environ is None else environ).get(ENV)
        if not raw:
            raise RuntimeError(f"{ENV} is not set: start the dashboard with `cermin web`")
        data = json.loads(raw)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
