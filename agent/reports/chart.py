"""The PNG chart of a report: cumulative compute with its band, the thresholds that
apply, and the projection to the planned end, on a log axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
from matplotlib.figure import Figure

from agent import figures
from agent.reports.report import Report

LEGEND_TITLE_CHARS = 70


def _days(ns: int) -> float:
    # Matplotlib's date axis counts days since its epoch, 1970-01-01 UTC by default.
    return ns / 86400e9


def sci(value: float, rounding: str = "nearest") -> str:
    """A FLOP figure to two significant figures as mathtext: ``$7.1 \\times 10^{23}$``
    (what ``figures.flop`` prints as ``7.1e+23``)."""
    text = figures.flop(value, rounding)
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return rf"${mantissa} \times 10^{{{int(exponent)}}}$"


def shorten(text: str, limit: int = LEGEND_TITLE_CHARS) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut + "\u2026"


def render_png(rep: Report, path: Path) -> None:
    """Write the chart to ``path`` (PNG, 1200 x 700 px)."""
    fig = build_figure(rep)
    fig.savefig(path, format="png")
    plt.close(fig)


def build_figure(rep: Report) -> Figure:
    """The chart as a Matplotlib figure (closed by the caller)."""
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
        basis = rep.forecast["basis"]
        label = (f"projection to the planned end ({basis})" if rep.forecast.get("planned", True)
                 else f"at the current rate ({basis})")
        ax.plot([times[-1], end], [central[-1], float(projected["central"])], "--",
                color="tab:blue", alpha=0.7, label=label)
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
                   label=f"{sci(threshold)} FLOP: "
                   + shorten(r["title"] or r["regime"]).replace("$", r"\$"))
    ax.set_yscale("log")
    low_values = [v for v in low if v > 0] or [1.0]
    ax.set_ylim(bottom=min(low_values) / 3, top=max(top, max(shown, default=top)) * 3)
    ax.set_ylabel("cumulative compute [FLOP]")
    # Powers of ten on the log axis, no offset text: every tick reads on its own.
    ax.yaxis.set_major_formatter(mticker.LogFormatterMathtext())
    # A "$" in a run's name would start mathtext.
    subject = rep.subject.replace("$", r"\$")
    ax.set_title(f"{rep.subject_type} {subject}: {sci(rep.flop.central)} FLOP, band "
                 f"{sci(rep.flop.low, 'down')} .. {sci(rep.flop.high, 'up')}")
    locator = mdates.AutoDateLocator(minticks=4, maxticks=10)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    ax.set_xlabel("date (UTC)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
