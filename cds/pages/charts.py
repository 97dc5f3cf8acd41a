"""Trend charts as inline SVG, drawn by matplotlib (server side: the page needs no script).

Only the object API (``matplotlib.figure.Figure``) is used, never pyplot, so charts can be
drawn from several threads of one worker. matplotlib is imported on first use: the service
itself never pays for it, only a preview does.
"""
from __future__ import annotations

import io
import re
import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from typing import Any, Sequence

from cds.knowledge.intervals import fmt_number


@dataclass(frozen=True)
class Band:
    label: str                  # e.g. "deficiency < 20 ng/mL"
    lower: float | None
    upper: float | None
    tone: str                   # "low" | "mid" | "high" | "change"
    start: date | None = None   # a band over part of the time axis only (the LSC band)


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[date, float], ...]


@dataclass(frozen=True)
class ChartSpec:
    id: str                     # [a-z0-9-]+, unique on the page
    title: str                  # "25(OH)D" / "T-score, total hip"
    axis: str                   # y axis label with the unit: "25(OH)D (ng/mL)"
    series: tuple[Series, ...]
    bands: tuple[Band, ...]
    notes: tuple[str, ...] = ()

    @property
    def point_count(self) -> int:
        return sum(len(s.points) for s in self.series)


_TONES = {"low": "#f6c6c2", "mid": "#fbe3b4", "high": "#f6c6c2", "change": "#c9dcf4"}
_COLOURS = ("#1f4e9c", "#8a3b12", "#2f6b2f", "#5b2c83")
_ID = re.compile(r"[a-z0-9-]+")
_LOCK = threading.Lock()
_mpl: Any = None


def _matplotlib() -> Any:
    global _mpl
    with _LOCK:
        if _mpl is None:
            import matplotlib
            matplotlib.use("svg")   # no GUI backend; only the SVG writer is used
            import matplotlib.dates
            import matplotlib.figure
            matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 10,
                                        "axes.titlesize": 11})
            _mpl = matplotlib
    return _mpl


def warm_up() -> None:
    """Import matplotlib and load its fonts now (at start-up, before gunicorn forks its
    workers), so that the first preview a worker answers does not pay for it."""
    render_svg(ChartSpec("warm-up", "", "", (Series("", ((date(2000, 1, 1), 0.0),)),), ()))


def _y_range(values: Sequence[float], bands: Sequence[Band]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = max(hi - lo, abs(hi) * 0.3, abs(lo) * 0.3, 1.0)
    edges = [e for b in bands for e in (b.lower, b.upper) if e is not None]
    near = [e for e in edges if lo - span <= e <= hi + span]
    lo, hi = min([lo, *near]), max([hi, *near])
    pad = max((hi - lo) * 0.12, 0.5 if hi - lo < 5 else 1.0)
    return lo - pad, hi + pad


def render_svg(spec: ChartSpec) -> str:
    """The chart as an ``<svg>`` element (no XML prolog), ready to inline in HTML."""
    if not _ID.fullmatch(spec.id):
        raise ValueError(f"chart id {spec.id!r}")
    mpl = _matplotlib()
    mdates = mpl.dates
    fig = mpl.figure.Figure(figsize=(5.6, 3.2), dpi=100)
    # fixed margins: a constrained layout would draw the figure several times over
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.25)
    ax = fig.add_subplot()
    values = [v for s in spec.series for _, v in s.points]
    days = [d for s in spec.series for d, _ in s.points]
    ylo, yhi = _y_range(values, spec.bands)
    first, last = min(days), max(days)
    pad_days = max((last - first).days * 0.08, 45)
    xlo = mdates.date2num(first) - pad_days
    xhi = mdates.date2num(last) + pad_days
    for band in spec.bands:
        lo = ylo if band.lower is None else max(band.lower, ylo)
        hi = yhi if band.upper is None else min(band.upper, yhi)
        if lo >= hi:
            continue
        if band.start is None:
            ax.axhspan(lo, hi, color=_TONES[band.tone], alpha=0.7, linewidth=0, label=band.label)
        else:
            ax.fill_between([mdates.date2num(band.start), xhi], lo, hi, color=_TONES[band.tone],
                            alpha=0.8, linewidth=0, label=band.label)
    for i, s in enumerate(spec.series):
        xs = [datetime.combine(d, time(12), tzinfo=timezone.utc) for d, _ in s.points]
        ys = [v for _, v in s.points]
        (line,) = ax.plot(xs, ys, marker="o", markersize=6, linewidth=1.6,
                          color=_COLOURS[i % len(_COLOURS)], label=s.label)
        line.set_gid(f"points-{spec.id}-{i}")
        for x, y in zip(xs, ys):
            ax.annotate(fmt_number(y), (x, y), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=9, color="#222222")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    ax.set_ylabel(spec.axis)
    ax.set_title(spec.title, loc="left")
    locator = mdates.AutoDateLocator(minticks=2, maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if spec.bands or len(spec.series) > 1:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8,
                  frameon=False)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    start = svg.index("<svg")
    return svg[start:].replace("<svg ", f'<svg role="img" aria-labelledby="{spec.id}-caption" '
                                        f'class="chart" ', 1)
