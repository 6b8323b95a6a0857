"""`cermin web user add|list|disable` and `cermin web`'s refusal of a public address without --public."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from web_helpers import PASSWORD, cheap_argon2  # noqa: F401

from cermin.cli.main import cli
from cermin.errors import UsageError
from cermin.ops.state import StateStore
from cermin.ops.webstore import WebStore
from cermin.web import passwords


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "cermin.toml"
    path.write_text(
        f"""
[agent]
workdir = "{tmp_path / "work"}"
[repositories.p]
url = "{tmp_path / "p"}"
password_env = "PW"
[tenants.imigrasi.systems.paspor]
class = "rendah"
primary = "p"
[[tenants.imigrasi.systems.paspor.sources]]
type = "paths"
paths = ["/srv"]
"""
    )
    return str(path)


def run(*args, input=None):
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=True)


def users(config):
    with StateStore.open(f"sqlite:///{config.rsplit('/', 1)[0]}/work/state.db") as store:
        return {u.name: u for u in WebStore(store).users()}


def test_user_add_list_disable(config, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    r = run("web", "user", "add", "Ana", "--role", "operator", "--password-file", str(pw), "-c", config)
    assert r.exit_code == 0, r.output
    assert "added operator ana" in r.output
    r = run("web", "user", "add", "vera", "--role", "viewer", "--tenant", "imigrasi", "-c", config, input=PASSWORD)
    assert r.exit_code == 0, r.output
    got = users(config)
    assert got["ana"].role == "operator" and got["ana"].tenant is None
    assert got["vera"].tenant == "imigrasi"
    assert passwords.verify_password(got["ana"].password_hash, PASSWORD)
    assert got["ana"].password_hash.startswith("$argon2id$")
    r = run("--json", "web", "user", "list", "-c", config)
    lines = [json.loads(x) for x in r.output.splitlines()]
    assert [(x["name"], x["role"]) for x in lines] == [("ana", "operator"), ("vera", "viewer")]
    assert all("password_hash" not in x for x in lines)
    r = run("web", "user", "disable", "vera", "-c", config)
    assert r.exit_code == 0 and users(config)["vera"].disabled_at is not None
    r = run("web", "user", "disable", "vera", "-c", config)
    assert isinstance(r.exception, UsageError)


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["bob", "--role", "viewer"], PASSWORD, "give --tenant"),
        (["bob", "--role", "auditor", "--tenant", "imigrasi"], PASSWORD, "--tenant is for viewers"),
        (["bob", "--role", "auditor"], "short", "at least 10 characters"),
        (["Bad Name!", "--role", "auditor"], PASSWORD, "bad user name"),
    ],
)
def test_user_add_refuses(config, args, stdin, message):
    r = run("web", "user", "add", *args, "-c", config, input=stdin + "\n")
    assert isinstance(r.exception, UsageError) and message in str(r.exception)
    assert "bob" not in users(config)


def test_a_name_is_taken_once(config):
    assert run("web", "user", "add", "ana", "--role", "auditor", "-c", config, input=PASSWORD).exit_code == 0
    r = run("web", "user", "add", "ANA", "--role", "operator", "-c", config, input=PASSWORD)
    assert isinstance(r.exception, UsageError) and "exists already" in str(r.exception)


def test_a_public_address_needs_public(config):
    r = run("web", "--listen", "0.0.0.0:8080", "-c", config)
    assert isinstance(r.exception, UsageError) and "--public" in str(r.exception)
    r = run("web", "--listen", "nonsense", "-c", config)
    assert isinstance(r.exception, UsageError)
