"""End-to-end: the installed `cermin` command, as an operator uses it."""

from __future__ import annotations

import json
import os

from helpers import assert_same_tree, make_rich_tree


def repo_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def jlines(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.decode().splitlines() if line.strip()]


def summary(r) -> dict:
    return [o for o in jlines(r) if o.get("message_type") == "summary"][-1]


def test_full_cycle(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    make_rich_tree(str(src))
    for i in range(50):
        (src / "sub" / f"file{i}.txt").write_bytes(os.urandom(20_000) + b"x" * i)
    first = summary(cli("--json", "backup", str(src), "--tag", "nightly"))
    assert first["files_new"] > 50 and first["errors"] == 0
    size1 = repo_bytes(cli.repo)

    second = summary(cli("--json", "backup", str(src)))
    assert second["files_unmodified"] == first["files_new"] and second["files_new"] == 0
    assert repo_bytes(cli.repo) - size1 < 1024 * 1024, "unchanged re-backup adds less than 1 MiB"
    assert second["parent"] == first["snapshot_id"]

    (src / "sub" / "file7.txt").write_bytes(b"edited")
    (src / "newfile").write_bytes(b"new")
    os.unlink(src / "sub" / "file9.txt")
    third = summary(cli("--json", "backup", str(src)))
    assert third["files_changed"] == 1 and third["files_new"] == 1

    changes = jlines(cli("--json", "diff", first["snapshot_id"][:8], "latest"))
    by_name = {c["path"].rsplit("/", 1)[-1]: c["modifier"] for c in changes if c["message_type"] == "change"}
    assert by_name == {"file7.txt": "M", "newfile": "+", "file9.txt": "-"}
    assert changes[-1]["modified"] == 1 and changes[-1]["added"] == 1 and changes[-1]["removed"] == 1
    text = cli("diff", first["snapshot_id"][:8], "latest").stdout.decode()
    assert f"M    {src}/sub/file7.txt" in text.splitlines()

    snaps = jlines(cli("--json", "snapshots"))[0]["snapshots"]
    assert len(snaps) == 3 and snaps[0]["tags"] == ["nightly"]
    assert len(jlines(cli("--json", "snapshots", "--tag", "nightly"))[0]["snapshots"]) == 1

    # restore all, verified
    out = tmp_path / "all"
    r = summary(cli("--json", "restore", "latest", "--target", str(out), "--verify"))
    assert r["errors"] == 0 and r["files_verified"] > 50
    assert_same_tree(src, out / str(src).lstrip("/"))

    # restore one subtree and one file
    cli("restore", f"latest:{src}/sub", "--target", str(tmp_path / "subtree"))
    assert sorted(os.listdir(tmp_path / "subtree")) == sorted(os.listdir(src / "sub"))
    cli("restore", f"{third['snapshot_id'][:10]}:{src}/plain.txt", "--target", str(tmp_path / "one"))
    assert (tmp_path / "one" / "plain.txt").read_bytes() == (src / "plain.txt").read_bytes()

    # dump, ls, find, cat, stats
    assert cli("dump", "latest", f"{src}/random.bin").stdout == (src / "random.bin").read_bytes()
    listing = cli("ls", "latest", str(src / "sub")).stdout.decode().splitlines()
    assert f"{src}/sub/file7.txt" in listing
    assert "caf\\xe9-not-utf8" in cli("ls", "-R", "latest").stdout.decode()
    found = jlines(cli("--json", "find", "file7.txt"))
    assert {f["snapshot"] for f in found} == {s["id"] for s in snaps}
    assert json.loads(cli("cat", "config").stdout)["version"] == 3
    snap = json.loads(cli("cat", "snapshot", "latest").stdout)
    tree = json.loads(cli("cat", "tree", snap["tree"]).stdout)
    assert tree["nodes"][0]["type"] == "dir"
    st = jlines(cli("--json", "stats", "--mode", "raw"))[0]
    assert st["compression_ratio"] > 1 and st["stored_size"] < st["total_size"]


def test_stdin_backup_and_dump(initialized_cli):
    cli = initialized_cli
    data = os.urandom(1_500_000) + b"-- end of dump --\n"
    s = summary(cli("--json", "backup", "--stdin", "--stdin-filename", "mydb.sql", input=data))
    assert s["files_new"] == 1
    assert cli("dump", s["snapshot_id"][:8], "/mydb.sql").stdout == data


def test_key_commands_and_password_sources(initialized_cli, tmp_path):
    cli = initialized_cli
    newpw = tmp_path / "new"
    newpw.write_text("second password\n")
    cli("key", "add", "--new-password-file", str(newpw))
    keys = jlines(cli("--json", "key", "list"))
    assert len(keys) == 2 and sum(k["current"] for k in keys) == 1
    pwfile = tmp_path / "pwfile"
    pwfile.write_text("second password\n")
    cli("--password-file", str(pwfile), "snapshots", password=None)
    cli("--password-command", f"cat {pwfile}", "snapshots", password=None)
    other = [k["id"] for k in keys if not k["current"]][0]
    r = cli("--password-file", str(pwfile), "key", "remove", other[:8], password=None, ok=False)
    assert r.returncode == 2 and b"in use" in r.stderr
    cli("key", "remove", other[:8])
    assert cli("--password-file", str(pwfile), "snapshots", password=None, ok=False).returncode == 12


def test_objects_never_rewritten(initialized_cli, tmp_path):
    """Backups, restores and listing only ever add files to the repository; none changes."""
    import hashlib

    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "a").write_bytes(os.urandom(300_000))

    def state():
        out = {}
        for d, _, fs in os.walk(cli.repo):
            for f in fs:
                p = os.path.join(d, f)
                st = os.stat(p)
                out[p] = (hashlib.sha256(open(p, "rb").read()).hexdigest(), st.st_mtime_ns, st.st_ino)
        return out

    cli("backup", str(src))
    before = state()
    (src / "b").write_bytes(os.urandom(300_000))
    cli("backup", str(src))
    cli("restore", "latest", "--target", str(tmp_path / "out"))
    cli("snapshots")
    after = state()
    assert all(after.get(p) == v for p, v in before.items()), "an existing object changed"
    assert len(after) > len(before)
    assert not [p for p in after if "/locks/" in p], "locks are released"


