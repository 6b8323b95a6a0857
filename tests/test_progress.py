"""engine/progress.py: one typed progress stream: every long operation reports `Progress` events to one
Reporter."""

from __future__ import annotations

import json
import os

import msgspec

from cermin.engine.backup import BackupOptions
from cermin.engine.progress import Progress
from cermin.ops import commands


class Collect:
    interval = 0.001  # sampled operations: as often as possible

    def __init__(self) -> None:
        self.events: list[Progress] = []

    def __call__(self, ev: Progress) -> None:
        assert isinstance(ev, Progress)
        self.events.append(ev)


def make_src(tmp_path, n=300):
    src = tmp_path / "src"
    os.makedirs(src)
    for i in range(n):
        (src / f"f{i}").write_bytes(os.urandom(2000 + i))
    return src


def test_status_line_keeps_the_old_fields_first():
    ev = Progress(operation="backup", unit="files", done=3, dirs_done=2, bytes_done=100, elapsed=1.5)
    d = ev.to_json()
    assert list(d)[:5] == ["message_type", "operation", "files_done", "dirs_done", "bytes_done"]
    assert d["message_type"] == "status" and d["files_done"] == 3 and d["dirs_done"] == 2
    assert {"phase", "done", "total", "unit", "bytes_total", "elapsed", "message"} <= set(d)
    assert "files_done" not in Progress(operation="check", phase="packs").to_json()
    # plain data: survives a trip through msgpack (a worker process, the agent's queue)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(ev), type=Progress) == ev


def test_text_line():
    assert Progress(operation="check", message="checking packs", elapsed=61).to_text() == "[1:01] check: checking packs"
    line = Progress(operation="restore", unit="files", done=2, total=4, bytes_done=2048).to_text()
    assert line == "[0:00] restore: 2/4 files, 2.00 KiB"
    assert Progress(operation="backup", unit="files", done=1).to_text() == "[0:00] backup: 1 file"


def test_backup_and_restore_sample_their_counters(local_repo, tmp_path):
    src = make_src(tmp_path)
    rep = Collect()
    commands.backup(local_repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2), rep)
    assert rep.events and {e.operation for e in rep.events} == {"backup"}
    last = rep.events[-1]
    assert last.unit == "files" and last.done <= 300 and last.elapsed > 0
    assert [e.done for e in rep.events] == sorted(e.done for e in rep.events)

    from cermin.engine.restore import RestoreOptions

    rep = Collect()
    commands.restore(local_repo, "latest", RestoreOptions(target=str(tmp_path / "out"), workers=2), rep)
    assert {e.operation for e in rep.events} <= {"restore"}


def test_check_and_prune_report_phases(local_repo, tmp_path):
    src = make_src(tmp_path, 20)
    first = commands.backup(local_repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2)).snapshot_id
    for f in list(src.iterdir())[:10]:
        f.unlink()
    commands.backup(local_repo, BackupOptions(paths=[os.fsencode(str(src))], workers=2))
    rep = Collect()
    commands.check(local_repo, commands.CheckOptions(read_data=True), rep)
    assert [e.phase for e in rep.events] == ["index", "packs", "trees", "read data", "attribute"]
    assert all(e.operation == "check" and e.message for e in rep.events)

    commands.forget(local_repo, commands.ForgetOptions(snapshot_ids=[first]))
    rep = Collect()
    out = commands.prune(local_repo, commands.PruneOptions(max_unused=0.0), rep)
    assert out.exit_code == 0
    repack = [e for e in rep.events if e.phase == "repack"]
    assert repack and repack[-1].done == repack[-1].total and repack[-1].unit == "packs"
    assert rep.events[-1].phase == "index"


def test_cli_json_status_lines(initialized_cli, tmp_path):
    src = make_src(tmp_path, 3)
    initialized_cli("backup", str(src))
    out = initialized_cli("--json", "check").stdout.decode().splitlines()
    status = [json.loads(x) for x in out if '"status"' in x]
    assert [s["phase"] for s in status] == ["index", "packs", "trees", "attribute"]
    assert all(s["operation"] == "check" and s["message"] for s in status)
    quiet = initialized_cli("--json", "-q", "check").stdout.decode()
    assert '"status"' not in quiet and '"summary"' in quiet, "-q: no progress, still the answer"
