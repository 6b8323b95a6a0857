"""Shared by the dashboard's tests (tests/test_web_*.py): a fleet with known faults in a state store, users,
a TestClient logged in as one of them, a fake clock and cheap Argon2id parameters."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher, Type

from cermin.ops.config import parse_config
from cermin.ops.state import SeenSnapshot, StateStore
from cermin.ops.webstore import WebStore
from cermin.web import passwords
from cermin.web.app import create_app
from cermin.web.settings import WebSettings

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
PASSWORD = "a long enough password"
SNAP = "cd" * 32


class Clock:
    def __init__(self, t: datetime = T0) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t

    def advance(self, **kw) -> None:
        self.t += timedelta(**kw)


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch):
    """Argon2id still (the tests check the hashes' type), with parameters that take a millisecond."""
    monkeypatch.setattr(passwords, "HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1, type=Type.ID))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh state store URL: a SQLite file, or a database on the session's real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/state.db"
    pg = request.getfixturevalue("postgres")
    return pg.url_for(pg.new_database(f"web_{uuid.uuid4().hex[:12]}"))


def fleet_toml(systems: dict[str, str]) -> bytes:
    """systems: 'tenant/system' -> class (rendah: primary only; strategis: primary, immutable, mirror)."""
    out = [
        "[repositories.p]\nurl = '/srv/p'\npassword_env = 'PW'\nkind = 'primary'\n",
        "[repositories.i]\nurl = 's3:http://127.0.0.1:8333/locked/x'\npassword_env = 'PW'\nkind = 'immutable'\n",
        "[repositories.m]\nurl = '/mnt/mirror'\npassword_env = 'PW'\nkind = 'mirror'\n",
    ]
    for tenant in sorted({s.split("/")[0] for s in systems}):
        out.append(f"[tenants.{tenant}]\nname = '{tenant.capitalize()} Agency'\n")
    for sid, cls in systems.items():
        tenant, name = sid.split("/")
        copies = "immutable = 'i'\nmirror = 'm'\n" if cls == "strategis" else ""
        out.append(
            f"[tenants.{tenant}.systems.{name}]\nclass = '{cls}'\nprimary = 'p'\n{copies}"
            f"[[tenants.{tenant}.systems.{name}.sources]]\ntype = 'paths'\npaths = ['/srv/{name}']\n"
        )
    return "\n".join(out).encode()


def _ok_run(store: StateStore, sid: str, kind: str, copy: str, data_time: datetime, now: datetime) -> int:
    run_id = store.start_run(sid, kind, None, "agent-1", copy=copy, now=data_time)
    store.finish_run(run_id, "ok", now=data_time, data_time=data_time)
    return run_id


def populate(store: StateStore, systems: dict[str, str], faults: dict[str, set[str]], now: datetime = T0):
    """A fleet where every system meets its class except for its faults:
    stale (backup 2 RPO old), amber (backup 0.7 RPO old: still meets), nobackup, nodrill, slowdrill,
    faileddrill, alarm (an open guard alarm), nolock (immutable copy without Object Lock seen)."""
    cfg = parse_config(fleet_toml(systems), "fleet.toml", environ={})
    store.sync_config(cfg, now - 48 * H)
    for s in cfg.systems:
        f = faults.get(s.id, set())
        rpo = s.policy.rpo
        if "nobackup" not in f:
            age = 2 * rpo if "stale" in f else 0.7 * rpo if "amber" in f else 0.1 * rpo
            t = now - timedelta(seconds=age)
            run_id = _ok_run(store, s.id, "backup", "primary", t, now)
            seen = SeenSnapshot(SNAP, t, size=1000, files=10, verdict="clean", run_id=run_id)
            store.record_snapshots(s.id, "primary", [seen], now)
            for copy in ("immutable", "mirror"):
                if copy in s.copies:
                    _ok_run(store, s.id, "mirror", copy, t, now)
                    lock = None if (copy != "immutable" or "nolock" in f) else now + 30 * 24 * H
                    store.record_snapshots(s.id, copy, [SeenSnapshot(SNAP, t, retain_until=lock)], now)
        _ok_run(store, s.id, "verify", "primary", now - H, now)
        if "nodrill" not in f:
            rto = s.policy.rto
            measured = 2 * rto if "slowdrill" in f else rto / 4
            verdict = "fail" if "faileddrill" in f else "pass"
            store.record_drill(
                s.id,
                SNAP,
                "primary",
                started_at=now - 2 * H,
                rto_measured_s=measured,
                rto_target_s=rto,
                verdict=verdict,
                error="check failed" if verdict == "fail" else None,
                now=now - H,
            )
        if "alarm" in f:
            store.open_alarm(s.id, "primary", "ef" * 32, "suspicious", ["many files became ciphertext"], now=now)
    return cfg


def make_app(store: StateStore, clock: Clock, **settings):
    return create_app(WebSettings(state_url=str(store.url), **settings), store=store, clock=clock)


def add_user(store: StateStore, name: str, role: str, tenant: str | None = None, password: str = PASSWORD):
    return WebStore(store).add_user(name, passwords.hash_password(password), role, tenant)


def login_token(client) -> str:
    r = client.get("/login")
    m = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', r.text)
    assert m, r.text
    return m.group(1)


def login(client, name: str, password: str = PASSWORD, next_url: str = "/", follow: bool = False):
    token = login_token(client)
    data = {"name": name, "password": password, "csrf_token": token, "next": next_url}
    return client.post("/login", data=data, follow_redirects=follow)


def csrf_of(html: str) -> str:
    m = re.search(r'"X-CSRF-Token": "([0-9a-f]{64})"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)
