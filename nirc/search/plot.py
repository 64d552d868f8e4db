"""The Pareto plot of a search: Vela latency against MACs, one marker per family, the budget as a line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nirc.search.rows import Budget, Row


def plot_pareto(rows: Sequence[Row], budget: Budget, title: str, target: str, path: Path) -> Path | None:
    """Write ``path`` (PNG); None when matplotlib (the ``plots`` extra) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter
    except ImportError:
        return None
    fig: Any
    fig, ax = plt.subplots(figsize=(8, 5))
    families = sorted({r.family for r in rows})
    markers = "osD^v<>ph*"
    for i, family in enumerate(families):
        mine = [r for r in rows if r.family == family and r.latency_ms is not None]
        ax.scatter([r.latency_ms or 0.0 for r in mine], [r.macs / 1e6 for r in mine], marker=markers[i % len(markers)],
                   label=family, alpha=0.75)  # fmt: skip
    front = sorted((r for r in rows if r.pareto), key=lambda r: r.latency_ms or 0.0)
    ax.plot([r.latency_ms or 0.0 for r in front], [r.macs / 1e6 for r in front], "k--", lw=1, label="Pareto front")
    for r in (r for r in rows if r.recommended):
        ax.annotate(r.name, (r.latency_ms or 0.0, r.macs / 1e6), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if budget.latency_ms is not None:
        ax.axvline(budget.latency_ms, color="r", lw=1, label=f"budget {budget.latency_ms} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(f"Vela latency on {target} (ms)")
    ax.set_ylabel("MACs (M)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path
