"""backend/s3.py: the S3 backend's behaviour when it is misconfigured: no credentials, nobody listening."""

from __future__ import annotations

import os
import time

from conftest import Cli
from seaweed import free_ports


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CERMIN_", "AWS_"))}
    env.update(extra)
    return env


def test_missing_credentials_fail_at_once_naming_the_variables(tmp_path):
    """Without credentials the S3 libraries would wait on the cloud metadata address: refuse instead."""
    port = free_ports(1)[0]
    cli = Cli(f"s3:http://127.0.0.1:{port}/bucket/repo", _env())
    for args in (("snapshots",), ("init",)):
        t = time.monotonic()
        r = cli(*args, ok=False)
        assert r.returncode == 2, r.stderr
        assert b"AWS_ACCESS_KEY_ID" in r.stderr and b"AWS_SECRET_ACCESS_KEY" in r.stderr
        assert b"169.254" not in r.stderr and b"Traceback" not in r.stderr
        assert time.monotonic() - t < 10


def test_unreachable_endpoint_is_reported_in_seconds(tmp_path):
    port = free_ports(1)[0]  # nothing listens there
    cli = Cli(f"s3:http://127.0.0.1:{port}/bucket/repo", _env(AWS_ACCESS_KEY_ID="a", AWS_SECRET_ACCESS_KEY="b"))
    t = time.monotonic()
    r = cli("snapshots", ok=False)
    assert r.returncode == 1 and b"cannot reach the S3 endpoint" in r.stderr, r.stderr
    assert time.monotonic() - t < 30, "a refused connection must not be retried for minutes"
