"""`cermin demo [DIR]`: a small demo fleet (ops/demo.py) and the dashboard over it — the README's first command."""

from __future__ import annotations

import click

from cermin.cli.common import Output

DEFAULT_DIR = "cermin-demo"
ADMIN = "admin"
VIEWER, VIEWER_TENANT = "staf-dukcapil", "dukcapil"  # a tenant viewer of the attacked tenant


@click.command()
@click.argument("directory", required=False, default=DEFAULT_DIR, type=click.Path(file_okay=False))
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    help="Where the dashboard listens; when the port is taken, the next free one (port 0: any free port).",
)
@click.option("--no-serve", is_flag=True, help="Build the fleet and print its summary; start no dashboard.")
@click.option("--reset", is_flag=True, help="Remove an earlier demo in DIR and build it again.")
@click.pass_obj
def demo(g, directory, listen, no_serve, reset):
    """Set up a demo fleet in DIR (default ./cermin-demo) and show it in the dashboard.

    \b
    Four tenants and seven systems are backed up by the agent into local repositories, mirrored to one
    tenant's own mirror, maintained and verified; one system is drilled; one file share is attacked by a
    simulated ransomware and the guard flags its next backup. Some systems are left uncovered on purpose
    (an open alarm, a backup whose source is gone, an unreachable immutable tier, never drilled).
    The summary says which and why; the dashboard (http://127.0.0.1:8080/, login printed) shows it.
    An earlier demo in DIR is reused; --reset rebuilds it. Stop the dashboard with Ctrl-C."""
    from cermin.ops.demo import build_demo

    out = Output(g)
    host, port = _parse_listen(listen)

    def progress(msg: str) -> None:
        if not g.quiet and not g.json:
            click.echo(msg, err=True)

    fleet = build_demo(directory, progress=progress, reset=reset)
    code = out.render(fleet)
    if no_serve:
        return code
    return _serve(out, fleet, host, port)


def _parse_listen(listen: str) -> tuple[str, int]:
    import ipaddress

    from cermin.errors import UsageError

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"bad --listen {listen!r}: use HOST:PORT (e.g. 127.0.0.1:8080)")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"--listen {listen}: the demo serves on a loopback address only (a real dashboard: cermin web --public)"
        )
    return host, int(port)


def bind_free(host: str, port: int, tries: int = 20):
    """A listening socket on host:port, or on the next free port after it (port 0: any free one)."""
    import errno
    import socket

    from cermin.errors import CerminError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last: OSError | None = None
    for p in [0] if port == 0 else range(port, min(port + tries, 65536)):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, p))
        except OSError as e:
            sock.close()
            last = e
            if e.errno == errno.EADDRINUSE:
                continue
            break
        sock.listen(128)
        return sock
    raise CerminError(f"cannot listen on {host}:{port}: {last.strerror if last else 'no free port'}")


def _serve(out: Output, fleet, host: str, port: int) -> int:
    import os

    from cermin.web.settings import WebSettings

    logins = _users(fleet)
    sock = bind_free(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    out.text("")
    admin_pw = logins[ADMIN]
    admin_file = os.path.join(fleet.root, "admin.password")
    if admin_pw:
        out.text(f"Dashboard: http://{shown}:{bound}/  login: {ADMIN} / {admin_pw}")
    else:
        out.text(f"Dashboard: http://{shown}:{bound}/  login: {ADMIN} (its password is in {admin_file})")
    viewer_pw = logins[VIEWER]
    viewer_file = os.path.join(fleet.root, f"{VIEWER}.password")
    what = viewer_pw or f"its password is in {viewer_file}"
    out.text(f"A viewer who sees only tenant {VIEWER_TENANT}: {VIEWER} / {what}")
    if out.json:
        out.emit(
            {
                "message_type": "demo_dashboard",
                "url": f"http://{shown}:{bound}/",
                "logins": [
                    {"user": ADMIN, "role": "operator", "password": admin_pw, "password_file": admin_file},
                    {
                        "user": VIEWER,
                        "role": "viewer",
                        "tenant": VIEWER_TENANT,
                        "password": viewer_pw,
                        "password_file": viewer_file,
                    },
                ],
            }
        )
    out.text("Stop it with Ctrl-C (or SIGTERM); `cermin demo` again serves the same fleet, --reset rebuilds it.")
    import uvicorn

    from cermin.web.app import create_app

    app = create_app(WebSettings(state_url=fleet.state_url, config_path=fleet.config_path))
    # the socket is bound already (the first free port): uvicorn serves on it
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False, access_log=False))
    server.run(sockets=[sock])
    return 0


def _users(fleet) -> dict[str, str | None]:
    """The demo's two logins: `admin` (operator) and a viewer of one tenant, made once with random
    passwords written to DIR/<name>.password (0600). -> name: the new password, or None when the user was
    made earlier (its password is in the file)."""
    import os
    import secrets

    from cermin.ops.state import StateStore
    from cermin.ops.webstore import WebStore
    from cermin.web.passwords import hash_password

    got: dict[str, str | None] = {}
    store = StateStore.open(fleet.state_url)
    try:
        web = WebStore(store)
        for name, role, tenant in ((ADMIN, "operator", None), (VIEWER, "viewer", VIEWER_TENANT)):
            if web.user(name) is not None:
                got[name] = None
                continue
            password = secrets.token_urlsafe(12)
            path = os.path.join(fleet.root, f"{name}.password")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            os.chmod(path, 0o600)
            web.add_user(name, hash_password(password), role, tenant)
            web.audit("", "user.add", name, {"role": role, "tenant": tenant, "by": "demo"})
            got[name] = password
    finally:
        store.close()
    return got
