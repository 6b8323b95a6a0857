"""The fleet page's content, from `StateStore.status()`: one row per system and the totals that matter first
("212 of 240 systems meet their policy now; 28 do not, because ..."). Pure functions of the statuses, the
query and `now` — no database — so the page costs the store's fixed number of statements.

Backup age against the RPO (docs/dashboard.md):
- green: the newest good backup in the primary copy is at most half the RPO old (backups run every half
  RPO, so a healthy system is always green);
- amber: older than half the RPO but within it (a backup was missed or is late: the RPO still holds);
- red: older than the RPO, or no backup ever (the RPO is breached).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlencode

from cermin.ops.config import fmt_duration
from cermin.ops.fleetstatus import SystemStatus

AMBER_FRACTION = 0.5  # amber once the backup is older than this fraction of the RPO

# why a system does not meet its policy: code -> (one system, several systems), as the totals say it
REASONS: dict[str, tuple[str, str]] = {
    "rpo": ("backup older than its RPO", "backups older than their RPO"),
    "no_backup": ("never backed up", "never backed up"),
    "copy_stale": ("with a copy older than the RPO", "with a copy older than the RPO"),
    "no_copy": ("missing a required copy", "missing a required copy"),
    "alarm": ("open guard alarm", "open guard alarms"),
    "never_drilled": ("never drilled", "never drilled"),
    "drill_overdue": ("overdue for a drill", "overdue for a drill"),
    "drill_failed": ("whose last drill failed", "whose last drill failed"),
    "drill_slow": ("whose last drill took longer than the RTO", "whose last drill took longer than the RTO"),
    "never_verified": ("never verified", "never verified"),
    "verify_overdue": ("overdue for verification", "overdue for verification"),
    "other": ("for another reason", "for another reason"),
}
SORTS = ("state", "tenant", "system", "class", "backup", "drill", "verdict")
STATES = ("failing", "ok")
_VERDICT_ORDER = {"clean": 0, None: 1, "unknown": 2, "suspicious": 3, "infected": 4}


def short_duration(seconds: float) -> str:
    """An age as people read it: two units at most ('45s', '12min', '2h24min', '3d6h', '2w')."""
    s = int(round(seconds))
    if s < 3600:
        return fmt_duration(s) if s < 60 else fmt_duration(s - s % 60)
    if s < 86400:
        return fmt_duration(s - s % 60)
    return fmt_duration(s - s % 3600)


def age_color(age_s: float | None, rpo_s: float) -> str:
    if age_s is None or age_s > rpo_s:
        return "red"
    return "amber" if age_s > rpo_s * AMBER_FRACTION else "green"


def reason_codes(st: SystemStatus, now: datetime) -> list[str]:
    """The reasons of `st.reasons` as codes, in the order fleetstatus.evaluate checks them."""
    s = st.system
    codes: list[str] = []
    for kind in s.required:
        c = st.copies.get(kind)
        missing = c is None or c.newest is None
        if kind == "primary":
            if missing:
                codes.append("no_backup")
            elif not c.fresh:
                codes.append("rpo")
        elif missing:
            codes.append("no_copy")
        elif not c.fresh:
            codes.append("copy_stale")
    if st.last_verify is None:
        codes.append("never_verified")
    elif (now - st.last_verify).total_seconds() > s.verify_every_s:
        codes.append("verify_overdue")
    d = st.last_drill
    if d is None:
        codes.append("never_drilled")
    else:
        if (now - d.finished_at).total_seconds() > s.drill_every_s:
            codes.append("drill_overdue")
        if d.verdict != "pass":
            codes.append("drill_failed")
        elif d.rto_measured_s > s.rto_s:
            codes.append("drill_slow")
    if st.open_alarms:
        codes.append("alarm")
    codes = list(dict.fromkeys(codes))  # a system counts once per reason
    if st.reasons and not codes:
        codes.append("other")
    return codes if st.reasons else []


@dataclass(frozen=True)
class CopyCell:
    kind: str
    text: str
    css: str  # ok | warn | bad | none
    title: str


@dataclass(frozen=True)
class FleetRow:
    status: SystemStatus
    tenant_name: str
    color: str  # green | amber | red
    age_text: str
    copies: list[CopyCell]
    verdict: str
    verdict_css: str
    drill_text: str
    drill_css: str
    codes: list[str]

    @property
    def system(self):
        return self.status.system

    @property
    def meets(self) -> bool:
        return self.status.meets_class


@dataclass(frozen=True)
class Cause:
    code: str
    count: int
    text: str  # "5 backups older than their RPO"


@dataclass(frozen=True)
class Totals:
    systems: int
    meeting: int
    causes: list[Cause]

    @property
    def failing(self) -> int:
        return self.systems - self.meeting

    @property
    def headline(self) -> str:
        if not self.systems:
            return "No systems yet: the agent records the fleet when it starts (cermin agent run)."
        if not self.failing:
            return (
                f"All {self.systems} systems meet their policy now."
                if self.systems > 1
                else ("The system meets its policy now.")
            )
        verb = "does" if self.failing == 1 else "do"
        return f"{self.meeting} of {self.systems} systems meet their policy now; {self.failing} {verb} not"

    @property
    def sentence(self) -> str:
        """The whole answer in one line (for tests, exports and the page's title)."""
        if not self.failing:
            return self.headline
        return f"{self.headline}, because: " + ", ".join(c.text for c in self.causes) + "."


@dataclass(frozen=True)
class FleetQuery:
    """The table's sort and filters, as the query string gives them (unknown values are ignored)."""

    sort: str = "state"
    desc: bool = False
    tenant: str | None = None
    cls: str | None = None
    state: str | None = None
    q: str = ""
    why: str | None = None

    @classmethod
    def parse(cls, sort=None, tenant=None, klass=None, state=None, q=None, why=None) -> FleetQuery:
        sort = (sort or "state").strip()
        desc = sort.startswith("-")
        key = sort.lstrip("-")
        return cls(
            sort=key if key in SORTS else "state",
            desc=desc and key in SORTS,
            tenant=(tenant or None),
            cls=(klass or None),
            state=state if state in STATES else None,
            q=(q or "").strip()[:100],
            why=why if why in REASONS else None,
        )

    def params(self, **change) -> dict[str, str]:
        d = {
            "sort": ("-" if self.desc else "") + self.sort,
            "tenant": self.tenant or "",
            "class": self.cls or "",
            "state": self.state or "",
            "q": self.q,
            "why": self.why or "",
        }
        d.update({k: v for k, v in change.items()})
        return {k: v for k, v in d.items() if v and not (k == "sort" and v == "state")}

    def url(self, **change) -> str:
        p = self.params(**change)
        return "/" + ("?" + urlencode(p) if p else "")

    def sort_url(self, key: str) -> str:
        desc = not self.desc if key == self.sort else False
        return self.url(sort=("-" if desc else "") + key)

    def sort_mark(self, key: str) -> str:
        return "" if key != self.sort else ("▼" if self.desc else "▲")

    @property
    def filtered(self) -> bool:
        return bool(self.tenant or self.cls or self.state or self.q or self.why)


@dataclass(frozen=True)
class FleetView:
    rows: list[FleetRow]  # after filters and sort
    totals: Totals  # over every system in scope (the filters other than tenant do not change them)
    query: FleetQuery
    tenants: dict[str, str]  # id -> display name, the ones the principal may choose from
    classes: list[str]
    now: datetime
    total_rows: int = field(default=0)  # rows in scope before the table filters


def _copy_cells(st: SystemStatus, now: datetime) -> list[CopyCell]:
    cells = []
    for kind, c in st.copies.items():
        title = f"{kind} {c.repository}".strip()
        if c.newest is None:
            cells.append(CopyCell(kind, f"{kind}: none", "bad" if c.required else "none", title + ": no data yet"))
            continue
        css = "ok" if c.fresh else "bad" if c.required else "warn"
        title += f": newest data {c.newest:%Y-%m-%d %H:%M} UTC"
        if kind == "primary":
            text = f"primary {short_duration(c.age_s or 0)}"
        elif c.immutable:
            if c.lock_until is not None and c.lock_until > now:
                text = f"immutable, locked to {c.lock_until:%Y-%m-%d}"
                title += f"; Object Lock until {c.lock_until:%Y-%m-%d %H:%M} UTC"
            else:
                text, css = "immutable, no lock seen", "warn" if css == "ok" else css
                title += "; no Object Lock retention seen on its newest snapshot"
        else:
            text = f"{kind} lag {short_duration(c.lag_s)}" if c.lag_s is not None else kind
        cells.append(CopyCell(kind, text, css, title))
    return cells


def _row(st: SystemStatus, tenant_name: str, now: datetime) -> FleetRow:
    s = st.system
    color = age_color(st.backup_age_s, s.rpo_s)
    age = "never" if st.backup_age_s is None else short_duration(st.backup_age_s)
    verdict = st.verdict or "—"
    if st.open_alarms:
        n = len(st.open_alarms)
        verdict = f"{st.open_alarms[-1].verdict}, {n} open alarm{'s' if n != 1 else ''}"
    verdict_css = (
        "bad"
        if st.open_alarms or st.verdict in ("suspicious", "infected")
        else ("ok" if st.verdict == "clean" else "none")
    )
    d = st.last_drill
    if d is None:
        drill_text, drill_css = "never", "bad"
    else:
        drill_text = f"{short_duration(d.rto_measured_s)} / {fmt_duration(s.rto_s)}"
        if d.verdict != "pass":
            drill_text, drill_css = f"failed ({drill_text})", "bad"
        else:
            drill_css = "ok" if d.rto_measured_s <= s.rto_s else "bad"
    return FleetRow(
        st,
        tenant_name,
        color,
        age,
        _copy_cells(st, now),
        verdict,
        verdict_css,
        drill_text,
        drill_css,
        reason_codes(st, now),
    )


def totals(rows: list[FleetRow]) -> Totals:
    counts: Counter[str] = Counter()
    for r in rows:
        counts.update(r.codes)
    order = list(REASONS)
    causes = [
        Cause(code, n, f"{n} {REASONS[code][0] if n == 1 else REASONS[code][1]}")
        for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], order.index(kv[0])))
    ]
    return Totals(len(rows), sum(r.meets for r in rows), causes)


