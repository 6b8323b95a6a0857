"""backend/s3list.py: the S3 version listing without a boto3 client. Hostile answers from a tiny local
server (loopback) are refused with clear errors, never a traceback or an endless loop; on a real
SeaweedFS it pages, keeps S3's order, sees delete markers, and opening a repository creates no boto3 client."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import PASSWORD, s3_location

from cermin.backend import s3list
from cermin.backend.base import Kind
from cermin.backend.s3 import LockPolicy, S3Backend, S3Credentials, _BadCredential, _NotImplemented
from cermin.errors import AccessDenied, CerminError, ObjectNotFound, TransientError

NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
WHEN = "2026-12-02T04:32:20.000Z"


def version(key: str, vid: str, size: str = "7", when: str = WHEN, latest: str = "true") -> str:
    return (
        f"<Version><Key>{key}</Key><VersionId>{vid}</VersionId><IsLatest>{latest}</IsLatest>"
        f"<LastModified>{when}</LastModified><ETag>&quot;x&quot;</ETag><Size>{size}</Size>"
        "<Owner><ID>o</ID></Owner><StorageClass>STANDARD</StorageClass></Version>"
    )


def marker(key: str, vid: str, latest: str = "true") -> str:
    return (
        f"<DeleteMarker><Key>{key}</Key><VersionId>{vid}</VersionId><IsLatest>{latest}</IsLatest>"
        f"<LastModified>{WHEN}</LastModified></DeleteMarker>"
    )


def listing(*entries: str, truncated: bool = False, key_marker: str | None = None, vid_marker: str | None = None):
    more = f"<NextKeyMarker>{key_marker}</NextKeyMarker>" if key_marker is not None else ""
    more += f"<NextVersionIdMarker>{vid_marker}</NextVersionIdMarker>" if vid_marker is not None else ""
    body = f"<ListVersionsResult {NS}><Name>b</Name><IsTruncated>{str(truncated).lower()}</IsTruncated>{more}"
    return (200, f'<?xml version="1.0" encoding="UTF-8"?>\n{body}{"".join(entries)}</ListVersionsResult>'.encode())


def error(status: int, code: str, message: str = "no") -> tuple[int, bytes]:
    return status, f"<Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()


class FakeS3:
    """A loopback HTTP server answering each request with the next of `answers` (the last one
    repeats) and recording what it was asked."""

    def __init__(self, answers: list[tuple[int, bytes]], delay: float = 0) -> None:
        self.answers, self.delay, self.requests = list(answers), delay, []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append((self.path, dict(self.headers)))
                status, body = fake.answers.pop(0) if len(fake.answers) > 1 else fake.answers[0]
                time.sleep(fake.delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def backend(self, prefix: str = "repo", **kw) -> S3Backend:
        creds = S3Credentials("AKTEST", "secret-key", **kw)
        return S3Backend(f"s3:http://127.0.0.1:{self.server.server_port}/bucket/{prefix}", credentials=creds)

    def query(self, n: int) -> dict:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.requests[n][0]).query, keep_blank_values=True).items()}


@pytest.fixture
def fake():
    servers = []

    def make(*answers, delay: float = 0) -> FakeS3:
        servers.append(FakeS3(list(answers), delay))
        return servers[-1]

    yield make
    for s in servers:
        s.server.shutdown()
        s.server.server_close()


def test_pages_follow_the_markers_signed_and_keep_the_stores_order(fake):
    s = fake(
        listing(
            version("repo/config", "v3"),
            version("repo/config", "v2"),
            truncated=True,
            key_marker="repo/config",
            vid_marker="v2",
        ),
        listing(version("repo/config", "v1", latest="false"), marker("repo/config", "m1", latest="false")),
    )
    b = s.backend(session_token="tok")
    b.list_page_size = 2
    got = b._versions("config")
    assert [(v["id"], v["marker"]) for v in got] == [("v3", False), ("v2", False), ("v1", False), ("m1", True)]
    assert got[0]["size"] == 7 and got[0]["time"].tzinfo is not None and got[0]["time"].year == 2026
    assert len(s.requests) == 2
    first, second = s.query(0), s.query(1)
    assert first == {"versions": "", "encoding-type": "url", "max-keys": "2", "prefix": "repo/config"}
    assert second["key-marker"] == "repo/config" and second["version-id-marker"] == "v2"
    headers = s.requests[0][1]
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKTEST/")
    assert "/us-east-1/s3/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "tok" and "X-Amz-Content-SHA256" in headers
    assert urlsplit(s.requests[0][0]).path == "/bucket"  # path-style
    assert b._boto_client is None


@pytest.mark.parametrize(
    "answers, match",
    [
        ([listing(version("repo/config", "v1"), truncated=True)], "truncated result without NextKeyMarker"),
        (  # the same marker again and again
            [listing(version("repo/config", "v1"), truncated=True, key_marker="repo/config", vid_marker="v1")],
            "does not advance",
        ),
        (  # two markers in turn: each one new to the page before, but a cycle
            [
                listing(version("repo/config", "a"), truncated=True, key_marker="repo/config", vid_marker="a"),
                listing(version("repo/config", "b"), truncated=True, key_marker="repo/config", vid_marker="b"),
            ],
            "does not advance",
        ),
        ([listing(truncated=True, key_marker="repo/z", vid_marker="1")], "does not advance"),  # an empty page
        (  # the key marker goes back
            [
                listing(version("repo/config", "a"), truncated=True, key_marker="repo/z", vid_marker="a"),
                listing(version("repo/config", "b"), truncated=True, key_marker="repo/a", vid_marker="b"),
            ],
            "does not advance",
        ),
        ([listing(version("repo/config", "v1", size="-1"))], "Size '-1'"),
        ([listing(version("repo/config", "v1", size="99999999999999999999999"))], "Size"),
        ([listing(version("repo/config", "v1", size="1e3"))], "Size"),
        ([listing(version("repo/config", "v1", when="yesterday"))], "LastModified 'yesterday'"),
        ([listing(version("repo/config", "v1", when="2026-13-45T99:00:00Z"))], "LastModified"),
        ([listing(version("repo/config", "v1", latest="maybe"))], "IsLatest 'maybe'"),
        ([listing(version("", "v1"))], "without Key"),
        ([listing("<Version><Key>repo/config</Key></Version>")], "without VersionId"),
        ([listing(version("other/config", "v1"))], "outside it"),
        ([(200, b"<ListVersionsResult><Version>")], "not well-formed"),
        ([(200, b"not xml at all")], "not well-formed"),
        ([(200, b"<ListBucketResult/>")], "not a version listing"),
    ],
)
def test_hostile_listings_are_refused_with_a_clear_error(fake, answers, match):
    s = fake(*answers)
    b = s.backend()
    b.list_page_size = 1
    t = time.monotonic()
    with pytest.raises(s3list.BadListing, match=match):
        b._versions("config")
    assert time.monotonic() - t < 5 and len(s.requests) <= 3


def test_entity_declarations_are_refused_before_any_expansion(fake):
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
        '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">'
        '<!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;"><!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">]>'
        f"<ListVersionsResult><IsTruncated>false</IsTruncated>{version('repo/config', '&h;')}</ListVersionsResult>"
    )
    external = (
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        f"<ListVersionsResult>{version('repo/config', '&x;')}</ListVersionsResult>"
    )
    for doc in (laughs, external):
        s = fake((200, doc.encode()))
        with pytest.raises(s3list.BadListing, match="document type"):
            s.backend()._versions("config")
    for doc in (laughs, external):  # in an error answer too: no code is read from it
        assert s3list.error_code(doc.encode()) == ("", "")


def test_an_oversized_answer_is_refused(fake):
    big = (200, b"<ListVersionsResult>" + b" " * (s3list.MAX_BODY + 10) + b"</ListVersionsResult>")
    with pytest.raises(s3list.BadListing, match="larger than"):
        fake(big).backend()._versions("config")
    many = (200, b"<ListVersionsResult>" + b"<a/>" * (s3list.MAX_ELEMENTS + 1) + b"</ListVersionsResult>")
    with pytest.raises(s3list.BadListing, match="elements"):
        fake(many).backend()._versions("config")


@pytest.mark.parametrize(
    "answer, want, text",
    [
        (error(403, "AccessDenied"), AccessDenied, "check the credentials of access key AKTEST"),
        (error(403, "InvalidAccessKeyId"), _BadCredential, "InvalidAccessKeyId"),
        (error(403, "SignatureDoesNotMatch"), _BadCredential, "SignatureDoesNotMatch"),
        (error(501, "NotImplemented"), _NotImplemented, "NotImplemented"),
        (error(503, "SlowDown"), TransientError, "SlowDown"),
        ((500, b"<html>upstream down</html>"), TransientError, "500"),
        (error(404, "NoSuchBucket"), CerminError, "bucket bucket does not exist"),
        (error(400, "InvalidArgument", "bad \u202e red"), CerminError, "bad ? red"),  # no control characters
    ],
)
def test_error_answers_are_sorted_as_boto3_errors_were(fake, answer, want, text):
    b = fake(answer).backend()
    with pytest.raises(CerminError) as e:
        b._pages("repo/config")
    assert type(e.value) is want and text in str(e.value), str(e.value)


def test_a_store_without_versions_and_a_refused_listing(fake):
    b = fake(error(501, "NotImplemented")).backend()
    assert b._first_version(Kind.CONFIG, "config") is None  # a store that keeps no versions
    s = fake(error(403, "AccessDenied"))
    with pytest.raises(AccessDenied, match="s3:ListBucketVersions"):
        s.backend()._first_version(Kind.KEY, "k")  # HEAD is not answered 403: the listing is what is refused


def test_connection_failures_are_transient(fake):
    from seaweed import free_ports

    port = free_ports(1)[0]  # nothing listens there
    b = S3Backend(f"s3:http://127.0.0.1:{port}/bucket/p", credentials=S3Credentials("a", "b"))
    with pytest.raises(TransientError, match="cannot reach the S3 endpoint http://127.0.0.1"):
        b._pages("p/config", probe=True)
    slow = fake(listing(), delay=3).backend()
    lister = slow._listing()
    t = time.monotonic()
    with pytest.raises(s3list.Broken):
        list(lister.pages("repo/config", read_timeout=0.5))
    assert time.monotonic() - t < 2.5
    assert isinstance(slow._wrap(s3list.Broken("read timed out"), "x"), TransientError)


# ---- on a real SeaweedFS ------------------------------------------------------------------------


def _s3_backend(seaweed, bucket: str) -> S3Backend:
    return S3Backend(s3_location(seaweed, bucket, "list"))


def test_listing_pages_like_boto3_with_delete_markers_on_seaweedfs(seaweed):
    b = _s3_backend(seaweed, "locked")
    s3 = seaweed.boto()
    full = b._full_key("snapshots/aa")
    for i in range(5):
        s3.put_object(Bucket="locked", Key=full, Body=b"x" * i)
        if i in (1, 3):
            s3.delete_object(Bucket="locked", Key=full)  # a delete marker
    s3.put_object(Bucket="locked", Key=b._full_key("snapshots/bb"), Body=b"bb")
    listed = s3.list_object_versions(Bucket="locked", Prefix=full)
    want = [(v["VersionId"], False, v["Size"]) for v in listed["Versions"]]
    want += [(m["VersionId"], True, 0) for m in listed["DeleteMarkers"]]
    b.list_page_size = 2  # four requests for one key
    assert [(v["id"], v["marker"], v["size"]) for v in b._versions("snapshots/aa")] == want
    assert [v["size"] for v in b._versions("snapshots/aa") if not v["marker"]] == [4, 3, 2, 1, 0]  # newest first
    assert b.original_version(Kind.SNAPSHOT, "aa") == want[4][0]
    assert b.original_versions(Kind.SNAPSHOT) == {
        "aa": (want[4][0], 5),
        "bb": (b.original_version(Kind.SNAPSHOT, "bb"), 1),
    }
    assert b.list_versions_latest(Kind.SNAPSHOT) == [(full, 0), (b._full_key("snapshots/bb"), 2)]
    assert b.first_written(Kind.SNAPSHOT).keys() == {"aa", "bb"}
    assert b.hidden() == []
    s3.delete_object(Bucket="locked", Key=full)
    assert b.hidden() == [full]
    b.lock = LockPolicy(30)  # a locked repository reads hidden objects
    assert b.load(Kind.SNAPSHOT, "aa") == b"x" * 4  # hidden: the newest real version is read
    assert b._boto_client is None


def test_planted_config_versions_are_ignored_over_several_pages(seaweed):
    b = _s3_backend(seaweed, "locked")
    b.save(Kind.CONFIG, "config", b"the config cermin wrote")
    s3 = seaweed.boto()
    for i in range(3):
        s3.put_object(Bucket="locked", Key=b._full_key("config"), Body=b"planted %d" % i)
    fresh = S3Backend(b.location)
    fresh.list_page_size = 1
    assert fresh.load(Kind.CONFIG, "config") == b"the config cermin wrote"
    assert fresh.planted_config == 3
    assert fresh._boto_client is None


def test_bad_credentials_on_seaweedfs_are_named(seaweed):
    b = S3Backend(s3_location(seaweed, "plain", "list"), credentials=S3Credentials("nobody", "wrong"))
    with pytest.raises(_BadCredential, match="access key nobody"):
        b._pages(b._full_key("config"), probe=True)
    with pytest.raises(ObjectNotFound):
        _s3_backend(seaweed, "plain").original_version(Kind.CONFIG, "config")


def test_opening_backing_up_and_restoring_creates_no_boto3_client(seaweed, tmp_path):
    """The open path (config and key slot first versions), the index, snapshots and a restore: all
    without boto3, in process and in a `cermin` process (which must not even import it)."""
    from helpers import SMALL, assert_same_tree, backup, make_source

    from cermin.engine.restore import RestoreOptions, run_restore
    from cermin.repo.repository import Repository
    from cermin.repo.snapshots import list_snapshots

    location = s3_location(seaweed, "locked", "noboto")
    lock = {"object_lock": {"days": 14, "mode": "compliance", "maintenance_days": 7}}
    Repository.init(S3Backend(location), PASSWORD.encode(), extra=lock, **SMALL)
    src = tmp_path / "src"
    make_source(src, files=3)
    repo = Repository.open(S3Backend(location), PASSWORD.encode())
    repo.load_index()
    backup(repo, src)
    repo = Repository.open(S3Backend(location), PASSWORD.encode())
    repo.load_index()
    (ref,) = list_snapshots(repo)
    run_restore(repo, ref.snapshot, RestoreOptions(target=str(tmp_path / "out"), verify=True, workers=2))
    assert_same_tree(src, tmp_path / "out" / str(src).lstrip("/"))
    assert repo.backend._boto_client is None

    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    env["CERMIN_PASSWORD"] = PASSWORD
    probe = (
        "import sys\nfrom cermin.cli.main import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\nprint('boto3 imported' if 'boto3' in sys.modules else 'no boto3')\n"
    )
    for args in (["snapshots"], ["restore", "latest", "--target", str(tmp_path / "out2")]):
        r = subprocess.run([sys.executable, "-c", probe, "-q", "-r", location, *args], env=env, capture_output=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().splitlines()[-1] == "no boto3", (args, r.stdout, r.stderr)


def test_ambient_credentials_sign_the_listing_too(seaweed, tmp_path, monkeypatch):
    """CERMIN_S3_AMBIENT_CREDENTIALS=1: the listing takes botocore's chain (here a credentials file;
    the instance metadata address is switched off, so nothing leaves loopback)."""
    from seaweed import ACCESS_KEY, SECRET_KEY

    from cermin.errors import UsageError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CERMIN_S3_AMBIENT_CREDENTIALS", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    location = s3_location(seaweed, "plain", "ambient")
    with pytest.raises(UsageError, match="no S3 credentials found"):
        S3Backend(location)._pages("x")
    (tmp_path / "credentials").write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    b = S3Backend(location)
    assert b._versions("config") == [] and b._boto_client is None


def test_concurrent_listings_share_one_pool(seaweed, caplog):
    """Threads listing at once (a locked repository's uploaders ask sizes that way) get the same answer,
    over reused connections, with no pool warning on the console."""
    from concurrent.futures import ThreadPoolExecutor

    b = _s3_backend(seaweed, "plain")
    b.save(Kind.SNAPSHOT, "aa", b"x")
    with ThreadPoolExecutor(16) as ex:
        got = list(ex.map(lambda _: b._versions("snapshots/aa"), range(64)))
    assert len(got[0]) == 1 and all(g == got[0] for g in got)
    assert "pool is full" not in caplog.text
