"""ListObjectVersions as one signed HTTP request: the S3 open path without a boto3 client.

Every S3 command lists the versions of `config` and of its key slot (it reads their first version).
A boto3 client costs ~0.4 s and ~35 MiB to create (it parses its JSON service models); this module
signs with botocore's SigV4 (no hand-written crypto), sends with urllib3 and parses the XML itself,
for a fraction of that. Pages come back in the shape boto3's paginator gives (`Versions`,
`DeleteMarkers`: dicts with Key, VersionId, IsLatest, LastModified, Size), in the order S3 lists
them: newest first per key, which the callers rely on.

The answer is hostile input: anything malformed, oversized or out of order is refused with a
`BadListing` (a CerminError), and pagination stops on a marker that does not advance.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import quote, unquote

from cermin.errors import CerminError, UsageError

PAGE_SIZE = 1000  # S3's own maximum per page
MAX_BODY = 8 * 1024 * 1024  # a page of 1,000 versions is ~0.5 MiB (~1.5 MiB with 1 KiB keys)
MAX_ELEMENTS = 100_000  # ~15 per version; bounds the memory a hostile answer of tiny elements takes
MAX_SIZE = 1 << 46  # 64 TiB: beyond any object S3 stores (5 TiB, 50 TB on AWS)
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)?")


class _Key(NamedTuple):
    """What SigV4Auth reads of a credential (the fields of botocore's ReadOnlyCredentials), without
    importing botocore.credentials (its config and endpoint modules: ~20 ms, ~1 MiB more)."""

    access_key: str
    secret_key: str
    token: str | None


class BadListing(CerminError):
    """The store answered a version listing that is not one (malformed, inconsistent, endless)."""


class ErrorAnswer(Exception):
    """An error status from the store. `response` has botocore's ClientError shape, so the S3
    backend sorts it exactly as it sorts boto3's errors."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
        super().__init__(f"ListObjectVersions answered {status} {code}: {message}".replace("  ", " "))


class Unreachable(Exception):
    """No connection to the endpoint (refused, connect timeout, unknown host)."""


class Broken(Exception):
    """The connection failed after it was made (read timeout, reset, cut answer): worth a retry."""


def _clean(text: str, limit: int = 200) -> str:
    """A store's text made fit for an error message: printable, one line, bounded (no escapes)."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


class _Node:
    __slots__ = ("tag", "text", "children")

    def __init__(self, tag: str) -> None:
        self.tag, self.text, self.children = tag, "", []

    def child(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)


def parse_xml(body: bytes) -> _Node:
    """The element tree of an S3 answer. A document type declaration is refused outright, so no
    entity is ever declared, let alone expanded (billion laughs, external entities): S3 never sends
    one. expat >= 2.4.1 would also cap an expansion, but this does not depend on the version."""
    from xml.parsers import expat

    def refuse(*_args) -> None:
        raise BadListing("the S3 answer declares a document type (entities); refused")

    root = _Node("")
    stack = [root]
    count = 0

    def start(tag: str, _attrs) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            raise BadListing(f"the S3 answer has more than {MAX_ELEMENTS} elements")
        node = _Node(tag.rsplit(":", 1)[-1])  # a namespace prefix, if any, is not part of the name
        stack[-1].children.append(node)
        stack.append(node)

    def end(_tag: str) -> None:
        stack.pop()

    def data(text: str) -> None:
        stack[-1].text += text

    p = expat.ParserCreate()
    p.buffer_text = True  # text in few large pieces, not one call per line
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse
    p.StartElementHandler, p.EndElementHandler, p.CharacterDataHandler = start, end, data
    try:
        p.Parse(body, True)
    except expat.ExpatError as e:
        raise BadListing(f"the S3 answer is not well-formed XML ({e})") from None
    if len(root.children) != 1:
        raise BadListing("the S3 answer has no root element")
    return root.children[0]


def _text(node: _Node, tag: str, what: str) -> str:
    c = node.child(tag)
    if c is None or not c.text:
        raise BadListing(f"the S3 version listing has {what} without {tag}")
    return c.text


def _flag(node: _Node, tag: str, what: str, default: bool | None = None) -> bool:
    c = node.child(tag)
    if c is None and default is not None:
        return default
    value = _text(node, tag, what).strip().lower()
    if value not in ("true", "false"):
        raise BadListing(f"the S3 version listing has {what} with {tag} {_clean(value, 20)!r}")
    return value == "true"


def _date(node: _Node, what: str) -> datetime:
    value = _text(node, "LastModified", what).strip()
    if not _DATE.fullmatch(value):
        raise BadListing(f"the S3 version listing has {what} with LastModified {_clean(value, 40)!r}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:  # the right shape, but no such day or hour
        raise BadListing(f"the S3 version listing has {what} with LastModified {_clean(value, 40)!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # S3 times are UTC


def _size(node: _Node, what: str) -> int:
    value = _text(node, "Size", what).strip()
    if not (value.isascii() and value.isdigit() and len(value) < 20 and int(value) <= MAX_SIZE):
        raise BadListing(f"the S3 version listing has {what} with Size {_clean(value, 30)!r}")
    return int(value)


def parse_page(body: bytes, prefix: str) -> dict:
    """One ListVersionsResult page as boto3 gives it (Versions, DeleteMarkers, IsTruncated,
    NextKeyMarker, NextVersionIdMarker), validated; every key must lie under `prefix`."""
    root = parse_xml(body)
    if root.tag != "ListVersionsResult":
        raise BadListing(f"the S3 answer is a {_clean(root.tag, 40)!r}, not a version listing")
    encoded = (root.child("EncodingType") or _Node("")).text == "url"  # we ask for it, as boto3 does
    page: dict = {"Versions": [], "DeleteMarkers": []}
    for node in root.children:
        if node.tag not in ("Version", "DeleteMarker"):
            continue
        what = f"a {node.tag}"
        key = _text(node, "Key", what)
        key = unquote(key) if encoded else key
        if not key.startswith(prefix):
            raise BadListing(f"the S3 version listing for {prefix!r} names a key outside it: {_clean(key, 80)!r}")
        entry = {
            "Key": key,
            "VersionId": _text(node, "VersionId", what),
            "IsLatest": _flag(node, "IsLatest", what),
            "LastModified": _date(node, what),
        }
        if node.tag == "Version":
            entry["Size"] = _size(node, what)
            page["Versions"].append(entry)
        else:
            page["DeleteMarkers"].append(entry)
    page["IsTruncated"] = _flag(root, "IsTruncated", "its result", default=False)
    if page["IsTruncated"]:
        marker = _text(root, "NextKeyMarker", "a truncated result")
        page["NextKeyMarker"] = unquote(marker) if encoded else marker
        vid = root.child("NextVersionIdMarker")
        page["NextVersionIdMarker"] = vid.text if vid is not None else ""
    return page


def error_code(body: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error answer; empty strings when it carries none (a proxy's page)."""
    try:
        root = parse_xml(body)
    except BadListing:
        return "", ""
    code, msg = root.child("Code"), root.child("Message")
    return _clean(code.text.strip() if code else "", 64), _clean(msg.text.strip() if msg else "")


class VersionLister:
    """Signed ListObjectVersions for one bucket over one urllib3 pool (thread-safe; the pool keeps
    connections alive between pages and commands' listings). It never retries: backend/retry.py does."""

    def __init__(self, endpoint: str | None, bucket: str, region: str, credentials: dict, connect_timeout: float):
        import urllib3

        self.region = region
        base = endpoint or f"https://s3.{region}.amazonaws.com"
        self.url = f"{base.rstrip('/')}/{quote(bucket, safe='')}"  # path-style, as obstore is set up
        if credentials:
            key = _Key(credentials["access_key_id"], credentials["secret_access_key"], credentials.get("session_token"))
            self._key = lambda: key
        else:  # CERMIN_S3_AMBIENT_CREDENTIALS=1: botocore's chain (profiles, instance metadata)
            import botocore.session

            ambient = botocore.session.Session().get_credentials()
            if ambient is None:
                raise UsageError("no S3 credentials found in the environment, ~/.aws or an instance profile")
            # Frozen per request: one consistent key, secret and token while they renew on another thread.
            self._key = ambient.get_frozen_credentials
        self._connect_timeout = connect_timeout
        # Connections kept for reuse: as many as threads may list at once (a fuller pool closes the extra
        # connection and logs a warning).
        kw: dict = {"maxsize": 32, "retries": False}
        if self.url.startswith("https://"):
            kw["ca_certs"] = os.environ.get("AWS_CA_BUNDLE") or _ca_bundle()
        proxy = _proxy(self.url)
        self._pool = urllib3.ProxyManager(proxy, **kw) if proxy else urllib3.PoolManager(**kw)

    def _get(self, query: list[tuple[str, str]], read_timeout: float) -> tuple[int, bytes]:
        import urllib3
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        # Parameters sorted and encoded as SigV4's canonical form wants, so the URL sent is the one signed.
        url = self.url + "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query))
        req = AWSRequest(method="GET", url=url)
        S3SigV4Auth(self._key(), "s3", self.region).add_auth(req)  # S3's SigV4: adds X-Amz-Content-SHA256
        try:
            resp = self._pool.request(
                "GET",
                url,
                headers=dict(req.headers.items()),
                timeout=urllib3.Timeout(connect=self._connect_timeout, read=read_timeout),
                redirect=False,  # never follow an answer to another address
                preload_content=False,
            )
            try:
                body = resp.read(MAX_BODY + 1)
            except BaseException:
                resp.close()
                raise
            if len(body) > MAX_BODY:
                resp.close()  # unread bytes stay behind: the connection cannot serve another request
                raise BadListing(f"the S3 answer is larger than {MAX_BODY} bytes")
            resp.release_conn()
        except urllib3.exceptions.SSLError as e:
            raise CerminError(f"TLS with the S3 endpoint failed: {_clean(str(e))}") from None
        except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ProxyError) as e:
            raise Unreachable(_clean(str(e))) from None  # NewConnectionError is a ConnectTimeoutError
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise Broken(_clean(str(e)) or type(e).__name__) from None
        return resp.status, body

    def close(self) -> None:
        self._pool.clear()

    def pages(self, prefix: str | None, read_timeout: float, page_size: int = PAGE_SIZE) -> Iterator[dict]:
        """Every page of the version listing under `prefix` (the whole bucket for None)."""
        base = [("versions", ""), ("encoding-type", "url"), ("max-keys", str(page_size))]
        if prefix:
            base.append(("prefix", prefix))
        marker: tuple[str, str] | None = None
        seen: set[tuple[str, str]] = set()
        while True:
            query = list(base)
            if marker:
                query.append(("key-marker", marker[0]))
                if marker[1]:
                    query.append(("version-id-marker", marker[1]))
            status, body = self._get(query, read_timeout)
            if status != 200:
                code, message = error_code(body)
                raise ErrorAnswer(status, code, message or f"HTTP {status}")
            page = parse_page(body, prefix or "")
            yield page
            if not page["IsTruncated"]:
                return
            nxt = (page["NextKeyMarker"], page["NextVersionIdMarker"])
            # Keys come in ascending order and version ids are opaque: the key marker must not go back
            # and no marker may come twice, or a hostile or broken store would keep us listing forever.
            empty = not (page["Versions"] or page["DeleteMarkers"])
            if empty or nxt in seen or (marker is not None and nxt[0] < marker[0]):
                raise BadListing(f"the S3 version listing under {prefix or '/'!r} does not advance; refused")
            seen.add(nxt)
            marker = nxt


def _ca_bundle() -> str:
    """The CA bundle boto3 would use (certifi's, or botocore's own)."""
    from botocore.httpsession import get_cert_path

    return get_cert_path(True)


def _proxy(url: str) -> str | None:
    """The proxy the environment names for this URL (HTTPS_PROXY / HTTP_PROXY, NO_PROXY), as boto3 honours it."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    proxy = getproxies().get(urlsplit(url).scheme)
    return None if not proxy or proxy_bypass(urlsplit(url).hostname or "") else proxy
