"""`cermin serve` (the repository server), its tokens, and `cermin approvals`."""

from __future__ import annotations

import click

from cermin.cli.common import Output, backend_of
from cermin.errors import UsageError


@click.group(invoke_without_command=True)
@click.option("--root", type=click.Path(file_okay=False), help="Directory holding one repository per tenant.")
@click.option("--listen", default="127.0.0.1:8000", show_default=True, help="HOST:PORT to listen on.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate (serve HTTPS).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key.")
@click.option(
    "--approval-window",
    type=int,
    default=3600,
    show_default=True,
    help="Seconds a second admin has to approve a destructive request.",
)
@click.pass_context
def serve(ctx, root, listen, tls_cert, tls_key, approval_window):
    """Serve repositories over HTTP: backup tokens append, read tokens read, deletions need two admins."""
    if ctx.invoked_subcommand is not None:
        ctx.obj.serve_root = root
        return
    if not root:
        raise UsageError("--root is required")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"bad --listen {listen!r}: use HOST:PORT")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    import uvicorn

    from cermin.server.app import build_app

    click.echo(f"cermin serve: {root} on {'https' if tls_cert else 'http'}://{listen}", err=True)
    uvicorn.run(
        build_app(root, float(approval_window)),
        host=host,
        port=int(port),
        log_level="warning",
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=False,
    )


def _store(g):
    from cermin.server.auth import TokenStore

    root = getattr(g, "serve_root", None)
    if not root:
        raise UsageError("give the server's --root: cermin serve --root DIR token ...")
    import os

    return TokenStore(os.path.join(os.path.abspath(root), ".cermin-server"))


@serve.group()
def token():
    """Manage access tokens (stored hashed; a new token is shown once)."""


@token.command("add")
@click.option("--tenant", required=True)
@click.option("--role", type=click.Choice(["backup", "read", "admin"]), required=True)
@click.option("--label", default="", help="Who or what holds it.")
@click.pass_obj
def token_add(g, tenant, role, label):
    """Create a token; prints it once (give it to the client through CERMIN_TOKEN_FILE)."""
    entry, secret = _store(g).add(tenant, role, label)
    out = Output(g)
    if out.json:
        out.emit({"message_type": "token", "id": entry.id, "tenant": tenant, "role": role, "token": secret})
    else:
        click.echo(secret)


@token.command("list")
@click.pass_obj
def token_list(g):
    out = Output(g)
    for e in _store(g).list():
        if out.json:
            out.emit(
                {
                    "message_type": "token",
                    "id": e.id,
                    "tenant": e.tenant,
                    "role": e.role,
                    "created": e.created,
                    "label": e.label,
                }
            )
        else:
            out.text(f"{e.id}  {e.tenant:<20} {e.role:<7} {e.created[:19]}  {e.label}")


@token.command("revoke")
@click.argument("token_id")
@click.pass_obj
def token_revoke(g, token_id):
    _store(g).revoke(token_id)
    Output(g).text(f"revoked {token_id}")


@click.group()
def approvals():
    """Two-person rule: list, approve or reject destructive requests (admin token of the tenant)."""


def _http(g):
    from cermin.backend.http import HttpBackend

    b = backend_of(g)
    if not isinstance(b, HttpBackend):
        raise UsageError("approvals need an http(s):// repository served by `cermin serve`")
    return b


@approvals.command("list")
@click.pass_obj
def approvals_list(g):
    out = Output(g)
    for r in _http(g).approvals():
        if out.json:
            out.emit({"message_type": "approval", **r})
        else:
            out.text(
                f"{r['id']}  {r['status']:<8} delete {r['kind']}/{r['name'][:16]}  requested by {r['requested_by']}"
            )


def _decide(g, ids, approve: bool) -> None:
    out = Output(g)
    b = _http(g)
    if ids == ("all",):
        ids = tuple(r["id"] for r in b.approvals() if r["status"] == "pending")
    for rid in ids:
        r = b.decide(rid, approve)
        out.emit({"message_type": "approval", **r}) if out.json else out.text(f"{rid}: {r['status']}")


@approvals.command("delete-tenant")
@click.pass_obj
def approvals_delete_tenant(g):
    """Request deletion of this tenant's whole repository (a second admin must approve)."""
    rid = _http(g).request_tenant_deletion()
    out = Output(g)
    out.emit({"message_type": "approval_requested", "id": rid}) if out.json else out.text(
        f"requested: a second admin must run `cermin approvals approve {rid}`"
    )


@approvals.command("approve")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def approvals_approve(g, ids):
    """Approve requests by ID ('all': every pending one). Not allowed for their requester."""
    _decide(g, ids, True)


@approvals.command("reject")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def approvals_reject(g, ids):
    _decide(g, ids, False)