def test_maintenance_cycle(initialized_cli, tmp_path):
    """check, forget with a policy, prune plan then prune, stats modes, repair — through the command."""
    cli = initialized_cli
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "common").write_bytes(os.urandom(300_000))  # in every snapshot: deduplicated
    for i in range(4):
        if i:
            os.unlink(src / f"gen{i - 1}")  # each generation replaces the previous one
        (src / f"gen{i}").write_bytes(os.urandom(400_000))
        cli("backup", str(src), "--tag", f"g{i}")
    r = jlines(cli("--json", "check", "--read-data"))
    assert r[-1]["ok"] is True and r[-1]["snapshots"] == 4 and r[-1]["packs_read"] > 0

    dry = jlines(cli("--json", "forget", "--keep-last", "2", "--keep-tag", "g0", "--dry-run"))
    group = [o for o in dry if o["message_type"] == "forget_group"][0]
    assert len(group["keep"]) == 3 and len(group["remove"]) == 1
    assert len(jlines(cli("--json", "snapshots"))[0]["snapshots"]) == 4, "dry run removes nothing"
    cli("forget", "--keep-last", "2")
    assert len(jlines(cli("--json", "snapshots"))[0]["snapshots"]) == 2

    plan = jlines(cli("--json", "prune", "--dry-run"))[0]
    assert plan["message_type"] == "prune_plan" and plan["unused_bytes"] > 0
    before = repo_bytes(cli.repo)
    out = jlines(cli("--json", "prune", "--max-unused", "0%"))
    assert out[-1]["packs_deleted"] >= 1
    assert repo_bytes(cli.repo) < before - 700_000, "the data only the forgotten snapshots used is gone"
    assert jlines(cli("--json", "check", "--read-data"))[-1]["ok"] is True
    restored = tmp_path / "out"
    cli("restore", "latest", "--target", str(restored), "--verify")
    assert (restored / str(src).lstrip("/") / "gen3").read_bytes() == (src / "gen3").read_bytes()

    st = jlines(cli("--json", "stats", "--mode", "dedup"))[0]
    assert st["dedup_ratio"] > 1.0 and st["restore_size"] > st["total_size"]
    assert jlines(cli("--json", "stats", "--mode", "raw"))[0]["blobs"] > 0

    # damage one pack: check exits 1 naming it; repair sequence brings a clean check back
    pack = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(cli.repo, "data")) for f in fs)[0]
    os.unlink(pack)
    r = cli("check", ok=False)
    assert r.returncode == 1 and os.path.basename(pack)[:12].encode() in r.stdout
    assert b"check found" in r.stderr and b"Traceback" not in r.stderr
    cli("repair", "packs")
    cli("repair", "index")
    cli("repair", "snapshots", "--forget")
    assert cli("check", "--read-data").returncode == 0


def test_diff_reports_retargeted_symlink(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    os.symlink("aaa", src / "l")
    cli("backup", str(src))
    os.unlink(src / "l")
    os.symlink("bbb", src / "l")
    cli("backup", str(src))
    snaps = jlines(cli("--json", "snapshots"))[0]["snapshots"]
    changes = [
        c for c in jlines(cli("--json", "diff", snaps[0]["id"], snaps[1]["id"])) if c["message_type"] == "change"
    ]
    assert [(c["path"].rsplit("/", 1)[1], c["modifier"]) for c in changes] == [("l", "M")]


def test_readme_states_the_python_and_venv_requirement():
    """The README's first commands work only in a virtual environment on Python >= the declared minimum."""
    import re
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        needed = tomllib.load(f)["project"]["requires-python"]
    readme = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    head = readme.split("# cermin", 1)[0]
    assert head.splitlines()[1].startswith("pip install . && ")
    test_command = (
        "apt-get update && apt-get install -y postgresql chromium libpangoft2-1.0-0"
        " && pip install '.[test]' && python -m pytest -n auto"
    )
    assert head.splitlines()[2].startswith(test_command + " ")
    with open(os.path.join(root, ".ci", "run"), encoding="utf-8") as f:
        assert f.read().rstrip().splitlines()[-1] == test_command  # CI runs exactly the README's command
    said = re.search(r"Python (>=|≥) ?(3\.\d+)", head)
    assert said and needed == f">={said.group(2)}", (needed, said)
    assert "python3 -m venv" in head and "externally-managed-environment" in head
