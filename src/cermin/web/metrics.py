"""Prometheus metrics at `/metrics` (docs/dashboard.md "Metrics"): per system, whether it is covered now —
backup age against the RPO, copies (age, mirror lag, Object Lock expiry), the last drill's RTO against its
target, open guard alarms — the fleet's totals, and when each agent was last seen.

`FleetCollector` reads `StateStore.status(now)` once per scrape (seven statements whatever the fleet size)
and the agents (one); nothing is cached between scrapes, so every scrape says what the store says now.

Never unauthenticated, not even on loopback (behind the TLS proxy docs/dashboard.md recommends, every
request comes from loopback): a scrape carries a bearer token. A metrics token (`cermin web token add NAME
--metrics`) reads the whole fleet and nothing else; a user's API token or session reads its own scope (a
viewer's: its tenant's systems, without the agents). Missing or bad credentials: 401.
"""

from __future__ import annotations

import math
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from cermin.ops.fleetstatus import SystemStatus
from cermin.web import fleetview
from cermin.web.apitokens import CHALLENGE, bearer_of, lookup
from cermin.web.auth import current_principal

router = APIRouter(include_in_schema=False)

SYSTEM = ("tenant", "system", "class")
COPY = (*SYSTEM, "copy")
INF = math.inf


def _ts(t: datetime | None) -> float | None:
    return None if t is None else t.timestamp()


class FleetCollector:
    """A prometheus_client collector over the state store: one `status()` read per collect()."""

    def __init__(self, store, now: datetime, *, tenant: str | None = None, agents: bool = True) -> None:
        self.store = store
        self.now = now
        self.tenant = tenant
        self.agents = agents

    def collect(self):
        statuses = self.store.status(self.now, tenant=self.tenant)
        yield from system_families(statuses, self.now)
        if self.agents:
            seen = GaugeMetricFamily(
                "cermin_agent_last_seen_timestamp_seconds",
                "When the agent last wrote its heartbeat to the state store (Unix time).",
                labels=("agent", "host", "version"),
            )
            for a in self.store.agents():
                seen.add_metric((a.name, a.host, a.version), a.last_seen.timestamp())
            yield seen