def _sort_key(key: str):
    inf = math.inf
    if key == "tenant":
        return lambda r: (r.system.tenant, r.system.name)
    if key == "system":
        return lambda r: (r.system.name, r.system.tenant)
    if key == "class":
        return lambda r: (r.system.priority, r.system.policy, r.status.id)
    if key == "backup":
        return lambda r: (inf if r.status.backup_age_s is None else r.status.backup_age_s / r.system.rpo_s, r.status.id)
    if key == "drill":
        return lambda r: (
            inf if r.status.last_drill is None else r.status.last_drill.rto_measured_s / max(1, r.system.rto_s),
            r.status.id,
        )
    if key == "verdict":
        return lambda r: (len(r.status.open_alarms), _VERDICT_ORDER.get(r.status.verdict, 1), r.status.id)
    return lambda r: (r.meets, r.system.priority, r.status.id)  # state: failing first, most important first


def build(statuses: list[SystemStatus], tenant_names: dict[str, str], now: datetime, query: FleetQuery) -> FleetView:
    rows = [_row(st, tenant_names.get(st.system.tenant, st.system.tenant), now) for st in statuses]
    all_totals = totals(rows)
    shown = rows
    if query.cls:
        shown = [r for r in shown if r.system.policy == query.cls]
    if query.state:
        shown = [r for r in shown if r.meets == (query.state == "ok")]
    if query.why:
        shown = [r for r in shown if query.why in r.codes]
    if query.q:
        needle = query.q.lower()
        shown = [
            r
            for r in shown
            if needle in r.status.id.lower()
            or needle in r.tenant_name.lower()
            or needle in r.system.hostname.lower()
            or needle in r.system.description.lower()
        ]
    shown = sorted(shown, key=_sort_key(query.sort), reverse=query.desc)
    return FleetView(
        rows=shown,
        totals=all_totals,
        query=query,
        tenants=dict(sorted(tenant_names.items())),
        classes=sorted({st.system.policy for st in statuses}),
        now=now,
        total_rows=len(rows),
    )
