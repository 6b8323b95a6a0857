"""ops/childenv.py: the children the agent and drills start (command and pg_dump sources, hooks, drill checks)
see none of the secrets in the agent's environment: no tenant's password_env, no state store or notify
URL, no CERMIN_PASSWORD/TOKEN, PGPASSWORD or AWS keys; a pg_dump gets its own password only."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
from conftest import FAST_KDF, PASSWORD

from cermin.backend.local import LocalBackend
from cermin.ops import commands
from cermin.ops.childenv import child_env
from cermin.ops.config import parse_config
from cermin.ops.drillchecks import Restored, run_check
from cermin.ops.sources import backup_system, pg_env
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots

# a child printing its environment's names, one a line
PRINT_ENV = [sys.executable, "-c", "import os\nfor k in sorted(os.environ): print(k)"]

SECRETS = {
    "ACME_REPO_PW": PASSWORD,
    "GLOBEX_REPO_PW": "globex repository password",
    "ACME_DB_PW": "acme database password",
    "GLOBEX_DB_PW": "globex database password",
    "ACME_CHECK_PW": "acme drill login password",
    "STATE_URL": "postgresql://agent:statepw@127.0.0.1/cermin",
    "NOTIFY_URLS": "mailtos://user:mailpw@example.org",
    "CERMIN_PASSWORD": "the shell's repository password",
    "CERMIN_PASSWORD_FILE": "/etc/cermin/pw",
    "CERMIN_TOKEN": "server token",
    "CERMIN_FROM_PASSWORD": "another repository",
    "PGPASSWORD": "ambient postgres password",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "aws secret",
    "AWS_SESSION_TOKEN": "aws session",
}
HARMLESS = {"CHILD_ENV_TEST_SETTING": "kept", "LANG": "C.UTF-8"}


def write_env(path) -> list[str]:
    """argv of a child writing its environment's names to `path`."""
    return [sys.executable, "-c", f"import os; open({str(path)!r}, 'w').write(chr(10).join(sorted(os.environ)))"]


def config(tmp_path, hooks: str = ""):
    log = tmp_path / "hook.env"
    text = f"""
[agent]
state_env = "STATE_URL"
notify_env = "NOTIFY_URLS"
workdir = "{tmp_path / "work"}"

[repositories.acme]
url = "{tmp_path / "repo"}"
password_env = "ACME_REPO_PW"

[repositories.globex]
url = "{tmp_path / "globex"}"
password_env = "GLOBEX_REPO_PW"

[tenants.acme.systems.app]
class = "rendah"
primary = "acme"

[[tenants.acme.systems.app.sources]]
type = "command"
name = "env"
command = {json.dumps(PRINT_ENV)}

[[tenants.acme.systems.app.sources]]
type = "postgres"
database = "shop"
password_env = "ACME_DB_PW"

[[tenants.acme.systems.app.checks]]
type = "postgres"
query = "SELECT 1"
user = "cermin_drill"
password_env = "ACME_CHECK_PW"

[tenants.acme.systems.app.hooks]
pre = [{json.dumps(write_env(log))}]

[tenants.globex.systems.web]
class = "rendah"
primary = "globex"

[[tenants.globex.systems.web.sources]]
type = "postgres"
database = "web"
password_env = "GLOBEX_DB_PW"
{hooks}
"""
    return parse_config(text.encode(), str(tmp_path / "cermin.toml"), environ={**SECRETS})


def agent_environ() -> dict[str, str]:
    return {**os.environ, **SECRETS, **HARMLESS}


def assert_clean(names, own: dict[str, str] | None = None) -> None:
    names = set(names)
    leaked = sorted(names & SECRETS.keys() - (own or {}).keys())
    assert not leaked, f"the child saw {leaked}"
    assert set(HARMLESS) <= names and "PATH" in names


def test_child_env_drops_every_configured_and_known_secret(tmp_path):
    cfg = config(tmp_path)
    env = child_env(cfg, agent_environ(), {"CERMIN_SYSTEM": "acme/app"})
    assert_clean(env)
    assert env["CERMIN_SYSTEM"] == "acme/app" and env["CHILD_ENV_TEST_SETTING"] == "kept"
    # extra wins: a child given its own secret keeps it
    assert child_env(cfg, agent_environ(), {"PGPASSWORD": "own"})["PGPASSWORD"] == "own"


def test_hooks_and_command_sources_see_no_secret(tmp_path, own_cache):
    cfg = config(tmp_path)
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    system = cfg.system("acme/app")
    only_command = type(system)(**{**system.__dict__, "sources": system.sources[:1]})
    result = backup_system(repo, only_command, environ=agent_environ())
    assert result.ok, result.errors
    hook_names = (tmp_path / "hook.env").read_text().split("\n")
    assert_clean(hook_names)
    assert {"CERMIN_SYSTEM", "CERMIN_PHASE"} <= set(hook_names)
    (ref,) = list_snapshots(repo)
    out = io.BytesIO()
    commands.dump(repo, ref.id, "/env.out", out)
    assert_clean(out.getvalue().decode().split())


def test_pg_dump_gets_its_own_password_only(tmp_path):
    cfg = config(tmp_path)
    source = cfg.system("acme/app").sources[1]
    env, password = pg_env(source, agent_environ())
    assert password == SECRETS["ACME_DB_PW"] and env["PGPASSWORD"] == password
    assert_clean(env, own={"PGPASSWORD": password})


def test_drill_command_checks_see_no_secret(tmp_path):
    config(tmp_path)  # loaded by this process: its *_env names are known to every child's environment
    from cermin.ops.config import Check

    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    out = sandbox / "check.env"
    res = run_check(Check(type="command", command=write_env(out)), "env", None, Restored(str(sandbox)), agent_environ())
    assert res.ok, res.detail
    names = out.read_text().split("\n")
    assert_clean(names)
    assert "CERMIN_RESTORE_DIR" in names


@pytest.mark.parametrize("name", ["CERMIN_NEW_PASSWORD", "CERMIN_TOKEN_FILE", "CERMIN_FROM_TOKEN"])
def test_cermin_secrets_by_name(name):
    assert name not in child_env(None, {name: "x", "PATH": "/bin"})
