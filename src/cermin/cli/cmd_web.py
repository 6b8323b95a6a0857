"""`cermin web` (the dashboard), `cermin web user add|list|disable` and `cermin web token add|list|revoke`
(docs/dashboard.md)."""

from __future__ import annotations

import click

from cermin.cli.cmd_config import DEFAULT_CONFIG
from cermin.cli.common import Output
from cermin.errors import UsageError


def config_option(f):
    return click.option(
        "-c",
        "--config",
        "config_path",
        envvar="CERMIN_CONFIG",
        default=DEFAULT_CONFIG,
        show_default=True,
        help="The agent's TOML file (the dashboard reads its state store) (or CERMIN_CONFIG).",
    )(f)


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(f"bad --listen {value!r}: HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.group(invoke_without_command=True)
@click.option("--listen", default="127.0.0.1:8080", show_default=True, help="Address and port to serve on.")
@config_option
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="Worker processes.")
@click.option(
    "--public", is_flag=True, help="Allow a non-loopback --listen address (put TLS in front: a reverse proxy)."
)
@click.option(
    "--forwarded-allow-ips",
    default="127.0.0.1",
    show_default=True,
    help="Proxies whose X-Forwarded-For/-Proto are trusted (the client address for rate limits; https).",
)
@click.pass_context
def web(ctx, listen, config_path, workers, public, forwarded_allow_ips):
    """The fleet dashboard: serve it (default), or manage its users (web user ...) and API tokens (web token ...)."""
    if ctx.invoked_subcommand is not None:
        return None
    import os

    from cermin.web.settings import ENV, WebSettings

    host, port = _listen(listen)
    if not _loopback(host):
        if not public:
            raise UsageError(
                f"--listen {listen} is not a loopback address: the dashboard speaks plain HTTP; put a TLS reverse "
                "proxy in front and give --public to listen there anyway"
            )
        click.echo(
            f"warning: serving plain HTTP on {listen}: passwords and session cookies cross the network "
            "unencrypted unless a TLS proxy terminates in front of it",
            err=True,
        )
    settings = WebSettings.from_config(config_path)
    # open the store once here: the schema upgraded before any worker starts, and a bad URL is one line now
    from cermin.ops.state import StateStore

    StateStore.open(settings.state_url, upgrade=settings.upgrade).close()
    os.environ[ENV] = settings.to_env()
    import uvicorn

    g = ctx.obj
    if g is None or not g.quiet:
        click.echo(f"cermin dashboard on http://{listen}/ (state store {_shown(settings.state_url)})", err=True)
    uvicorn.run(
        "cermin.web.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        log_level="warning" if g is not None and g.quiet else "info",
    )
    return 0


def _shown(url: str) -> str:
    from cermin.ops.state import state_url

    return state_url(url).render_as_string(hide_password=True)


def _webstore(config_path):
    from cermin.ops.state import StateStore
    from cermin.ops.webstore import WebStore
    from cermin.web.settings import WebSettings

    settings = WebSettings.from_config(config_path)
    return WebStore(StateStore.open(settings.state_url, upgrade=True))


@web.group("user")
def user():
    """Dashboard users: operator (everything), auditor (reads and exports), viewer (one tenant, read-only)."""


def _read_new_password(password_file: str | None) -> str:
    import sys

    from cermin.web.passwords import check_strength

    if password_file:
        try:
            if password_file == "-":
                text = sys.stdin.readline()
            else:
                with open(password_file, encoding="utf-8") as f:
                    text = f.readline()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the password from {password_file}: {e}") from None
        password = text.rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password for the new user: ")
        if getpass.getpass("the same password again: ") != password:
            raise UsageError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        check_strength(password)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return password


@user.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "viewer", "auditor"]), required=True)
@click.option("--tenant", help="The one tenant a viewer sees (required for a viewer, refused for the others).")
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Read the password from the first line of this file ('-': standard input). Default: prompt twice "
    "(or one line of standard input when it is not a terminal). Never on the command line.",
)
@config_option
@click.pass_obj
def user_add(g, name, role, tenant, password_file, config_path):
    """Add a dashboard user (its password is stored as an Argon2id hash)."""
    from cermin.ops.config import load_config
    from cermin.ops.state import StateError
    from cermin.ops.webstore import user_name
    from cermin.web.passwords import hash_password

    name = name.lower()
    try:
        user_name(name)
    except StateError as e:
        raise UsageError(str(e)) from None
    if role == "viewer" and not tenant:
        raise UsageError("a viewer sees one tenant: give --tenant")
    if role != "viewer" and tenant:
        raise UsageError(f"an {role} sees every tenant: --tenant is for viewers")
    out = Output(g)
    if tenant and tenant not in load_config(config_path).tenants:
        out.warn(f"tenant {tenant!r} is not in {config_path}: the user will see no system until it is")
    ws = _webstore(config_path)
    if ws.user(name) is not None:
        raise UsageError(f"a user named {name!r} exists already")
    password = _read_new_password(password_file)
    u = ws.add_user(name, hash_password(password), role, tenant)
    ws.audit("", "user.add", u.name, {"role": u.role, "tenant": u.tenant, "by": "cli"})
    if g is not None and g.json:
        out.emit({"message_type": "web_user", **u.to_json()})
    else:
        out.text(f"added {u.role} {u.name}" + (f" (tenant {u.tenant})" if u.tenant else ""))
    return 0


