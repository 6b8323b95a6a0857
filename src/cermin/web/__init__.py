"""The fleet dashboard (docs/dashboard.md): FastAPI + Jinja2 + htmx over the agent's state store.

`create_app(settings)` (web/app.py) builds the application; each area is a router (auth, fleet, ...)
registered there, and more can be passed in. Like the CLI, the web layer is a client of `cermin.ops`:
it reads `StateStore.status()` and writes only its own records (cermin.ops.webstore).
"""

from __future__ import annotations

__all__ = ["WebSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from cermin.web.app import create_app

        return create_app
    if name == "WebSettings":
        from cermin.web.settings import WebSettings

        return WebSettings
    raise AttributeError(name)
