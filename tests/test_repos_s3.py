"""ops/repos.py + backend/s3.py: each configured S3 repository uses its env_file's own identity (explicit
`S3Credentials`), so one process opens many tenants' repositories; the process environment is never touched.
On a real SeaweedFS with two identities, each allowed only its own bucket."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import msgspec
import pytest
from conftest import FAST_KDF, PASSWORD
from helpers import do_backup
from seaweed import Weed, bucket_identity

from cermin.backend import open_backend
from cermin.backend.s3 import S3Credentials
from cermin.errors import AccessDenied
from cermin.ops.config import ConfigError, parse_config
from cermin.ops.repos import config_backend, open_config_repo
from cermin.ops.sources import backup_system
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots

A = S3Credentials("tenant-a-key", "tenant-a-secret-0123456789")
B = S3Credentials("tenant-b-key", "tenant-b-secret-0123456789")
WRONG_SECRET = "not-the-secret-of-b-0123456789"


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    """A SeaweedFS of this module's own: identity A may use only bucket tenant-a, B only tenant-b
    (an Object Lock bucket, like a tenant's immutable tier)."""
    w = Weed(
        str(tmp_path_factory.mktemp("weed-tenants")),
        identities=[
            bucket_identity("tenant-a", A.access_key_id, A.secret_access_key, "tenant-a"),
            bucket_identity("tenant-b", B.access_key_id, B.secret_access_key, "tenant-b"),
        ],
    ).start()
    try:
        admin = w.boto()
        admin.create_bucket(Bucket="tenant-a")
        admin.create_bucket(Bucket="tenant-b", ObjectLockEnabledForBucket=True)
        yield w
    finally:
        w.stop()


@pytest.fixture
def no_aws_env(monkeypatch):
    """No S3 credential in the environment (the session's `seaweed` fixture may have put one there):
    whatever works below works with the env_files' credentials alone."""
    for k in [k for k in os.environ if k.startswith("AWS_")] + ["CERMIN_S3_AMBIENT_CREDENTIALS"]:
        monkeypatch.delenv(k, raising=False)


def aws_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


def env_file(path, creds: S3Credentials, secret: str | None = None) -> str:
    path.write_text(
        f"# {creds.access_key_id}\nexport AWS_ACCESS_KEY_ID={creds.access_key_id}\n"
        f"AWS_SECRET_ACCESS_KEY='{secret or creds.secret_access_key}'\n"
    )
    return str(path)


def tenants_config(tmp_path, endpoint: str):
    """Two tenants' repositories (and two broken entries) in one agent configuration."""
    pw = tmp_path / "repo.pw"
    pw.write_text(PASSWORD + "\n")
    a_env = env_file(tmp_path / "a.env", A)
    b_env = env_file(tmp_path / "b.env", B)
    wrong = env_file(tmp_path / "wrong.env", B, secret=WRONG_SECRET)
    url_a = f"s3:{endpoint}/tenant-a/acme"
    url_b = f"s3:{endpoint}/tenant-b/globex"
    text = f"""
[repositories.a]
url = "{url_a}"
password_file = "{pw}"
env_file = "{a_env}"

[repositories.b]
url = "{url_b}"
password_file = "{pw}"
env_file = "{b_env}"

[repositories.b_wrong_secret]
url = "{url_b}"
password_file = "{pw}"
env_file = "{wrong}"

[repositories.b_with_a_keys]
url = "{url_b}"
password_file = "{pw}"
env_file = "{a_env}"

[tenants.acme.systems.app]
class = "rendah"
primary = "a"
[[tenants.acme.systems.app.sources]]
type = "paths"
paths = ["{tmp_path / "acme"}"]

[tenants.globex.systems.app]
class = "rendah"
primary = "b"
[[tenants.globex.systems.app.sources]]
type = "paths"
paths = ["{tmp_path / "globex"}"]
"""
    return parse_config(text.encode(), str(tmp_path / "cermin.toml"), environ={}), url_a, url_b


def test_two_tenants_with_their_own_s3_identities_in_one_process(weed, tmp_path, no_aws_env, own_cache):
    assert aws_env() == {}
    cfg, url_a, url_b = tenants_config(tmp_path, weed.endpoint)
    Repository.init(open_backend(url_a, credentials=A), PASSWORD.encode(), kdf=FAST_KDF)
    lock = {"object_lock": {"days": 14, "mode": "compliance", "maintenance_days": 7}}
    Repository.init(open_backend(url_b, credentials=B), PASSWORD.encode(), kdf=FAST_KDF, extra=lock)

    repo_a = open_config_repo(cfg, "a")
    repo_b = open_config_repo(cfg, "b")  # both open at once, each with its own identity
    assert repo_b.backend.inner.lock is not None  # the immutable one writes with Object Lock
    for tenant in ("acme", "globex"):
        (tmp_path / tenant).mkdir()
        (tmp_path / tenant / "data.txt").write_text(f"{tenant} data\n" * 1000)
    with ThreadPoolExecutor(2) as pool:  # at the same time, as the agent's workers do
        system = {s.id: s for s in cfg.systems}
        runs = [
            pool.submit(backup_system, repo_a, system["acme/app"]),
            pool.submit(backup_system, repo_b, system["globex/app"]),
        ]
        results = [r.result() for r in runs]
    assert all(r.ok for r in results), [r.errors for r in results]
    ids = [r.sources[0].summary.snapshot_id for r in results]
    for name, tenant, sid in (("a", "acme", ids[0]), ("b", "globex", ids[1])):
        (ref,) = list_snapshots(open_config_repo(cfg, name))
        assert ref.id == sid and ref.snapshot.paths == [os.fsencode(str(tmp_path / tenant))]

    # A wrong secret for b: one clear line (never the secret), and a and b go on working.
    with pytest.raises(AccessDenied) as e:
        open_config_repo(cfg, "b_wrong_secret")
    msg = str(e.value)
    assert "\n" not in msg and "check the credentials of access key tenant-b-key" in msg, msg
    assert "SignatureDoesNotMatch" in msg
    assert WRONG_SECRET not in msg and B.secret_access_key not in msg
    # each identity may touch its own bucket only
    with pytest.raises(Exception, match="AccessDenied"):
        weed.boto(B.access_key_id, B.secret_access_key).list_objects_v2(Bucket="tenant-a")
    with pytest.raises(AccessDenied, match="S3 refused access") as e:
        open_config_repo(cfg, "b_with_a_keys")
    msg = str(e.value)
    assert "\n" not in msg and "access key tenant-a-key" in msg and A.secret_access_key not in msg, msg

    assert do_backup(repo_a, str(tmp_path / "acme"), workers=2).snapshot_id
    assert do_backup(repo_b, str(tmp_path / "globex"), workers=2).snapshot_id
    assert len(list_snapshots(open_config_repo(cfg, "a"))) == 2
    assert len(list_snapshots(open_config_repo(cfg, "b"))) == 2
    # b's objects carry b's Object Lock (boto3 and obstore both signed with b's identity)
    admin = weed.boto()
    key = admin.list_objects_v2(Bucket="tenant-b", Prefix="globex/snapshots/")["Contents"][0]["Key"]
    assert admin.get_object_retention(Bucket="tenant-b", Key=key)["Retention"]["Mode"] == "COMPLIANCE"
    assert aws_env() == {}, "the env_files' credentials must not reach the process environment"


def test_credentials_never_show_their_secret():
    c = S3Credentials("AKIAEXAMPLE", "wJalrXUtnFEMI-secret", session_token="FwoGZX-token", region="eu-west-1")
    for text in (repr(c), str(c), f"{c}", repr([c]), repr({"c": c})):
        assert "wJalrXUtnFEMI-secret" not in text and "FwoGZX-token" not in text
        assert "AKIAEXAMPLE" in text and "<hidden>" in text
    assert c == S3Credentials("AKIAEXAMPLE", "wJalrXUtnFEMI-secret", "FwoGZX-token", "eu-west-1")
    with pytest.raises(Exception, match="secret access key"):
        S3Credentials("AKIAEXAMPLE", "")
    with pytest.raises(Exception, match="not an s3: location"):
        open_backend("/tmp/x", credentials=c)


def test_env_file_credentials_are_the_backends_own(tmp_path, no_aws_env, monkeypatch):
    """No request is made here: what the driver is given, and what a broken env_file is told."""
    cfg, _, _ = tenants_config(tmp_path, "http://127.0.0.1:9")
    entry = cfg.repositories["a"]
    backend = config_backend(entry, "a").inner
    assert backend._creds == A and backend.region == "us-east-1"
    assert aws_env() == {}

    def broken(text: str) -> str:
        f = tmp_path / "broken.env"
        f.write_text(text)
        with pytest.raises(ConfigError) as e:
            config_backend(msgspec.structs.replace(entry, env_file=str(f)), "a")
        assert "hush-hush" not in str(e.value)
        return str(e.value)

    assert broken("AWS_ACCESS_KEY_ID=k\n# no secret\n") == (
        f"{tmp_path}/broken.env:1: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is missing (repository a)"
    )
    assert broken("\nAWS_SECRET_ACCESS_KEY=hush-hush\n") == (
        f"{tmp_path}/broken.env:2: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is missing (repository a)"
    )
    assert broken("AWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=\n") == (
        f"{tmp_path}/broken.env:2: AWS_SECRET_ACCESS_KEY is empty (repository a)"
    )
    assert "AWS_SESSION_TOKEN is set" in broken("AWS_SESSION_TOKEN=hush-hush\n")
    assert "neither this file nor the environment" in broken("AWS_REGION=eu-west-1\n")

    # A region and a session token of its own
    f = tmp_path / "full.env"
    f.write_text("AWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=s\nAWS_SESSION_TOKEN=t\nAWS_REGION=eu-west-1\n")
    backend = config_backend(msgspec.structs.replace(entry, env_file=str(f)), "a").inner
    assert backend._creds == S3Credentials("k", "s", "t", "eu-west-1") and backend.region == "eu-west-1"
    f.write_text("AWS_ACCESS_KEY_ID=k\nAWS_SECRET_ACCESS_KEY=s\nAWS_SESSION_TOKEN=\nAWS_REGION=\n")  # empty: unset
    backend = config_backend(msgspec.structs.replace(entry, env_file=str(f)), "a").inner
    assert backend._creds == S3Credentials("k", "s") and backend.region == "us-east-1"
    # Only a region: the environment's keys, in that region (the environment is not changed)
    f.write_text("AWS_REGION=eu-west-1\n")
    environ = {"AWS_ACCESS_KEY_ID": "ek", "AWS_SECRET_ACCESS_KEY": "es"}
    backend = config_backend(msgspec.structs.replace(entry, env_file=str(f)), "a", environ).inner
    assert backend._creds == S3Credentials("ek", "es", region="eu-west-1") and backend.region == "eu-west-1"
    # No AWS_* line at all: the driver reads the process environment, as the command line does
    f.write_text("OTHER=1\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "pk")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ps")
    backend = config_backend(msgspec.structs.replace(entry, env_file=str(f)), "a").inner
    assert backend._creds is None and backend._store().config["access_key_id"] == "pk"