@user.command("list")
@config_option
@click.pass_obj
def user_list(g, config_path):
    """List dashboard users (disabled ones too)."""
    out = Output(g)
    for u in _webstore(config_path).users():
        if g is not None and g.json:
            out.emit({"message_type": "web_user", **u.to_json()})
            continue
        state = f"disabled {u.disabled_at:%Y-%m-%d}" if u.disabled_at else "active"
        last = f"last login {u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never logged in"
        out.text(f"{u.name:<24} {u.role:<9} {u.tenant or '-':<16} {state:<20} {last}")
    return 0


@user.command("disable")
@click.argument("name")
@config_option
@click.pass_obj
def user_disable(g, name, config_path):
    """Disable a user: its sessions end at once; its name stays taken (the audit log names it)."""
    ws = _webstore(config_path)
    if not ws.disable_user(name.lower()):
        raise UsageError(f"no enabled user named {name!r}")
    ws.audit("", "user.disable", name.lower(), {"by": "cli"})
    Output(g).text(f"disabled {name.lower()}")
    return 0


# ---- API tokens (docs/dashboard.md "API tokens") -----------------------------------------------------------
@web.group("token")
def token():
    """Bearer tokens: for scripts on the REST API (as a user) or for Prometheus on /metrics (--metrics)."""


@token.command("add")
@click.argument("name")
@click.option("--user", "user", help="The user the token acts as (its role and tenant scope) on /api/v1.")
@click.option("--metrics", is_flag=True, help="A token that reads /metrics (the whole fleet) and nothing else.")
@config_option
@click.pass_obj
def token_add(g, name, user, metrics, config_path):
    """Make a token and print it once (the store keeps only its SHA-256): on standard output alone, so
    `cermin web token add prometheus --metrics > /etc/prometheus/cermin.token` stores it."""
    from cermin.ops.state import StateError
    from cermin.web.apitokens import new_token
    from cermin.web.auth import token_hash

    if metrics == bool(user):
        raise UsageError("give --user U (an API token acting as U) or --metrics (a token for /metrics), one of them")
    ws = _webstore(config_path)
    secret = new_token()
    try:
        tok = ws.add_api_token(
            name.lower(), token_hash(secret), user=user.lower() if user else None, scope="metrics" if metrics else "api"
        )
    except StateError as e:
        raise UsageError(str(e)) from None
    ws.audit("", "token.add", tok.name, {"scope": tok.scope, "user": tok.user, "by": "cli"})
    out = Output(g)
    if g is not None and g.json:
        out.emit({"message_type": "web_token", **tok.to_json(), "token": secret})
    else:
        click.echo(secret)
        what = "/metrics" if metrics else f"the API as {tok.user}"
        click.echo(f"token {tok.name} for {what}: shown once, keep it in a file only its reader can read", err=True)
    return 0


@token.command("list")
@click.option("--all", "show_all", is_flag=True, help="Revoked tokens too.")
@config_option
@click.pass_obj
def token_list(g, show_all, config_path):
    """List tokens (never the tokens themselves: the store has only their hashes)."""
    out = Output(g)
    for tok in _webstore(config_path).api_tokens(include_revoked=show_all):
        if g is not None and g.json:
            out.emit({"message_type": "web_token", **tok.to_json()})
            continue
        state = f"revoked {tok.revoked_at:%Y-%m-%d}" if tok.revoked_at else "live"
        used = f"last used {tok.last_used_at:%Y-%m-%d %H:%M}" if tok.last_used_at else "never used"
        out.text(f"{tok.id:<5} {tok.name:<24} {tok.scope:<8} {tok.user or '-':<16} {state:<18} {used}")
    return 0


@token.command("revoke")
@click.argument("name_or_id")
@config_option
@click.pass_obj
def token_revoke(g, name_or_id, config_path):
    """Revoke a token at once (by name or id): requests carrying it get 401."""
    from cermin.ops.state import StateError

    ws = _webstore(config_path)
    key = int(name_or_id) if name_or_id.isdigit() else name_or_id.lower()
    try:
        tok = ws.revoke_api_token(key)
    except StateError as e:
        raise UsageError(str(e)) from None
    if tok is None:
        raise UsageError(f"no live token {name_or_id!r}")
    ws.audit("", "token.revoke", tok.name, {"id": tok.id, "by": "cli"})
    Output(g).text(f"revoked token {tok.name} ({tok.id})")
    return 0
