"""Shared fixtures: the installed `cermin` command, repositories, source trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cermin.backend.local import LocalBackend  # noqa: E402
from cermin.backend.memory import MemoryBackend  # noqa: E402
from cermin.format.crypto import KdfParams  # noqa: E402
from cermin.repo.repository import Repository  # noqa: E402

FAST_KDF = KdfParams(memory_kib=1024, iterations=1, lanes=1)
PASSWORD = "correct horse battery staple"


def cermin_exe() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "cermin")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("cermin")
    assert found, "the cermin command is not installed (pip install .)"
    return [found]


class Cli:
    def __init__(self, repo: str, env: dict) -> None:
        self.repo = repo
        self.env = env

    def __call__(self, *args, input=None, ok=True, env=None, password=PASSWORD, timeout=600, **kw):
        e = dict(self.env)
        if password is not None:
            e["CERMIN_PASSWORD"] = password
        else:
            e.pop("CERMIN_PASSWORD", None)
        e.update(env or {})
        r = subprocess.run(
            cermin_exe() + ["-r", self.repo, *args],
            input=input,
            capture_output=True,
            env=e,
            timeout=timeout,
            **kw,
        )
        if ok and r.returncode != 0:
            raise AssertionError(
                f"cermin {' '.join(map(str, args))} exited {r.returncode}: {r.stderr.decode()[-2000:]}"
            )
        return r


@pytest.fixture
def cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    return Cli(str(tmp_path / "repo"), env)


@pytest.fixture
def initialized_cli(cli):
    cli("init")
    return cli


@pytest.fixture
def mem_repo():
    return Repository.init(MemoryBackend(), PASSWORD.encode(), kdf=FAST_KDF)


@pytest.fixture
def local_repo(tmp_path):
    repo = Repository.init(LocalBackend(str(tmp_path / "repo")), PASSWORD.encode(), kdf=FAST_KDF)
    return repo


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache directory (key-slot choice, pack cache) of the test's own."""
    monkeypatch.setenv("CERMIN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def hostile(local_repo):
    """Writes hostile trees and snapshots into local_repo (helpers.Hostile)."""
    from helpers import Hostile

    return Hostile(local_repo)


def reopen(repo: Repository) -> Repository:
    r = Repository.open(repo.backend, PASSWORD.encode())
    r.load_index()
    return r


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """One real SeaweedFS for the session (loopback only), with a plain and an Object Lock bucket."""
    from seaweed import ACCESS_KEY, SECRET_KEY, Weed

    w = Weed(str(tmp_path_factory.mktemp("seaweed"))).start()
    c = w.boto()
    c.create_bucket(Bucket="plain")
    c.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ACCESS_KEY, SECRET_KEY
    yield w
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    w.stop()


def s3_location(seaweed, bucket: str, name: str) -> str:
    import uuid

    return f"s3:{seaweed.endpoint}/{bucket}/{name}-{uuid.uuid4().hex[:8]}"


class ServeProcess:
    """A real `cermin serve` process on a free loopback port."""

    def __init__(self, root: str, window: int = 3600, *extra: str) -> None:
        import socket
        import time

        self.root = root
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
        listen = ["--listen", f"127.0.0.1:{self.port}", "--approval-window", str(window)]
        self.proc = subprocess.Popen(
            cermin_exe() + ["serve", "--root", root, *listen, *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.proc.stderr.read().decode()) from None
                time.sleep(0.1)
        raise RuntimeError("cermin serve did not start")

    def url(self, tenant: str) -> str:
        return f"http://127.0.0.1:{self.port}/{tenant}"

    def token(self, tenant: str, role: str) -> str:
        r = subprocess.run(
            cermin_exe() + ["serve", "--root", self.root, "token", "add", "--tenant", tenant, "--role", role],
            capture_output=True,
            check=True,
        )
        return r.stdout.decode().strip()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    srv = ServeProcess(str(tmp_path_factory.mktemp("serve")))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 15 for the session (one per xdist worker), loopback only (tests/postgres.py)."""
    from postgres import Postgres

    pg = Postgres().start()
    yield pg
    pg.stop()
