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
@click.option(
    "--max-object-size",
    default="128MiB",
    show_default=True,
    help="Largest object accepted (413 above it, before the body is read).",
)
@click.option("--quota-bytes", default="0", show_default=True, help="Per-tenant storage quota (0: none), e.g. 500GiB.")
@click.option("--quota-objects", type=click.IntRange(min=0), default=0, show_default=True, help="Per-tenant objects.")
@click.option("--max-locks", type=click.IntRange(min=1), default=64, show_default=True, help="Lock files per tenant.")
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Worker processes sharing the listening socket (their shared state lives under ROOT/.cermin-server).",
)
@click.pass_context
def serve(
    ctx,
    root,
    listen,
    tls_cert,
    tls_key,
    approval_window,
    max_object_size,
    quota_bytes,
    quota_objects,
    max_locks,
    workers,
):
    """Serve repositories over HTTP: backup tokens append, read tokens read, deletions need two admins."""
    if ctx.invoked_subcommand is not None:
        ctx.obj.serve_root = root
        return
    limits = {
        "max_object_size": _size(max_object_size, "--max-object-size"),
        "quota_bytes": _size(quota_bytes, "--quota-bytes"),
        "quota_objects": quota_objects,
        "max_locks": max_locks,
    }
    if limits["max_object_size"] <= 0:
        raise UsageError("--max-object-size must be positive")
    host, port = _listen(root, listen, tls_cert, tls_key, workers)
    import json
    import os
    import secrets

    import uvicorn

    from cermin.server.app import APP_ENV, build_app

    run = secrets.token_hex(8)  # one id for this run, the same in every worker
    tls = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
    # keep idle connections 75 s (uvicorn: 5 s): a client busy compressing for longer found its pooled
    # connection closed under it ("connection reset"; retried, but a wasted request) under load
    opts = {"host": host, "port": port, "log_level": "warning", "access_log": False, "timeout_keep_alive": 75, **tls}
    if workers == 1:
        uvicorn.run(build_app(root, float(approval_window), run=run, **limits), **opts)
        return
    # uvicorn binds the socket here and spawns the workers; each builds its app from this (no secret)
    cfg = {"root": os.path.abspath(root), "window": float(approval_window), "limits": limits, "run": run}
    os.environ[APP_ENV] = json.dumps(cfg)
    # uvicorn's supervisor SIGKILLs a worker that has not answered its ping for this long (default 5 s):
    # on a loaded machine a busy worker can take longer, and killing it drops every request in flight
    opts["timeout_worker_healthcheck"] = 60
    uvicorn.run("cermin.server.app:app_from_env", factory=True, workers=workers, **opts)


def _listen(root, listen: str, tls_cert, tls_key, workers: int = 1) -> tuple[str, int]:
    """Check the serve options and say where it listens (on stderr): (host, port)."""
    if not root:
        raise UsageError("--root is required")
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"bad --listen {listen!r}: use HOST:PORT")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    procs = f" ({workers} worker processes)" if workers > 1 else ""
    click.echo(f"cermin serve: {root} on {'https' if tls_cert else 'http'}://{listen}{procs}", err=True)
    if not tls_cert and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("cermin serve: warning: plain http on a non-loopback address: tokens travel unencrypted", err=True)
    return host, int(port)


_UNITS = {
    "": 1,
    "B": 1,
    "K": 1 << 10,
    "KIB": 1 << 10,
    "M": 1 << 20,
    "MIB": 1 << 20,
    "G": 1 << 30,
    "GIB": 1 << 30,
    "T": 1 << 40,
    "TIB": 1 << 40,
}


def _size(text: str, what: str) -> int:
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    if m is None or m[2].upper() not in _UNITS:
        raise UsageError(f"bad {what} {text!r}: use e.g. 128MiB, 500GiB or a number of bytes")
    return int(m[1]) * _UNITS[m[2].upper()]


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
    from cermin.backend.retry import unwrap

    b = unwrap(backend_of(g))  # approvals are calls of the server's admin API, not of the store
    if not isinstance(b, HttpBackend):
        raise UsageError("approvals need an http(s):// repository served by `cermin serve`")
    return b


@approvals.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also decided, expired and revoked requests.")
@click.pass_obj
def approvals_list(g, show_all):
    """Requests with what each deletes, who asked and when (pending ones; --all for every one)."""
    import time

    out = Output(g)
    for r in _http(g).approvals():
        if not show_all and r["status"] != "pending" and not out.json:
            continue
        if out.json:
            out.emit({"message_type": "approval", **r})
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(r["requested_at"]))
        who = r.get("requested_by_label") or ""
        who = f"{r['requested_by']} ({who})" if who else r["requested_by"]
        if r.get("action") == "delete-tenant":
            what = "DELETE THE WHOLE TENANT REPOSITORY"
        else:
            parts = [f"{len(v)} {k}" for k, v in sorted(r.get("objects", {}).items())]
            what = "delete " + ", ".join(parts)
        out.text(f"{r['id']}  {r['status']:<9} {what}; requested by {who} at {when}")
        if r.get("reason"):
            out.text(f"    {r['reason']}")
        if out.verbose:
            for k, names in sorted(r.get("objects", {}).items()):
                for n in names:
                    out.text(f"    {k}/{n}")


def _decide(g, ids, approve: bool) -> None:
    out = Output(g)
    b = _http(g)
    if "all" in ids:
        raise UsageError(
            "approve or reject requests one at a time, by id, after reading them (`cermin approvals list`)"
        )
    for rid in ids:
        r = b.decide(rid, approve)
        if out.json:
            out.emit({"message_type": "approval", **r})
        else:
            what = "the tenant" if r.get("action") == "delete-tenant" else f"{r.get('count', 0)} objects"
            out.text(f"{rid}: {r['status']} (delete {what})")


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
    """Approve requests by ID (each one: read it first with `approvals list -v`). Not for their requester."""
    _decide(g, ids, True)


@approvals.command("reject")
@click.argument("ids", nargs=-1, required=True)
@click.pass_obj
def approvals_reject(g, ids):
    _decide(g, ids, False)
