"""HTTP backend: a client of `cermin serve`. Location `http(s)://host:port/tenant`; the token comes
from CERMIN_TOKEN or the file named by CERMIN_TOKEN_FILE (never from a command-line argument).

It does not retry: a refused or reset connection, a timeout, a 5xx or 429 answer is a TransientError
that backend/retry.py retries (open_backend wraps this backend in it)."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from cermin.backend.base import CONFIG_NAME, OBJECT_STORE_PACK_SIZE, BackendBase, Capabilities, Kind, exists_by_size
from cermin.errors import (
    AccessDenied,
    ApprovalRequired,
    CerminError,
    ObjectExists,
    ObjectNotFound,
    RepositoryExists,
    StorageFull,
    TransientError,
    UsageError,
)

_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
MAX_ANSWER = 512 << 20  # bytes of a whole object read: above any pack (128 MiB) or sealed object (256 MiB)


def plain_http_warning(location: str) -> str | None:
    """A warning when tokens would travel unencrypted to another host (None for https or loopback)."""
    from urllib.parse import urlsplit

    u = urlsplit(location)
    host = (u.hostname or "").lower()
    if u.scheme != "http" or host in _LOOPBACK or host.startswith("127.") or host.endswith(".localhost"):
        return None
    return (
        f"the repository server {u.scheme}://{u.netloc} is reached over plain http: the token and metadata "
        "travel unencrypted (serve with --tls-cert/--tls-key and use https://)"
    )


class HttpBackend(BackendBase):
    # The server's two-person rule: a batch of deletions is one request a second admin approves.
    caps = Capabilities(batch_remove=True, default_pack_size=OBJECT_STORE_PACK_SIZE)

    def __init__(self, location: str, token: str | None = None) -> None:
        import urllib3

        self.location = location.rstrip("/")
        self.token = token or _token_from_env()
        self.warnings: list[str] = []
        w = plain_http_warning(self.location)
        if w:
            self.warnings.append(w)
            import sys

            print(f"cermin: warning: {w}", file=sys.stderr)
        # CERMIN_CACERT: the CA (or self-signed certificate) of a server with its own TLS certificate.
        ca = os.environ.get("CERMIN_CACERT")
        self.http = urllib3.PoolManager(
            num_pools=4,
            maxsize=16,
            retries=False,
            timeout=urllib3.Timeout(connect=10, read=300),
            **({"ca_certs": ca} if ca else {}),
        )

    def _url(self, kind: Kind, name: str = "") -> str:
        return f"{self.location}/{kind.value}/{name}"

    def _request(
        self, method: str, url: str, body: bytes | None = None, headers: dict | None = None, stream: bool = False
    ):
        """The answer, read whole; with `stream` its body is left for `_body` (a GET that bounds it)."""
        import urllib3

        h = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        try:
            r = self.http.request(method, url, body=body, headers=h, preload_content=not stream)
        except urllib3.exceptions.HTTPError as e:
            if isinstance(e, urllib3.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise CerminError(
                    f"TLS with {self.location} failed (set CERMIN_CACERT for a private CA): {e}".splitlines()[0]
                ) from None
            raise TransientError(f"cannot reach the repository server at {self.location}: {e}") from None
        if stream and r.status not in (200, 206):  # an error's text, at most 4 KiB; the connection goes
            text = r.read(4096)
            r.close()
            r = _Answer(r.status, r.headers, text)
        if r.status == 507:
            raise StorageFull(f"the repository server refused {method} {_path(url)}: {_msg(r)}")
        if r.status >= 500 or r.status in (408, 429):
            raise TransientError(f"the repository server answered {r.status} to {method} {_path(url)}: {_msg(r)}")
        if r.status == 401:
            raise AccessDenied("the repository server refused the token (set CERMIN_TOKEN or CERMIN_TOKEN_FILE)")
        if r.status == 403:
            raise AccessDenied(f"the repository server refused {method} {_path(url)}: {_msg(r)}")
        return r

    def create(self) -> None:
        if self.exists(Kind.CONFIG, CONFIG_NAME):
            raise RepositoryExists(f"a repository already exists at {self.location}")

    def save(self, kind: Kind, name: str, data) -> None:
        body = bytes(data) if not isinstance(data, bytes) else data
        r = self._request("POST", self._url(kind, name), body=body)
        if r.status == 409:  # a lost answer's ObjectExists is recognised by backend/retry.py
            raise ObjectExists(f"{kind.value}/{name} already exists")
        if r.status == 413:
            raise CerminError(f"the server refused {kind.value}/{name[:12]} ({len(body)} bytes): {_msg(r)}")
        if r.status != 201:
            raise CerminError(f"saving {kind.value}/{name[:12]} failed: {r.status} {_msg(r)}")

    def load(self, kind: Kind, name: str, offset: int = 0, length: int | None = None) -> bytes:
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            if length == 0:
                return b""
            headers["Range"] = f"bytes={offset}-{end}"
        r = self._request("GET", self._url(kind, name), headers=headers, stream=True)
        if r.status in (200, 206):
            # A hostile or broken server could answer with any length: read at most what was asked
            # (206) or the largest object there is (200), never until it stops.
            data = _body(r, length if r.status == 206 and length is not None else MAX_ANSWER, f"{kind.value}/{name}")
            if r.status == 200 and "Range" in headers:  # the range was ignored: this is the whole object
                return data[offset : None if length is None else offset + length]
            return data
        if r.status == 416:
            return b""  # nothing at or after that offset (short read, as local files give)
        if r.status == 404:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist")
        raise CerminError(f"reading {kind.value}/{name} failed: {r.status} {_msg(r)}")

    def size(self, kind: Kind, name: str) -> int:
        r = self._request("HEAD", self._url(kind, name))
        if r.status == 404:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist")
        return int(r.headers.get("content-length", 0))

    def list(self, kind: Kind):
        r = self._request("GET", self._url(kind))
        if r.status != 200:
            raise CerminError(f"listing {kind.value} failed: {r.status} {_msg(r)}")
        return iter([(n, s) for n, s in json.loads(r.data)])

    def remove(self, kind: Kind, name: str) -> None:
        r = self._request("DELETE", self._url(kind, name))
        if r.status == 404:
            raise ObjectNotFound(f"{kind.value}/{name} does not exist")
        if r.status == 202:
            rid = str(json.loads(r.data).get("approval_required", "?"))
            raise ApprovalRequired(rid, 1, f"deleting {kind.value}/{name[:12]}")
        if r.status not in (200, 204):
            raise CerminError(f"deleting {kind.value}/{name[:12]} failed: {r.status} {_msg(r)}")

    def remove_many(self, items: list[tuple[Kind, str]]) -> str | None:
        """Capability of servers with a two-person rule: ask for the deletion of all `items` as ONE
        request a second admin approves. Returns the request id (None: none of them exists)."""
        body = json.dumps({"objects": [[k.value, n] for k, n in items]}).encode()
        r = self._request("POST", f"{self.location}/_delete", body=body, headers={"Content-Type": "application/json"})
        if r.status == 200:
            return None
        if r.status != 202:
            raise CerminError(f"requesting the deletion of {len(items)} objects failed: {r.status} {_msg(r)}")
        return str(json.loads(r.data)["approval_required"])

    def exists(self, kind: Kind, name: str) -> bool:
        return exists_by_size(self, kind, name)

    def close(self) -> None:
        self.http.clear()

    # ---- approvals (admin tokens) ----------------------------------------------------------------
    def approvals(self) -> list[dict]:
        r = self._request("GET", f"{self.location}/_approvals")
        if r.status != 200:
            raise CerminError(f"listing approvals failed: {r.status} {_msg(r)}")
        return json.loads(r.data)

    def request_tenant_deletion(self) -> str:
        r = self._request("DELETE", f"{self.location}/")
        if r.status != 202:
            raise CerminError(f"the server refused: {_msg(r)}")
        return json.loads(r.data)["approval_required"]

    def decide(self, rid: str, approve: bool) -> dict:
        r = self._request("POST", f"{self.location}/_approvals/{rid}/{'approve' if approve else 'reject'}")
        if r.status != 200:
            raise CerminError(f"the server refused: {_msg(r)}")
        return json.loads(r.data)


def _path(url: str) -> str:
    return url.split("/", 3)[-1]


def _msg(r) -> str:
    try:
        return json.loads(r.data).get("error", "")
    except Exception:
        return r.data[:200].decode("utf-8", "replace")


class _Answer(NamedTuple):
    """An error answer to a streamed request, its text read (bounded) and its connection dropped."""

    status: int
    headers: Any
    data: bytes


def _token_from_env() -> str:
    path = os.environ.get("CERMIN_TOKEN_FILE")
    if path:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read CERMIN_TOKEN_FILE {path}: {e.strerror}") from None
    token = os.environ.get("CERMIN_TOKEN")
    if not token:
        raise UsageError("an http repository needs a token: set CERMIN_TOKEN or CERMIN_TOKEN_FILE")
    return token


def _body(r, limit: int, what: str) -> bytes:
    """The body of a streamed answer, refused when it runs past `limit` bytes."""
    import urllib3

    try:
        data = r.read(limit + 1, decode_content=True)
    except urllib3.exceptions.HTTPError as e:
        r.close()
        raise TransientError(f"reading {what} from the repository server failed: {e}") from None
    if len(data) > limit:
        r.close()  # the rest is never read: the connection is dropped, not pooled
        raise TransientError(f"the repository server answered more than the {limit} bytes asked for {what}")
    r.release_conn()
    return data
