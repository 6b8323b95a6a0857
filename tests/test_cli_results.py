"""What a command prints as a new user reads it (issue 15): readable forget groups, dry runs that say
so, backup text with tree blobs, plurals, -q keeping the answer and dropping chatter, dump of a
directory. The CLI only renders the engine's results: cli/*.py, engine/results.py."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile


def lines(r, stream="stdout") -> list[str]:
    return getattr(r, stream).decode().splitlines()


def jl(r) -> list[dict]:
    return [json.loads(x) for x in lines(r)]


def two_snapshots(cli, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a").write_bytes(os.urandom(50_000))
    (src / "b").write_bytes(os.urandom(50_000))
    cli("backup", str(src), "--tag", "t1")
    (src / "b").unlink()
    cli("backup", str(src), "--tag", "t1")
    return src


def test_forget_prints_readable_groups_and_says_dry_run(initialized_cli, tmp_path):
    cli = initialized_cli
    src = two_snapshots(cli, tmp_path)
    r = cli("forget", "--keep-last", "1", "--dry-run", "--group-by", "host,paths,tags")
    out = r.stdout.decode()
    assert "{'" not in out and "('" not in out, "no Python repr"
    group = [ln for ln in lines(r) if ln.startswith("group ")]
    assert group == [f"group host {os.uname().nodename}, paths {src}, tags t1: keep 1, remove 1"]
    assert "dry run" in lines(r)[0] and lines(r)[-1] == "dry run: would remove 1 snapshot"
    assert len(jl(cli("--json", "snapshots"))[0]["snapshots"]) == 2
    ids = jl(cli("--json", "snapshots"))[0]["snapshots"]
    r = cli("forget", ids[0]["id"][:8], "--dry-run")
    assert lines(r) == [
        "dry run: nothing is removed",
        f"would remove {ids[0]['short_id']}",
        "dry run: would remove 1 snapshot",
    ]
    r = cli("forget", "--keep-last", "1")
    assert "dry run" not in r.stdout.decode() and lines(r)[-1] == "removed 1 snapshot"


def test_backup_text_counts_tree_blobs_and_uses_plurals(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    src.mkdir()
    (src / "only").write_bytes(b"x" * 100)
    r = cli("backup", str(src))
    s = jl(cli("--json", "backup", str(src), "--dry-run", "--parent", "latest"))[-1]
    text = r.stdout.decode()
    added = [ln for ln in lines(r) if ln.startswith("Added to the repository")][0]
    m = re.search(r"(\d+) data blobs?, (\d+) tree blobs?, (\d+) packs?\)", added)
    assert m, added
    summary = json.loads(cli("cat", "snapshot", "latest").stdout)["summary"]
    assert int(m.group(2)) == summary["tree_blobs_added"] >= 1, "the tree blobs the JSON counts are in the text too"
    assert int(m.group(1)) == summary["data_blobs_added"] == 1 and "1 data blob," in added
    assert "processed 1 file," in text
    # Nothing new in a re-run but the trees of ancestors (/tmp...) that other processes changed
    # meanwhile: the virtual directories above a backup path are taken as they are now.
    assert s["data_blobs"] == 0 and s["files_unmodified"] == 1 and s["bytes_read"] == 0
    assert s["tree_blobs"] < len(src.parts)
    assert not re.search(r"\b1 (files|packs|blobs|snapshots)\b|\(s\)", text)
    assert lines(cli("snapshots"))[-1] == "1 snapshot"
    assert lines(cli("unlock"))[-1] == "removed 0 locks"


def test_quiet_keeps_answers_and_drops_chatter(initialized_cli, tmp_path):
    cli = initialized_cli
    two_snapshots(cli, tmp_path)
    # forget: the decisions are the answer, the count is chatter
    r = cli("-q", "forget", "--keep-last", "1")
    assert [ln for ln in lines(r) if ln.startswith("group ")] and "removed" not in r.stdout.decode()
    # prune: the plan is chatter when it is carried out, the answer of a dry run
    r = cli("-q", "prune", "--max-unused", "0%")
    assert lines(r) and all(ln.startswith("deleted ") for ln in lines(r)), lines(r)
    r = cli("-q", "prune", "--dry-run")
    assert any(ln.startswith("packs: keep") for ln in lines(r))
    # check: the verdict stays
    assert lines(cli("-q", "check"))[-1].endswith(": no errors")
    # repair: the answer stays, the closing count goes
    assert lines(cli("-q", "repair", "index"))[0].startswith("indexed ")
    r = cli("-q", "repair", "snapshots")
    assert "repaired" not in r.stdout.decode()
    assert "repaired" in cli("repair", "snapshots").stdout.decode()
    # protect and unlock: their one line is the answer
    assert "protected until 2099-01-01" in cli("-q", "protect", "latest", "--until", "2099-01-01").stdout.decode()
    assert lines(cli("-q", "unlock")) == ["removed 0 locks"]


def test_dump_of_a_directory_is_a_tar(initialized_cli, tmp_path):
    cli = initialized_cli
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a").write_bytes(b"A" * 5000)
    os.symlink("a", src / "d" / "l")
    os.link(src / "d" / "a", src / "d" / "hard")
    cli("backup", str(src))
    r = cli("dump", "latest", str(src / "d"))
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"d", "d/a", "d/hard", "d/l"}
        assert members["d"].isdir() and members["d/l"].issym() and members["d/l"].linkname == "a"
        assert members["d/a"].isfile() and tar.extractfile("d/a").read() == b"A" * 5000
        assert members["d/hard"].islnk() and members["d/hard"].linkname == "d/a"
    assert cli("dump", "latest", str(src / "d" / "a")).stdout == b"A" * 5000
    r = cli("dump", "latest", str(src / "d" / "l"), ok=False)
    assert r.returncode == 1 and b"is a symlink" in r.stderr


def test_prune_reports_the_temporary_files_it_removed(initialized_cli, tmp_path):
    cli = initialized_cli
    two_snapshots(cli, tmp_path)
    tmp = os.path.join(cli.repo, "data", ".tmp-killed")
    with open(tmp, "wb") as f:
        f.write(b"x" * 1000)
    os.utime(tmp, (1, 1))  # long before the 30-minute bound
    r = cli("prune", "--dry-run")
    assert "temporary files of interrupted writes: 1 (1000 B)" in r.stdout.decode()
    out = jl(cli("--json", "prune"))
    assert out[-1]["message_type"] == "summary" and out[-1]["temp_files_removed"] == 1
    assert out[-1]["temp_bytes_removed"] == 1000 and not os.path.exists(tmp)
