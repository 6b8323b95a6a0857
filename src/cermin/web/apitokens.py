"""Bearer tokens for scripts and Prometheus (docs/dashboard.md "API tokens").

`cermin web token add NAME --user U` makes a token for the REST API: it acts as its user — same role,
same tenant scope (a viewer's token sees one tenant) — on `/api/v1/...`. `--metrics` makes a token that
reads `/metrics` (the whole fleet) and nothing else. The token is printed once; the store keeps only its
SHA-256 (cermin.ops.webstore), so a copy of the database lets no one in.

A request carries it as `Authorization: Bearer <token>`. Tokens are accepted on `/api/v1/` and `/metrics`
only (no page, no login form), and such a request is judged by its token alone: a bad, revoked or
disabled user's token is 401, whatever cookie comes along. Browsers never add an Authorization header on
their own, so a bearer request is not exposed to cross-site request forgery and needs no CSRF token
(web/auth.py's csrf_guard lets it through; cookie requests still need one).

The lookup is by the token's SHA-256 (an indexed equality: what its timing could reveal is about the hash
of a 256-bit random token, not the token), and the hash found is compared again in constant time.
"""

from __future__ import annotations

import hmac
import secrets

from fastapi import HTTPException, Request

from cermin.ops.webstore import ApiToken, User

PREFIX = "cermin_"  # recognisable by secret scanners; a metrics token is the same kind of string
BEARER_PATHS = ("/api/v1/", "/metrics")
TOUCH_EVERY_S = 60  # last_used_at is written at most this often per token
MAX_TOKEN = 200
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cermin"'}


def new_token() -> str:
    """A fresh token: 256 random bits, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def bearer_path(path: str) -> bool:
    return path.startswith(BEARER_PATHS[0]) or path == BEARER_PATHS[1]


def bearer_of(request: Request) -> str | None:
    """The bearer token the request carries; '' for an Authorization header that holds none (refused);
    None when there is no Authorization header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > MAX_TOKEN or not value.isprintable():
        return ""
    return value


def lookup(request: Request) -> tuple[ApiToken, User | None] | None:
    """The live token (and its enabled user, for an API token) the request carries, or None. Looked up
    once per request; its last_used_at is written at most once a minute."""
    if hasattr(request.state, "api_token"):
        return request.state.api_token
    from cermin.web.auth import token_hash

    found = None
    token = bearer_of(request)
    if token:
        app = request.app
        digest = token_hash(token)
        hit = app.state.webstore.api_token(digest)
        if hit is not None and hmac.compare_digest(hit[0].token_hash.encode(), digest.encode()):
            found = hit
            now = app.state.clock()
            last = hit[0].last_used_at
            if last is None or (now - last).total_seconds() >= TOUCH_EVERY_S:
                app.state.webstore.touch_api_token(hit[0].id, now)
    request.state.api_token = found
    return found


def bearer_principal(request: Request):
    """The principal of a bearer request on the API: its token's user, without a session (so no CSRF
    token is asked for). 401 for a bad or revoked token, 403 for a metrics token."""
    from cermin.web.auth import Principal

    found = lookup(request)
    if found is None:
        raise HTTPException(401, "bad, revoked or expired API token", headers=CHALLENGE)
    token, user = found
    if token.scope != "api" or user is None:
        raise HTTPException(403, "a metrics token reads /metrics only")
    return Principal(user, None, token)
