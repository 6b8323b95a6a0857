"""cli/main.py as a user meets it: global options anywhere, JSON errors, signals, errors that name their object."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import PASSWORD, cermin_exe


def jlines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


@pytest.fixture
def backed_up(initialized_cli, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"data")
    initialized_cli("backup", str(src))
    return initialized_cli, src


def run(env_cli, *args, **kw):
    """`cermin ARGS` without the fixture's leading `-r`: the test places every option itself."""
    e = dict(env_cli.env, CERMIN_PASSWORD=PASSWORD)
    e.update(kw.pop("env", {}))
    if "stdout" not in kw:
        kw["capture_output"] = True
    return subprocess.run(cermin_exe() + list(args), env=e, timeout=120, **kw)


def test_global_options_after_the_command(backed_up):
    cli, src = backed_up
    for args in (
        ["snapshots", "--json", "-r", cli.repo],
        ["snapshots", f"--repo={cli.repo}", "--json"],
        ["-r", cli.repo, "snapshots", "--json"],
        ["snapshots", "-q", "--json", f"-r{cli.repo}"],
    ):
        r = run(cli, *args)
        assert r.returncode == 0, (args, r.stderr)
        lines = jlines(r.stdout)
        assert lines[0]["message_type"] == "snapshots" and len(lines[0]["snapshots"]) == 1
    # nested groups and options with values of the command's own
    r = run(cli, "key", "list", "--json", "-r", cli.repo)
    assert r.returncode == 0 and jlines(r.stdout)[0]["message_type"] == "key"
    r = run(cli, "find", "-s", "latest", "f", "--json", "-r", cli.repo)
    assert r.returncode == 0 and [m["name"] for m in jlines(r.stdout)] == ["f"]
    r = run(cli, "ls", "latest", str(src), "-R", "--json", "-v", "--no-lock", "-r", cli.repo)
    assert r.returncode == 0 and {n["name"] for n in jlines(r.stdout)} == {"sub", "f"}


def test_a_file_named_like_a_global_option_stays_an_argument(initialized_cli, tmp_path, monkeypatch):
    cli = initialized_cli
    work = tmp_path / "w"
    work.mkdir()
    (work / "--json").write_bytes(b"not an option")
    (work / "-q").write_bytes(b"nor this")
    r = run(cli, "backup", "-r", cli.repo, "--", "--json", "-q", cwd=work)
    assert r.returncode == 0, r.stderr
    names = r.stdout.decode()
    assert "snapshot" in names and not names.lstrip().startswith("{"), "--json after -- is a file, not the option"
    found = jlines(cli("--json", "find", "--", "--json").stdout)
    assert [m["name"] for m in found] == ["--json"]
    # a value of the command's own option is never taken for a global one
    r = run(cli, "backup", str(work), "--exclude", "--json", "-r", cli.repo, "--json")
    assert r.returncode == 0
    s = [o for o in jlines(r.stdout) if o["message_type"] == "summary"][0]
    assert s["files_new"] == 1, "only -q was backed up: '--json' was the exclude pattern"


def test_json_errors_are_json_lines(tmp_path, cli):
    cases = [
        (["snapshots", "--json", "-r", str(tmp_path / "none")], 10),  # no repository
        (["--json", "snapshots", "--no-such-option", "-r", str(tmp_path / "none")], 2),  # usage error
        (["snapshots", "-r", str(tmp_path / "none"), "--json", "--latest", "x"], 2),
    ]
    for args, code in cases:
        r = run(cli, *args)
        assert r.returncode == code, (args, r.stderr)
        assert r.stderr == b"", "with --json nothing but JSON lines"
        (line,) = jlines(r.stdout)
        assert line["message_type"] == "error" and line["exit_code"] == code and line["message"]
    r = run(cli, "snapshots", "-r", str(tmp_path / "none"))  # without --json: one text line on stderr
    assert r.returncode == 10 and r.stdout == b""
    assert r.stderr.decode().splitlines() == [
        f"cermin: error: no repository at {tmp_path / 'none'} (run `cermin init`)"
    ]


def test_missing_value_of_a_global_option_is_a_usage_error(cli):
    r = run(cli, "snapshots", "-r")
    assert r.returncode == 2 and b"requires an argument" in r.stderr


def test_full_stdout_names_standard_output(backed_up):
    cli, src = backed_up
    with open("/dev/full", "wb") as full:
        for args in (["dump", "latest", f"{src}/sub/f"], ["snapshots"], ["cat", "config"], ["--json", "snapshots"]):
            r = run(cli, "-r", cli.repo, *args, stdout=full, stderr=subprocess.PIPE)
            assert r.returncode == 1, args
            err = r.stderr.decode()
            assert err.splitlines() == ["cermin: error: cannot write to standard output: No space left on device"], (
                args,
                err,
            )


def _start_slow_backup(cli, tmp_path):
    """A backup that reads from a pipe we never close: it holds its lock until it is signalled."""
    e = dict(cli.env, CERMIN_PASSWORD=PASSWORD)
    p = subprocess.Popen(
        cermin_exe() + ["-r", cli.repo, "backup", "--stdin"],
        # a pytest-xdist worker may ignore SIGINT, and an ignored SIGINT is inherited (Python keeps it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=e,
    )
    p.stdin.write(os.urandom(100_000))
    p.stdin.flush()
    locks = os.path.join(cli.repo, "locks")
    deadline = time.monotonic() + 30
    while not os.listdir(locks):
        assert time.monotonic() < deadline, "the backup never took its lock"
        time.sleep(0.05)
    return p


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_releases_the_lock(initialized_cli, tmp_path, sig, code, word):
    cli = initialized_cli
    p = _start_slow_backup(cli, tmp_path)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert err.decode().strip().splitlines()[-1] == f"cermin: {word}"
    assert "Traceback" not in err.decode()
    assert os.listdir(os.path.join(cli.repo, "locks")) == [], "the lock was released"
    assert cli("snapshots").returncode == 0