def system_families(statuses: list[SystemStatus], now: datetime) -> list[GaugeMetricFamily]:
    """The per-system and fleet metric families of these statuses (pure: no store)."""

    def g(name: str, doc: str, labels=SYSTEM) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    backup_age = g(
        "cermin_backup_age_seconds", "Seconds since the newest good backup's data in the primary (+Inf: none)."
    )
    rpo = g("cermin_rpo_seconds", "The class's RPO: the newest good data may be at most this old.")
    rto = g("cermin_rto_seconds", "The class's RTO: a drill must restore and prove the data within it.")
    rpo_ok = g("cermin_rpo_compliant", "1 when the primary's newest good data is within the RPO, else 0.")
    meets = g("cermin_meets_class", "1 when the system meets its class now (copies, verify, drill, alarms), else 0.")
    copy_age = g(
        "cermin_copy_age_seconds", "Seconds since the newest good data in this copy (+Inf: none).", labels=COPY
    )
    copy_required = g("cermin_copy_required", "1 when the class requires this copy, else 0.", labels=COPY)
    copy_lag = g(
        "cermin_copy_lag_seconds", "How far this copy's newest data trails the primary's (mirror lag).", labels=COPY
    )
    lock = g(
        "cermin_object_lock_until_timestamp_seconds",
        "Object Lock retention of the immutable copy's newest snapshot (Unix time; 0: no lock seen).",
        labels=COPY,
    )
    drill_rto = g("cermin_drill_rto_seconds", "The last drill's measured time to restore and prove the data.")
    drill_target = g("cermin_drill_rto_target_seconds", "The RTO the last drill was measured against.")
    drill_pass = g("cermin_drill_pass", "1 when the last drill passed, else 0 (no sample: never drilled).")
    drill_at = g("cermin_drill_last_timestamp_seconds", "When the last drill finished (Unix time).")
    verify_at = g("cermin_verify_last_timestamp_seconds", "When the primary was last verified (Unix time).")
    alarms = g("cermin_open_alarms", "Guard alarms open (not acknowledged) on the system.")
    systems = GaugeMetricFamily("cermin_fleet_systems", "Systems in scope.")
    meeting = GaugeMetricFamily("cermin_fleet_systems_meeting_class", "Systems that meet their class now.")
    failing = GaugeMetricFamily(
        "cermin_fleet_systems_failing",
        "Systems that do not meet their class, per reason (a system counts under each of its reasons).",
        labels=("reason",),
    )
    open_alarms = GaugeMetricFamily("cermin_fleet_open_alarms", "Guard alarms open in scope.")

    reasons = dict.fromkeys(fleetview.REASONS, 0)
    n_meeting = n_alarms = 0
    for st in statuses:
        s = st.system
        labels = (s.tenant, s.name, s.policy)
        backup_age.add_metric(labels, INF if st.backup_age_s is None else st.backup_age_s)
        rpo.add_metric(labels, s.rpo_s)
        rto.add_metric(labels, s.rto_s)
        rpo_ok.add_metric(labels, int(st.backup_age_s is not None and st.backup_age_s <= s.rpo_s))
        meets.add_metric(labels, int(st.meets_class))
        for kind, c in st.copies.items():
            cl = (*labels, kind)
            copy_age.add_metric(cl, INF if c.age_s is None else c.age_s)
            copy_required.add_metric(cl, int(c.required))
            if c.lag_s is not None:
                copy_lag.add_metric(cl, c.lag_s)
            if c.immutable:
                lock.add_metric(cl, _ts(c.lock_until) or 0.0)
        d = st.last_drill
        if d is not None:
            drill_rto.add_metric(labels, d.rto_measured_s)
            drill_target.add_metric(labels, d.rto_target_s)
            drill_pass.add_metric(labels, int(d.verdict == "pass"))
            drill_at.add_metric(labels, d.finished_at.timestamp())
        if st.last_verify is not None:
            verify_at.add_metric(labels, st.last_verify.timestamp())
        alarms.add_metric(labels, len(st.open_alarms))
        n_meeting += st.meets_class
        n_alarms += len(st.open_alarms)
        for code in fleetview.reason_codes(st, now):
            reasons[code] += 1
    systems.add_metric((), len(statuses))
    meeting.add_metric((), n_meeting)
    for code, n in reasons.items():
        failing.add_metric((code,), n)
    open_alarms.add_metric((), n_alarms)
    return [
        backup_age,
        rpo,
        rto,
        rpo_ok,
        meets,
        copy_age,
        copy_required,
        copy_lag,
        lock,
        drill_rto,
        drill_target,
        drill_pass,
        drill_at,
        verify_at,
        alarms,
        systems,
        meeting,
        failing,
        open_alarms,
    ]


def _unauthorized(detail: str) -> Response:
    return PlainTextResponse(detail + "\n", status_code=401, headers=CHALLENGE)


@router.get("/metrics", name="metrics")
def metrics(request: Request):
    """The exposition (Prometheus text, or OpenMetrics when the scraper asks for it)."""
    tenant, agents = None, True
    found = lookup(request) if bearer_of(request) is not None else None
    if found is not None and found[0].scope == "metrics":
        pass  # a metrics token: the whole fleet
    elif bearer_of(request) is not None and found is None:
        return _unauthorized("bad, revoked or expired token")
    else:
        p = current_principal(request)  # a user's API token, or a session
        if p is None:
            return _unauthorized("a bearer token is required: cermin web token add NAME --metrics")
        tenant, agents = p.tenant, p.tenant is None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(request.app.state.store, request.app.state.clock(), tenant=tenant, agents=agents))
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=None, headers={"Content-Type": content_type})
