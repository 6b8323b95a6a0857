"""ops/demo.py and `cermin demo` (the README's first command): a demo fleet built in seconds, with the systems
that are covered and those that are not — and why — on purpose; the attack caught by the guard; one drill;
the tenant's own mirror; reused on a second run, refused on a foreign directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest
from conftest import FAST_KDF, cermin_exe

from cermin.backend.local import LocalBackend
from cermin.ops.config import load_config
from cermin.ops.demo import ATTACKED, COVERED, DemoError, build_demo
from cermin.ops.state import StateStore
from cermin.repo.repository import Repository
from cermin.repo.snapshots import list_snapshots

SYSTEMS = {
    "imigrasi/paspor",
    "imigrasi/portal",
    "dukcapil/berkas",
    "dukcapil/antrian",
    "bapenda/kasir",
    "bapenda/intranet",
    "arsip/katalog",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "fleet"
    said: list[str] = []
    t0 = time.monotonic()
    fleet = build_demo(str(root), progress=said.append, kdf=FAST_KDF)
    return fleet, said, time.monotonic() - t0


def _store(fleet) -> StateStore:
    return StateStore.open(fleet.state_url, upgrade=False)


def test_the_fleet_is_built_in_seconds_with_its_gaps_on_purpose(demo):
    fleet, said, seconds = demo
    assert seconds < 60, f"the demo took {seconds:.0f} s"
    assert fleet.built and not any("UNEXPECTED" in line for line in said), said
    status = {s.id: s for s in fleet.status}
    assert set(status) == SYSTEMS
    assert [s.id for s in fleet.covered] == [COVERED]
    assert {s.system.tenant for s in fleet.status} == {"imigrasi", "dukcapil", "bapenda", "arsip"}
    assert {s.system.policy for s in fleet.status} == {"strategis", "tinggi", "rendah"}
    alarm = status[ATTACKED].open_alarms[0].snapshot_id
    assert {k: s.reasons for k, s in status.items() if not s.meets_class} == {
        "dukcapil/berkas": ["never drilled", f"1 open guard alarm (snapshot {alarm[:8]})"],
        "dukcapil/antrian": ["no backup yet", "never drilled"],
        "bapenda/kasir": ["no immutable copy yet", "never drilled"],
        "imigrasi/portal": ["never drilled"],
        "bapenda/intranet": ["never drilled"],
        "arsip/katalog": ["never drilled"],
    }
    paspor = status[COVERED]
    assert set(paspor.copies) == {"primary", "immutable", "mirror"} and all(c.fresh for c in paspor.copies.values())
    # why the two broken ones fail, in their runs
    kasir = status["bapenda/kasir"].last_runs[("mirror", "immutable")]
    assert kasir.status == "failed" and "no repository at" in kasir.error and "offsite" in kasir.error
    antrian = status["dukcapil/antrian"].last_runs[("backup", "primary")]
    assert antrian.status == "failed" and "antrian.db is not a file" in antrian.error
    text = "\n".join(fleet.summary())
    assert "1 of 7 systems meet their class now; 6 do not." in text
    assert "antrian.db is not a file" in text and "open guard alarm" in text
    # the embedded classes: the configuration defines none of its own
    cfg = load_config(fleet.config_path)
    assert {s.policy.name for s in cfg.systems} == {"strategis", "tinggi", "rendah"}
    assert "[classes" not in open(fleet.config_path, encoding="utf-8").read()


def test_the_attack_is_caught_by_the_guard(demo):
    fleet = demo[0]
    with _store(fleet) as store:
        snaps = store.snapshots(ATTACKED, copy="primary")
        assert [s.verdict for s in snaps] == ["infected", "clean"]
        alarms = store.alarms(open_only=True)
        assert [(a.system_id, a.verdict, a.snapshot_id) for a in alarms] == [
            (ATTACKED, "infected", snaps[0].snapshot_id)
        ]
        assert any("ransom note" in r for r in alarms[0].reasons)
    share = os.path.join(fleet.root, "data", "dukcapil", "berkas", "share")
    names = [f for _, _, fs in os.walk(share) for f in fs]
    assert names.count("README_DECRYPT.txt") == 5 and sum(f.endswith(".lockbit") for f in names) >= 10


def test_exactly_one_drill_and_it_passed(demo):
    fleet = demo[0]
    with _store(fleet) as store:
        drills = store.drills()
        assert [(d.system_id, d.verdict) for d in drills] == [(COVERED, "pass")]
        assert drills[0].rto_measured_s < drills[0].rto_target_s
        verified = {(r.system_id, r.copy) for r in store.runs(kind="verify") if r.status == "ok"}
    assert (COVERED, "mirror") in verified and ("arsip/katalog", "primary") in verified
    reports = os.listdir(os.path.join(fleet.root, "agent", "reports"))
    assert len([r for r in reports if r.endswith(".json")]) == 1


def test_the_tenant_mirror_holds_the_copy_under_its_own_password(demo):
    fleet = demo[0]
    secrets = os.path.join(fleet.root, "secrets")

    def password(name):
        with open(os.path.join(secrets, f"{name}.password")) as f:
            return f.read().strip().encode()

    assert password("imigrasi-own") != password("imigrasi")
    own = Repository.open(LocalBackend(os.path.join(fleet.root, "repos", "imigrasi-own")), password("imigrasi-own"))
    snaps = list_snapshots(own)
    assert sorted(t for s in snaps for t in s.snapshot.tags if t.startswith("source=")) == [
        "source=berkas",
        "source=permohonan",
    ]
    assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o700
    for name in os.listdir(secrets):
        assert stat.S_IMODE(os.stat(os.path.join(secrets, name)).st_mode) == 0o600


def test_an_earlier_demo_is_reused_and_a_foreign_directory_refused(demo, tmp_path):
    fleet = demo[0]
    again = build_demo(fleet.root, progress=None, kdf=FAST_KDF)
    assert not again.built and {s.id for s in again.status} == SYSTEMS
    assert "reused" in again.summary()[0]
    (tmp_path / "mine.txt").write_text("not a demo")
    for reset in (False, True):
        with pytest.raises(DemoError, match="not empty and holds no cermin demo"):
            build_demo(str(tmp_path), progress=None, reset=reset)
    assert (tmp_path / "mine.txt").read_text() == "not a demo"


def test_cermin_demo_no_serve_builds_then_reuses(tmp_path):
    """The README's command without the dashboard, as CI runs it; a second run reuses the fleet, --reset rebuilds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    where = str(tmp_path / "cermin-demo")

    def run(*args):
        r = subprocess.run(cermin_exe() + ["demo", *args], env=env, capture_output=True, timeout=300, cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout.decode(), r.stderr.decode()

    out, err = run("--no-serve")  # the default directory: ./cermin-demo
    assert os.path.isfile(os.path.join(where, "cermin-demo.json"))
    assert "1 of 7 systems meet their class now; 6 do not." in out and "Not covered, and why:" in out
    assert "ransomware attack on the file share of dukcapil/berkas" in err and "UNEXPECTED" not in err
    out, _ = run(where, "--no-serve")
    assert "reused" in out and "1 of 7 systems meet their class now" in out
    out, _ = run("--json", where, "--no-serve", "--reset")
    got = json.loads(out.splitlines()[-1])
    assert got["message_type"] == "demo_fleet" and got["built"] and got["covered"] == [COVERED]
    assert set(got["not_covered"]) == SYSTEMS - {COVERED}


def test_the_readme_starts_with_cermin_demo():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    first = readme.split("# cermin", 1)[0].splitlines()[1]
    assert first.startswith("pip install . && cermin demo ") and "127.0.0.1:8080" in first


def _get(url: str, cookies: dict | None = None, data: dict | None = None):
    """(status, location, body, cookies set) of one request, redirects not followed."""
    import urllib.error
    import urllib.parse
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode() if data else None)
    if cookies:
        req.add_header("Cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
    try:
        r = urllib.request.build_opener(NoRedirect).open(req, timeout=30)
    except urllib.error.HTTPError as e:
        r = e
    got = {}
    for h in r.headers.get_all("Set-Cookie") or []:
        k, _, v = h.split(";", 1)[0].partition("=")
        got[k.strip()] = v.strip()
    return r.status, r.headers.get("Location"), r.read().decode(), got


def test_cermin_demo_serves_the_dashboard_and_stops_on_sigterm(demo):
    """The README's command: the fleet built earlier is served on 127.0.0.1, the printed login works and the
    first page says how many systems are covered and why the others are not; SIGTERM stops it."""
    import re
    import signal

    fleet = demo[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERMIN_")}
    proc = subprocess.Popen(
        cermin_exe() + ["demo", fleet.root, "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"cermin demo ended: {proc.wait()} {proc.stderr.read()}"
            lines.append(line)
            m = re.match(r"Dashboard: (http://127\.0\.0\.1:(\d+)/)  login: admin (/ (\S+)|\(its password)", line)
            if m:
                break
        assert m, lines
        base = m.group(1)
        with open(os.path.join(fleet.root, "admin.password")) as f:
            password = f.read().strip()
        assert m.group(4) in (None, password)  # printed when made, then found in the file
        assert stat.S_IMODE(os.stat(os.path.join(fleet.root, "admin.password")).st_mode) == 0o600
        status, where, _, _ = _get(base)  # the socket listens before the address is printed
        assert status == 303 and where.endswith("/login")
        _, _, page, cookies = _get(base + "login")
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page).group(1)
        status, where, _, got = _get(
            base + "login", cookies, {"csrf_token": csrf, "next": "/", "name": "admin", "password": password}
        )
        assert status == 303, status
        status, _, page, _ = _get(base, {**cookies, **got})
        assert status == 200 and "1 of 7 systems meet" in page
        assert "open guard alarm" in page and "never drilled" in page
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code in (0, 143), proc.stderr.read()


def test_the_next_free_port_the_logins_made_once_and_loopback_only(demo):
    import socket

    from cermin.cli.cmd_demo import _parse_listen, _users, bind_free
    from cermin.errors import UsageError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        sock = bind_free("127.0.0.1", port)
        assert sock.getsockname()[1] > port
        sock.close()
    finally:
        taken.close()
    fleet = demo[0]
    _users(fleet)
    assert _users(fleet) == {"admin": None, "staf-dukcapil": None}  # made once; the passwords stay in their files
    with open(os.path.join(fleet.root, "staf-dukcapil.password")) as f:
        assert len(f.read().strip()) >= 12
    assert _parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(UsageError, match="loopback"):
        _parse_listen("0.0.0.0:8080")


def test_an_interrupted_build_is_built_again(tmp_path):
    from cermin.ops.demo import MARKER

    root = tmp_path / "fleet"
    root.mkdir()
    (root / MARKER).write_text(json.dumps({"format": 1, "state": "building"}))
    (root / "half-made").write_text("left by a build that was stopped")
    fleet = build_demo(str(root), progress=None, kdf=FAST_KDF)
    assert fleet.built and not (root / "half-made").exists()
    assert json.loads((root / MARKER).read_text())["state"] == "ready"
