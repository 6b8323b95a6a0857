"""ops/schedule.py on a fake clock: slots from cron and from the RPO, spread per system, catch-up without a burst."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from cermin.ops import schedule
from cermin.ops.config import load_config

T0 = datetime(2026, 12, 1, 5, 30, 7, tzinfo=UTC)


def _cfg():
    return load_config(os.path.join(os.path.dirname(__file__), "..", "docs", "examples", "cermin.toml"), environ={})


def test_cron_slots_and_interval_slots():
    cfg = _cfg()
    antrian, paspor = cfg.system("antrian"), cfg.system("paspor")
    assert schedule.latest_slot(antrian, "backup", T0) == datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert schedule.next_slot(antrian, "backup", T0) == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    exact = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    assert schedule.latest_slot(antrian, "backup", exact) == exact  # a slot at `now` is due now
    # paspor: strategis, RPO 1h -> every 30 min, shifted by a stable offset
    s1 = schedule.latest_slot(paspor, "backup", T0)
    assert s1 <= T0 < s1 + timedelta(minutes=30)
    assert schedule.next_slot(paspor, "backup", T0) == s1 + timedelta(minutes=30)
    assert schedule.latest_slot(paspor, "backup", s1) == s1
    assert schedule.latest_slot(paspor, "backup", s1 - timedelta(seconds=1)) == s1 - timedelta(minutes=30)


def test_offsets_spread_a_fleet_and_are_stable():
    offs = {schedule.offset(f"t{i}/s", "backup", 1800) for i in range(200)}
    assert len(offs) > 150  # not all on the same second
    assert schedule.offset("a/b", "backup", 1800) == schedule.offset("a/b", "backup", 1800)


def test_due_jobs_catch_up_once_without_a_burst():
    cfg = _cfg()
    jobs = schedule.due_jobs(cfg, {}, T0)  # nothing ever ran: every job once
    assert len(jobs) == len(cfg.systems) * len(schedule.JOB_KINDS)
    assert len({j.key for j in jobs}) == len(jobs)
    assert [j.kind for j in jobs][:3] == ["backup"] * 3
    assert jobs[0].system.id == "imigrasi/paspor"  # strategis first
    done = {(j.system.id, j.kind): j.slot for j in jobs}
    assert schedule.due_jobs(cfg, done, T0) == []
    # the agent was down for two days: each job is due once, for its latest slot only
    later = T0 + timedelta(days=2)
    again = schedule.due_jobs(cfg, done, later)
    backups = [j for j in again if j.kind == "backup"]
    assert len(backups) == 3
    assert all(j.slot == schedule.latest_slot(j.system, "backup", later) for j in backups)
    drills = [j for j in again if j.kind == "drill"]
    assert {j.system.id for j in drills} <= {"imigrasi/paspor"}  # only the weekly drill could fall due


def test_verify_slices_cover_the_cycle():
    paspor = _cfg().system("paspor")  # verify_every 30d
    seen = {schedule.verify_slice(paspor, T0 + timedelta(days=d))[0] for d in range(30)}
    assert seen == set(range(1, 31))
    assert schedule.verify_slice(paspor, T0)[1] == 30
