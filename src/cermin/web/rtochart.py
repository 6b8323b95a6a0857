"""The system page's RTO chart: measured RTO per drill against the target, as a server-rendered inline SVG.

No JavaScript and no inline styles (the CSP allows neither): the geometry is computed here, the template
writes plain SVG elements, and their looks come from classes in static/cermin.css. One point per drill,
placed by when it finished; the target is a line through each drill's own target (a step when the class
changed). Each point has a <title> (a tooltip, and what a screen reader reads); the drill table beside the
chart holds the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cermin.ops.config import fmt_duration
from cermin.ops.staterows import Drill

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 14, 30  # margins for the axis labels


@dataclass(frozen=True)
class ChartPoint:
    x: float
    y: float
    css: str  # pass | slow (passed, over the target) | fail
    label: str


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    label: str
    anchor: str = "end"  # the SVG text-anchor of its label


@dataclass(frozen=True)
class RtoChart:
    width: int
    height: int
    points: list[ChartPoint]  # oldest first
    measured: str  # the polyline through the points ("x,y x,y ...")
    target: str  # the target line
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    target_label: Tick
    plot: tuple[float, float, float, float]  # x0, y0 (top), x1, y1 (bottom)
    summary: str  # the chart in one sentence (its <desc>)


def _fmt(seconds: float) -> str:
    return fmt_duration(seconds, 2) if seconds >= 1 else f"{seconds:.1f}s"


def _nice(v: float) -> float:
    """A round number at least v (1, 2, 5 x 10^n seconds; minutes and hours when larger)."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400):
        if v <= step:
            return float(step)
    return float(86400 * (int(v // 86400) + 1))


def rto_chart(drills: Sequence[Drill]) -> RtoChart | None:
    """The chart of these drills (any order), or None when there is none."""
    if not drills:
        return None
    ds = sorted(drills, key=lambda d: (d.finished_at, d.id))
    x0, x1 = float(LEFT), float(WIDTH - RIGHT)
    y0, y1 = float(TOP), float(HEIGHT - BOTTOM)
    top = _nice(max(max(d.rto_measured_s for d in ds), max(d.rto_target_s for d in ds)) * 1.1)
    t_first, t_last = ds[0].finished_at, ds[-1].finished_at
    span = (t_last - t_first).total_seconds()

    def x_of(t: datetime) -> float:
        if span <= 0:
            return round((x0 + x1) / 2, 1)
        return round(x0 + (x1 - x0) * (t - t_first).total_seconds() / span, 1)

    def y_of(seconds: float) -> float:
        return round(y1 - (y1 - y0) * min(max(seconds, 0.0), top) / top, 1)

    points = []
    for d in ds:
        if d.verdict != "pass":
            css, how = "fail", f"failed{': ' + d.error.splitlines()[0][:120] if d.error else ''}"
        elif d.rto_measured_s > d.rto_target_s:
            css, how = "slow", "passed, over the target"
        else:
            css, how = "pass", "passed within the target"
        label = (
            f"{d.finished_at:%Y-%m-%d %H:%M} UTC: restored in {_fmt(d.rto_measured_s)} "
            f"(target {_fmt(d.rto_target_s)}), {how}"
        )
        points.append(ChartPoint(x_of(d.finished_at), y_of(d.rto_measured_s), css, label))
    target: list[str] = []
    for i, d in enumerate(ds):
        y = y_of(d.rto_target_s)
        if i == 0:
            target.append(f"{x0},{y}")
        else:
            target.append(f"{points[i].x},{y_of(ds[i - 1].rto_target_s)}")  # a step where the target changed
            target.append(f"{points[i].x},{y}")
    target.append(f"{x1},{y_of(ds[-1].rto_target_s)}")
    y_ticks = [Tick(x0 - 6, y_of(v), _fmt(v) if v else "0") for v in (0.0, top / 2, top)]
    x_ticks = [Tick(points[0].x, y1 + 18, f"{t_first:%Y-%m-%d}", "start" if span > 0 else "middle")]
    if span > 0 and f"{t_last:%Y-%m-%d}" != x_ticks[0].label:
        x_ticks.append(Tick(points[-1].x, y1 + 18, f"{t_last:%Y-%m-%d}", "end"))
    target_label = Tick(x1, y_of(ds[-1].rto_target_s) - 5, f"target {_fmt(ds[-1].rto_target_s)}")
    within = sum(p.css == "pass" for p in points)
    summary = (
        f"{len(ds)} drill{'s' if len(ds) != 1 else ''} from {t_first:%Y-%m-%d} to {t_last:%Y-%m-%d}: "
        f"{within} passed within the target RTO, newest {_fmt(ds[-1].rto_measured_s)} "
        f"against {_fmt(ds[-1].rto_target_s)}."
    )
    return RtoChart(
        WIDTH,
        HEIGHT,
        points,
        " ".join(f"{p.x},{p.y}" for p in points),
        " ".join(target),
        y_ticks,
        x_ticks,
        target_label,
        (x0, y0, x1, y1),
        summary,
    )
