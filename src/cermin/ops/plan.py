"""`cermin config check`: the resolved plan of a valid configuration — what runs when, to which copies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cermin.engine.results import Line, answer, note
from cermin.ops import schedule
from cermin.ops.config import Config, ResolvedSystem, Retention, fmt_duration, source_name


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def retention_text(r: Retention) -> str:
    parts = [
        f"{k} {getattr(r, k)}" for k in ("last", "hourly", "daily", "weekly", "monthly", "yearly") if getattr(r, k)
    ]
    if r.within:
        parts.append(f"within {r.within}")
    return "keep " + ", ".join(parts)


def source_text(src) -> str:
    name = source_name(src)
    if src.type == "paths":
        ex = f" (excluding {', '.join(src.exclude)})" if src.exclude else ""
        return f"paths {name}: {', '.join(src.paths)}{ex}"
    if src.type == "postgres":
        return f"postgres {name}: pg_dump {src.user}@{src.host}:{src.port}/{src.database}, streamed"
    if src.type == "sqlite":
        return f"sqlite {name}: {src.path} (online backup API)"
    return f"command {name}: {' '.join(src.command)}"


def check_text(chk) -> str:
    if chk.type in ("postgres", "sqlite"):
        return f"{chk.type} query {chk.query!r} returns rows"
    if chk.type == "command":
        return f"command {' '.join(chk.command)} exits 0"
    return f"at least {chk.min_files} file(s) restored"


@dataclass
class ConfigPlan:
    cfg: Config
    now: datetime

    exit_code = 0

    def _system(self, s: ResolvedSystem) -> dict:
        c = s.policy
        jobs = {}
        for kind in schedule.JOB_KINDS:
            period = schedule.period_of(s, kind)
            jobs[kind] = {
                "cron": "" if period else s.schedule,
                "every_s": period,
                "next": schedule.next_slot(s, kind, self.now).isoformat().replace("+00:00", "Z"),
            }
        others = [k for k in s.copies if k != "primary"]
        return {
            "id": s.id,
            "tenant": s.tenant,
            "system": s.name,
            "class": c.name,
            "rpo_s": c.rpo,
            "rto_s": c.rto,
            "copies": s.copies,
            "hostname": s.hostname,
            "sources": [{"name": source_name(x), "type": x.type, "what": source_text(x)} for x in s.sources],
            "checks": [{"type": x.type, "what": check_text(x)} for x in s.checks],
            "retention": retention_text(c.retention),
            "jobs": jobs,
            "mirrored_to": [s.copies[k] for k in others],
            "verify_cycle_days": schedule.verify_slice(s, self.now)[1],
            "drill_every_s": c.drill_every,
        }

    def to_json(self) -> list[dict]:
        return [
            {
                "message_type": "config_plan",
                "path": self.cfg.path,
                "tenants": len(self.cfg.tenants),
                "repositories": sorted(self.cfg.repositories),
                "classes": {
                    k: {"rpo_s": c.rpo, "rto_s": c.rto, "copies": list(c.copies), "priority": c.priority}
                    for k, c in sorted(self.cfg.classes.items())
                },
                "systems": [self._system(s) for s in self.cfg.systems],
            }
        ]

    def to_text(self, verbose: int = 0) -> list[Line]:
        cfg = self.cfg
        out = [
            answer(
                f"{cfg.path}: valid — {len(cfg.tenants)} tenant(s), {len(cfg.systems)} system(s), "
                f"{len(cfg.repositories)} repositories"
            )
        ]
        for s in sorted(cfg.systems, key=lambda s: (s.policy.priority, s.id)):
            c = s.policy
            d = self._system(s)
            out.append(answer(""))
            out.append(
                answer(
                    f"{s.id}  class {c.name} (RPO {fmt_duration(c.rpo)}, RTO {fmt_duration(c.rto)}), "
                    f"copies: {', '.join(f'{k} {v}' for k, v in s.copies.items())}"
                )
            )
            for src in d["sources"]:
                out.append(answer(f"  source    {src['what']}"))
            b = d["jobs"]["backup"]
            when = f"cron {b['cron']!r}" if b["cron"] else f"every {fmt_duration(b['every_s'])}"
            then = f", then mirrored to {', '.join(d['mirrored_to'])}" if d["mirrored_to"] else ""
            out.append(
                answer(
                    f"  backup    {when} (next {_when(schedule.next_slot(s, 'backup', self.now))}) "
                    f"-> {s.copies['primary']}{then}"
                )
            )
            out.append(answer(f"  forget    after each backup, every copy: {d['retention']}"))
            lock = f", extend Object Lock on {s.copies['immutable']}" if "immutable" in s.copies else ""
            out.append(
                answer(
                    f"  maintain  daily (next {_when(schedule.next_slot(s, 'maintain', self.now))}): prune{lock}, "
                    f"read 1/{d['verify_cycle_days']} of every copy's packs (all within "
                    f"{fmt_duration(c.verify_every)})"
                )
            )
            checks = "; ".join(x["what"] for x in d["checks"]) or "restore and verify only"
            out.append(
                answer(
                    f"  drill     every {fmt_duration(c.drill_every)} (next "
                    f"{_when(schedule.next_slot(s, 'drill', self.now))}), RTO target "
                    f"{fmt_duration(c.rto)}: {checks}"
                )
            )
            if s.hooks.pre or s.hooks.post:
                out.append(note(f"  hooks     {len(s.hooks.pre)} before, {len(s.hooks.post)} after each backup"))
        return out
