"""The Pareto plot: identity fidelity (x) against the aesthetic or CLIP text score (y), one point per
configuration with its bootstrap intervals. Drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idglow.eval.vocabulary import METRIC_TITLES

_MARKERS = {"base": "s", "always_on": "^", "idglow": "o", "linear_decay": "D"}
_COLORS = {"base": "#7f7f7f", "always_on": "#1f77b4", "idglow": "#d62728", "linear_decay": "#ff7f0e"}


def pareto_plot(report: dict[str, Any], path: str | Path) -> Path:
    """Write the Pareto plot of ``report`` (as built by ``build_report``) to ``path`` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pareto = report["pareto"]
    x_metric, y_metric = pareto["x"], pareto["y"]
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for row, config in enumerate(report["configs"]):
        xs = report["summary"][config][x_metric]
        if "mean" not in xs:
            continue
        ys = report["summary"][config][y_metric] if y_metric else None
        x = xs["mean"]
        y = ys["mean"] if ys and "mean" in ys else float(row)  # no y score: one row per configuration
        xerr = [[x - xs["ci_low"]], [xs["ci_high"] - x]]
        yerr = [[y - ys["ci_low"]], [ys["ci_high"] - y]] if ys and "mean" in ys else None
        on_front = config in pareto["front"]
        ax.errorbar(
            [x], [y], xerr=xerr, yerr=yerr, fmt=_MARKERS.get(config, "o"), color=_COLORS.get(config, "black"),
            markersize=9 if on_front else 7, capsize=3,
            label=report["config_titles"].get(config, config) + (" (Pareto)" if on_front else ""),
        )
        ax.annotate(config, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    front = [c for c in report["configs"] if c in pareto["front"] and y_metric]
    if len(front) > 1:
        pts = sorted((report["summary"][c][x_metric]["mean"], report["summary"][c][y_metric]["mean"]) for c in front)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="--", color="#555555", linewidth=1)
    ax.set_xlabel(METRIC_TITLES[x_metric] + " →")
    if y_metric:
        ax.set_ylabel(METRIC_TITLES[y_metric] + " →")
    else:
        ax.set_ylabel("configuration (aesthetic / CLIP score skipped)")
        ax.set_yticks(range(len(report["configs"])), report["configs"])
        ax.set_ylim(-0.5, len(report["configs"]) + 0.5)
        ax.text(0.5, 0.9, "aesthetic and CLIP text scores skipped\n(no local weights given: --aesthetic, --clip)",
                transform=ax.transAxes, ha="center", va="top", fontsize=9, color="#aa0000")
    b = report["benchmark"]
    ax.set_title(f"{b['name']} ({b['task']}), {b['num_cases']} cases")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path
