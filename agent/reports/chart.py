"""The PNG chart of a report: cumulative compute with its band, the thresholds that
apply, and the projection to the planned end, on a log axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from agent import figures
from agent.reports.report import Report


def _days(ns: int) -> float:
    # Matplotlib's date axis counts days since its epoch, 1970-01-01 UTC by default.
    return ns / 86400e9


def render_png(rep: Report, path: Path) -> None:
    """Write the chart to ``path`` (PNG, 1200 x 700 px)."""
    t = rep.timeline
    times = [_days(ns) for ns in t.end_ns]
    # Whole FLOP exceed 64-bit integers: plot them as floats.
    low, central, high = ([float(v) for v in series] for series in (t.low, t.central, t.high))
    fig, ax = plt.subplots(figsize=(12, 7), dpi=100)
    ax.fill_between(times, low, high, color="tab:blue", alpha=0.25, linewidth=0,
                    label="band (low .. high)")
    ax.plot(times, central, color="tab:blue", linewidth=2, label="central estimate")
    top = max(high) if high else 1.0
    if rep.forecast and times and rep.forecast["projected"]["high"] > high[-1]:
        projected = rep.forecast["projected"]
        end = _days(rep.forecast["end_ns"])
        ax.plot([times[-1], end], [central[-1], float(projected["central"])], "--",
                color="tab:blue", alpha=0.7, label=f"projection ({rep.forecast['basis']})")
        ax.plot([times[-1], end], [high[-1], float(projected["high"])], ":", color="tab:blue",
                alpha=0.7)
        top = max(top, float(projected["high"]))
    colours = ["tab:red", "tab:orange", "tab:purple", "tab:green", "tab:brown", "tab:pink"]
    shown = set()
    for i, r in enumerate(rep.regimes):
        threshold = r.get("threshold_flop")
        if not threshold or threshold in shown or threshold > top * 1e3:
            continue
        shown.add(threshold)
        ax.axhline(threshold, color=colours[i % len(colours)], linestyle="-.", linewidth=1.2,
                   label=f"{figures.flop(threshold)}: {r['title'][:60]}")
    ax.set_yscale("log")
    low_values = [v for v in low if v > 0] or [1.0]
    ax.set_ylim(bottom=min(low_values) / 3, top=max(top, max(shown, default=top)) * 3)
    ax.set_ylabel("cumulative compute (FLOP)")
    band = figures.band(*rep.flop)
    ax.set_title(f"{rep.subject_type} {rep.subject}: {band} FLOP")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d\n%H:%M"))  # type: ignore[no-untyped-call]
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
